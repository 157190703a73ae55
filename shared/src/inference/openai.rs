//! The typed pieces of OpenAI's chat request: content parts, tools and tool
//! choices, tool calls, stop sequences, response formats, predictions.
//!
//! Each type accepts exactly the shapes OpenAI documents (and api/openapi.json
//! states), so that a value of the wrong shape is a 400 here rather than a
//! surprise at the fleet; each serializes back to the same JSON, so what is
//! forwarded is what the caller sent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A message's content: text, or parts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged, try_from = "Value")]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// Read by hand for the error message: an untagged enum only says "no variant".
impl TryFrom<Value> for Content {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        match value {
            Value::String(text) => Ok(Self::Text(text)),
            Value::Array(_) => serde_json::from_value(value)
                .map(Self::Parts)
                .map_err(|error| format!("content parts: {error}")),
            _ => Err("content must be a string, an array of content parts, or null".to_owned()),
        }
    }
}

impl Content {
    /// Characters of text in it (images count none).
    pub fn chars(&self) -> usize {
        match self {
            Self::Text(text) => text.chars().count(),
            Self::Parts(parts) => parts
                .iter()
                .map(|part| match part {
                    ContentPart::Text { text } => text.chars().count(),
                    ContentPart::Refusal { refusal } => refusal.chars().count(),
                    ContentPart::ImageUrl { .. } => 0,
                })
                .sum(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
    Refusal { refusal: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<ImageDetail>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ImageDetail {
    Auto,
    Low,
    High,
}

/// `{"type": "function", "function": {...}}`: the only kind of tool there is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: FunctionKind,
    pub function: FunctionDefinition,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    Function,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema object; forwarded as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl FunctionDefinition {
    /// OpenAI's rule for names: 1 to 64 of `a-z A-Z 0-9 _ -`.
    pub fn valid_name(&self) -> bool {
        (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
}

/// `"none"`, `"auto"`, `"required"`, or one named function.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged, try_from = "Value")]
pub enum ToolChoice {
    Mode(ToolChoiceMode),
    Named(NamedTool),
}

impl TryFrom<Value> for ToolChoice {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        let parsed = if value.is_string() {
            serde_json::from_value(value).map(Self::Mode)
        } else {
            serde_json::from_value(value).map(Self::Named)
        };
        parsed.map_err(|_| {
            "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}"
                .to_owned()
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    None,
    Auto,
    Required,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamedTool {
    #[serde(rename = "type")]
    pub kind: FunctionKind,
    pub function: FunctionName,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionName {
    pub name: String,
}

/// The deprecated `function_call` request field: `"none"`, `"auto"` or a name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum FunctionCallChoice {
    Mode(FunctionCallMode),
    Named(FunctionName),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FunctionCallMode {
    None,
    Auto,
}

/// A tool call in an assistant message of the history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: FunctionKind,
    pub function: FunctionCall,
}

/// A function called: its name and its arguments as a JSON string.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// One stop sequence or up to four.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged, try_from = "Value")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl TryFrom<Value> for Stop {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        match value {
            Value::String(text) => Ok(Self::One(text)),
            value => serde_json::from_value(value)
                .map(Self::Many)
                .map_err(|_| "stop must be a string or an array of strings".to_owned()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: ResponseFormatKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormatKind {
    Text,
    JsonObject,
    JsonSchema,
}

/// `{"type": "content", "content": ...}`: predicted output, a latency hint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Prediction {
    #[serde(rename = "type")]
    pub kind: PredictionKind,
    pub content: Content,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PredictionKind {
    Content,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_shape_round_trips_and_wrong_shapes_are_refused() {
        for (good, parse) in [
            (json!("auto"), serde_json::from_value::<ToolChoice>),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                serde_json::from_value::<ToolChoice>,
            ),
        ] {
            let parsed = parse(good.clone()).unwrap();
            assert_eq!(serde_json::to_value(parsed).unwrap(), good);
        }
        assert!(serde_json::from_value::<ToolChoice>(json!("sometimes")).is_err());
        assert!(serde_json::from_value::<ToolChoice>(json!(5)).is_err());
        let parts = json!([{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]);
        let content: Content = serde_json::from_value(parts.clone()).unwrap();
        assert_eq!(serde_json::to_value(&content).unwrap(), parts);
        assert_eq!(content.chars(), 2);
        for bad in [
            json!([{"type": "image_url", "image_url": 5}]),
            json!([{"type": "audio", "data": "x"}]),
            json!([{"type": "text"}]),
            json!(7),
        ] {
            assert!(
                serde_json::from_value::<Content>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let call = json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
        assert_eq!(
            serde_json::to_value(serde_json::from_value::<ToolCall>(call.clone()).unwrap())
                .unwrap(),
            call
        );
        assert!(serde_json::from_value::<Stop>(json!(["a", "b"])).is_ok());
        assert!(serde_json::from_value::<Stop>(json!([1])).is_err());
    }
}
