//! The chat-completion request: OpenAI's shape, validated before anything is sent.
//!
//! Unknown fields are rejected (a typo must not silently change behaviour), the
//! model must be on the allow-list, and message count, message size and token
//! bounds are enforced. What goes upstream is re-serialized from these types, so
//! only validated fields ever reach the fleet.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::problem::ApiError;

/// Bounds from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub models: Vec<String>,
    pub max_messages: usize,
    pub max_message_chars: usize,
    pub max_total_chars: usize,
    pub max_tokens: u32,
}

impl Limits {
    /// `CHAT_MODELS` (required) and the bounds `CHAT_MAX_MESSAGES` (256),
    /// `CHAT_MAX_MESSAGE_CHARS` (100000), `CHAT_MAX_TOTAL_CHARS` (400000),
    /// `CHAT_MAX_TOKENS` (4096).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let models = env.list("CHAT_MODELS");
        if models.is_empty() {
            return Err(ConfigError::new(
                "CHAT_MODELS",
                "is required: the models clients may ask for, comma-separated",
            ));
        }
        Ok(Self {
            models,
            max_messages: env.parse_or("CHAT_MAX_MESSAGES", 256)?,
            max_message_chars: env.parse_or("CHAT_MAX_MESSAGE_CHARS", 100_000)?,
            max_total_chars: env.parse_or("CHAT_MAX_TOTAL_CHARS", 400_000)?,
            max_tokens: env.parse_or("CHAT_MAX_TOKENS", 4096)?,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    #[serde(default)]
    pub content: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// Characters of text in a message's content (string or content-part array).
fn content_chars(content: &Value) -> Result<usize, String> {
    match content {
        Value::Null => Ok(0),
        Value::String(text) => Ok(text.chars().count()),
        Value::Array(parts) => {
            parts
                .iter()
                .try_fold(0usize, |sum, part| match part["type"].as_str() {
                    Some("text") => match part["text"].as_str() {
                        Some(text) => Ok(sum + text.chars().count()),
                        None => Err("a text content part needs a string `text`".to_owned()),
                    },
                    Some("image_url") => Ok(sum),
                    _ => Err("content parts must be of type text or image_url".to_owned()),
                })
        }
        _ => Err("content must be a string, an array of content parts, or null".to_owned()),
    }
}

impl ChatRequest {
    /// Checks the request against `limits`; every failure is a 400 that says what
    /// to change.
    pub fn validate(&self, limits: &Limits) -> Result<(), ApiError> {
        if !limits.models.iter().any(|model| model == &self.model) {
            return Err(ApiError::invalid(format!(
                "model {:?} is not available; available models: {}",
                self.model.chars().take(100).collect::<String>(),
                limits.models.join(", ")
            )));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages must not be empty"));
        }
        if self.messages.len() > limits.max_messages {
            return Err(ApiError::invalid(format!(
                "at most {} messages are allowed, got {}",
                limits.max_messages,
                self.messages.len()
            )));
        }
        let mut total = 0usize;
        for (index, message) in self.messages.iter().enumerate() {
            let chars = match &message.content {
                Some(content) => content_chars(content).map_err(|problem| {
                    ApiError::invalid(format!("messages[{index}]: {problem}"))
                })?,
                None => 0,
            };
            if chars > limits.max_message_chars {
                return Err(ApiError::invalid(format!(
                    "messages[{index}] has {chars} characters; at most {} are allowed",
                    limits.max_message_chars
                )));
            }
            if message.content.is_none() && message.tool_calls.is_none() {
                return Err(ApiError::invalid(format!(
                    "messages[{index}] has neither content nor tool_calls"
                )));
            }
            if message.role == Role::Tool && message.tool_call_id.is_none() {
                return Err(ApiError::invalid(format!(
                    "messages[{index}]: a tool message needs tool_call_id"
                )));
            }
            total += chars;
        }
        if total > limits.max_total_chars {
            return Err(ApiError::invalid(format!(
                "the messages have {total} characters in all; at most {} are allowed",
                limits.max_total_chars
            )));
        }
        for (field, value) in [
            ("max_tokens", self.max_tokens),
            ("max_completion_tokens", self.max_completion_tokens),
        ] {
            if let Some(tokens) = value
                && (tokens == 0 || tokens > limits.max_tokens)
            {
                return Err(ApiError::invalid(format!(
                    "{field} must be between 1 and {}",
                    limits.max_tokens
                )));
            }
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n must be 1"));
        }
        let in_range = |value: Option<f64>, low: f64, high: f64| {
            value.is_none_or(|v| v.is_finite() && (low..=high).contains(&v))
        };
        if !in_range(self.temperature, 0.0, 2.0) {
            return Err(ApiError::invalid("temperature must be between 0 and 2"));
        }
        if !in_range(self.top_p, 0.0, 1.0) {
            return Err(ApiError::invalid("top_p must be between 0 and 1"));
        }
        if !in_range(self.presence_penalty, -2.0, 2.0)
            || !in_range(self.frequency_penalty, -2.0, 2.0)
        {
            return Err(ApiError::invalid("penalties must be between -2 and 2"));
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid(
                "stream_options is only allowed with stream: true",
            ));
        }
        Ok(())
    }

    /// The body sent upstream: this request with the output capped, and for
    /// streams usage always requested (we bill from it).
    pub fn upstream_body(&self, limits: &Limits) -> Result<Value, ApiError> {
        let mut upstream = self.clone();
        if upstream.max_tokens.is_none() && upstream.max_completion_tokens.is_none() {
            upstream.max_tokens = Some(limits.max_tokens);
        }
        if upstream.stream {
            upstream.stream_options = Some(StreamOptions {
                include_usage: true,
            });
        }
        serde_json::to_value(&upstream)
            .map_err(|error| ApiError::internal(format!("serializing the upstream body: {error}")))
    }

    /// Whether the caller asked for the usage chunk at the end of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|options| options.include_usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits {
            models: vec!["sophia-small".into()],
            max_messages: 4,
            max_message_chars: 50,
            max_total_chars: 80,
            max_tokens: 256,
        }
    }

    fn parse(value: Value) -> Result<ChatRequest, ApiError> {
        sophia_shared::http::request::parse_json(value.to_string().as_bytes())
    }

    fn ok() -> Value {
        json!({"model": "sophia-small", "messages": [{"role": "user", "content": "hello"}]})
    }

    #[test]
    fn a_plain_request_is_valid() {
        parse(ok()).unwrap().validate(&limits()).unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        let mut top = ok();
        top["temprature"] = json!(0.5);
        assert!(matches!(parse(top), Err(ApiError::InvalidRequest { .. })));
        let nested = json!({"model": "sophia-small", "messages": [{"role": "user", "content": "x", "extra": 1}]});
        assert!(matches!(
            parse(nested),
            Err(ApiError::InvalidRequest { .. })
        ));
        let role =
            json!({"model": "sophia-small", "messages": [{"role": "wizard", "content": "x"}]});
        assert!(matches!(parse(role), Err(ApiError::InvalidRequest { .. })));
    }

    #[test]
    fn bounds_are_enforced_with_clear_messages() {
        let cases = [
            (
                json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}),
                "not available",
            ),
            (
                json!({"model": "sophia-small", "messages": []}),
                "must not be empty",
            ),
            (
                json!({"model": "sophia-small", "messages": [{"role": "user", "content": "x".repeat(51)}]}),
                "at most 50",
            ),
            (
                json!({"model": "sophia-small", "messages": vec![json!({"role": "user", "content": "x"}); 5]}),
                "at most 4 messages",
            ),
            (
                json!({"model": "sophia-small", "messages": [{"role": "user", "content": "x".repeat(45)}, {"role": "user", "content": "x".repeat(45)}]}),
                "in all",
            ),
            (
                json!({"model": "sophia-small", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "sophia-small", "max_tokens": 100000, "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "sophia-small", "temperature": 3, "messages": [{"role": "user", "content": "x"}]}),
                "temperature",
            ),
            (
                json!({"model": "sophia-small", "n": 2, "messages": [{"role": "user", "content": "x"}]}),
                "n must be 1",
            ),
            (
                json!({"model": "sophia-small", "messages": [{"role": "tool", "content": "x"}]}),
                "tool_call_id",
            ),
            (
                json!({"model": "sophia-small", "messages": [{"role": "user", "content": 5}]}),
                "content must be",
            ),
            (
                json!({"model": "sophia-small", "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "x"}]}),
                "stream_options",
            ),
        ];
        for (body, expected) in cases {
            let error = parse(body.clone())
                .and_then(|r| r.validate(&limits()).map(|_| r))
                .unwrap_err();
            assert_eq!(error.status(), 400, "{body}");
            assert!(error.to_string().contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn upstream_body_caps_output_and_asks_for_stream_usage() {
        let mut body = ok();
        body["stream"] = json!(true);
        let request = parse(body).unwrap();
        let upstream = request.upstream_body(&limits()).unwrap();
        assert_eq!(upstream["max_tokens"], 256);
        assert_eq!(upstream["stream_options"]["include_usage"], true);
        assert!(!request.wants_stream_usage());
        let plain = parse(ok()).unwrap().upstream_body(&limits()).unwrap();
        assert!(plain.get("stream").is_none() && plain.get("stream_options").is_none());
    }
}
