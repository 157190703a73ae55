//! The chat-completion request: OpenAI's shape, validated before anything is sent.
//!
//! Unknown fields are rejected (a typo must not silently change behaviour), the
//! model must be on the allow-list, and message count, message size and token
//! bounds are enforced. What goes upstream is re-serialized from these types, so
//! only validated fields ever reach the fleet.

use crate::config::{ConfigError, Env};
use crate::inference::openai::{
    Content, FunctionCall, FunctionCallChoice, FunctionDefinition, Prediction, ResponseFormat,
    Stop, Tool, ToolCall, ToolChoice,
};
use crate::problem::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// OpenAI's Chat Completions request as current SDKs and frameworks send it.
///
/// Three kinds of fields: forwarded to the fleet (serialized), accepted but not
/// forwarded because they are hints or bookkeeping that change no answer
/// (`skip_serializing`), and accepted only in the values Sophia can honour (a 400
/// names the parameter otherwise, see [`ChatRequest::validate`]). Anything else,
/// a typo of ours included, is refused by `deny_unknown_fields`.
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
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Deprecated by OpenAI in favour of `tools`, still sent by older clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<FunctionDefinition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCallChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<String>,
    // Accepted, not forwarded: bookkeeping and hints that change no answer.
    #[serde(default, skip_serializing)]
    pub metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default, skip_serializing)]
    pub store: Option<bool>,
    #[serde(default, skip_serializing)]
    pub service_tier: Option<String>,
    #[serde(default, skip_serializing)]
    pub modalities: Option<Vec<String>>,
    #[serde(default, skip_serializing)]
    pub prediction: Option<Prediction>,
    #[serde(default, skip_serializing)]
    pub prompt_cache_key: Option<String>,
    #[serde(default, skip_serializing)]
    pub safety_identifier: Option<String>,
    // Accepted so that the answer can name them: Sophia's models cannot honour these.
    #[serde(default, skip_serializing)]
    pub audio: Option<Value>,
    #[serde(default, skip_serializing)]
    pub web_search_options: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
    /// OpenAI pads stream chunks against side channels when true; the fleet's
    /// chunks are not padded, so the option is accepted and has no effect.
    #[serde(default, skip_serializing)]
    pub include_obfuscation: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCall>,
    /// An assistant message's refusal, as clients replay it in the history.
    #[serde(default, skip_serializing)]
    pub refusal: Option<String>,
    /// A reference to an earlier audio answer: not something Sophia produces.
    #[serde(default, skip_serializing)]
    pub audio: Option<Value>,
    /// What an answer carried that clients replay in the history unchanged:
    /// OpenAI's URL citations and vLLM's reasoning text. Not model input.
    #[serde(default, skip_serializing)]
    pub annotations: Option<Vec<Value>>,
    #[serde(default, skip_serializing)]
    pub reasoning_content: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    /// The deprecated function-calling role.
    Function,
}

impl Message {
    /// What each role may carry, as OpenAI has it: only an assistant message
    /// has tool calls (or no content), only a tool message answers a tool call,
    /// images are user input and refusals assistant output.
    fn validate_for_role(&self) -> Result<(), String> {
        use crate::inference::openai::ContentPart;
        let assistant = self.role == Role::Assistant;
        if self.audio.is_some() {
            return Err("audio: Sophia's models do not produce audio".to_owned());
        }
        let answer_fields = [
            ("tool_calls", self.tool_calls.is_some()),
            ("function_call", self.function_call.is_some()),
            ("refusal", self.refusal.is_some()),
            ("annotations", self.annotations.is_some()),
            ("reasoning_content", self.reasoning_content.is_some()),
        ];
        if !assistant && let Some((field, _)) = answer_fields.iter().find(|(_, set)| *set) {
            return Err(format!("{field} belongs to assistant messages only"));
        }
        match (self.role, &self.tool_call_id) {
            (Role::Tool, None) => return Err("a tool message needs tool_call_id".to_owned()),
            (Role::Tool, Some(_)) | (_, None) => {}
            (_, Some(_)) => return Err("tool_call_id belongs to tool messages only".to_owned()),
        }
        if self.role == Role::Function && self.name.is_none() {
            return Err("a function message needs name".to_owned());
        }
        if self.content.is_none()
            && !(assistant && (self.tool_calls.is_some() || self.function_call.is_some()))
        {
            return Err("has neither content nor tool_calls".to_owned());
        }
        if let Some(Content::Parts(parts)) = &self.content {
            for part in parts {
                let allowed = match part {
                    ContentPart::Text { .. } => true,
                    ContentPart::ImageUrl { .. } => self.role == Role::User,
                    ContentPart::Refusal { .. } => assistant,
                };
                if !allowed {
                    return Err(format!(
                        "a {} message cannot hold this kind of content part",
                        serde_json::to_value(self.role)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        if self.role == Role::Function && matches!(self.content, Some(Content::Parts(_))) {
            return Err("a function message's content is text".to_owned());
        }
        Ok(())
    }
}

const REASONING_EFFORTS: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];
const VERBOSITIES: [&str; 3] = ["low", "medium", "high"];
const MAX_LOGIT_BIAS: usize = 1024;
const MAX_METADATA_PAIRS: usize = 16;
const MAX_TOOLS: usize = 128;

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
            let chars = message.content.as_ref().map_or(0, Content::chars);
            if chars > limits.max_message_chars {
                return Err(ApiError::invalid(format!(
                    "messages[{index}] has {chars} characters; at most {} are allowed",
                    limits.max_message_chars
                )));
            }
            message
                .validate_for_role()
                .map_err(|problem| ApiError::invalid(format!("messages[{index}]: {problem}")))?;
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
        self.validate_compatibility()
    }

    /// The OpenAI parameters beyond the basics: accepted in the values Sophia can
    /// honour, refused with a 400 that names the parameter otherwise.
    fn validate_compatibility(&self) -> Result<(), ApiError> {
        if let Some(top) = self.top_logprobs {
            if top > 20 {
                return Err(ApiError::invalid("top_logprobs must be between 0 and 20"));
            }
            if self.logprobs != Some(true) {
                return Err(ApiError::invalid("top_logprobs needs logprobs: true"));
            }
        }
        if let Some(bias) = &self.logit_bias {
            if bias.len() > MAX_LOGIT_BIAS {
                return Err(ApiError::invalid(format!(
                    "logit_bias has {} entries; at most {MAX_LOGIT_BIAS} are allowed",
                    bias.len()
                )));
            }
            let valid = bias.iter().all(|(token, value)| {
                token.parse::<u32>().is_ok()
                    && value
                        .as_f64()
                        .is_some_and(|v| (-100.0..=100.0).contains(&v))
            });
            if !valid {
                return Err(ApiError::invalid(
                    "logit_bias maps token IDs (as strings) to numbers between -100 and 100",
                ));
            }
        }
        let one_of = |field: &str, value: &Option<String>, allowed: &[&str]| match value {
            Some(value) if !allowed.contains(&value.as_str()) => Err(ApiError::invalid(format!(
                "{field} must be one of {}",
                allowed.join(", ")
            ))),
            _ => Ok(()),
        };
        one_of(
            "reasoning_effort",
            &self.reasoning_effort,
            &REASONING_EFFORTS,
        )?;
        one_of("verbosity", &self.verbosity, &VERBOSITIES)?;
        one_of("service_tier", &self.service_tier, &["auto", "default"]).map_err(|_| {
            ApiError::invalid(
                "service_tier: Sophia has one tier; use \"auto\" or \"default\" or leave it out",
            )
        })?;
        if let Some(metadata) = &self.metadata {
            let valid = metadata.len() <= MAX_METADATA_PAIRS
                && metadata.iter().all(|(key, value)| {
                    key.chars().count() <= 64
                        && value.as_str().is_some_and(|v| v.chars().count() <= 512)
                });
            if !valid {
                return Err(ApiError::invalid(
                    "metadata: at most 16 pairs of string keys (64 characters) and string values (512 characters)",
                ));
            }
        }
        if self.store == Some(true) {
            return Err(ApiError::invalid(
                "store: true is not supported: Sophia does not keep completions for later retrieval",
            ));
        }
        if let Some(modalities) = &self.modalities
            && modalities.iter().any(|m| m != "text")
        {
            return Err(ApiError::invalid(
                "modalities: Sophia's models answer in text only; use [\"text\"]",
            ));
        }
        if self.audio.is_some() {
            return Err(ApiError::invalid(
                "audio: Sophia's models do not produce audio",
            ));
        }
        if self.web_search_options.is_some() {
            return Err(ApiError::invalid(
                "web_search_options: Sophia does not search the web; give it a tool instead",
            ));
        }
        if let Some(Stop::Many(stops)) = &self.stop
            && stops.len() > 4
        {
            return Err(ApiError::invalid("stop has at most 4 sequences"));
        }
        let functions = self
            .tools
            .iter()
            .flatten()
            .map(|tool| &tool.function)
            .chain(self.functions.iter().flatten());
        for function in functions {
            if !function.valid_name() {
                return Err(ApiError::invalid(
                    "tools: function names have 1 to 64 of a-z, A-Z, 0-9, '_' and '-'",
                ));
            }
        }
        for (field, count) in [
            ("tools", self.tools.as_ref().map_or(0, Vec::len)),
            ("functions", self.functions.as_ref().map_or(0, Vec::len)),
        ] {
            if count > MAX_TOOLS {
                return Err(ApiError::invalid(format!(
                    "{field}: at most {MAX_TOOLS} are allowed"
                )));
            }
        }
        for (field, value, max) in [
            ("prompt_cache_key", &self.prompt_cache_key, 1024),
            ("safety_identifier", &self.safety_identifier, 256),
            ("user", &self.user, 256),
        ] {
            if value.as_ref().is_some_and(|v| v.chars().count() > max) {
                return Err(ApiError::invalid(format!(
                    "{field} is longer than {max} characters"
                )));
            }
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
                include_obfuscation: None,
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
        crate::http::request::parse_json(value.to_string().as_bytes())
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

    #[test]
    fn the_parameters_current_sdks_send_are_accepted_and_hints_are_not_forwarded() {
        let mut body = ok();
        for (field, value) in [
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("logit_bias", json!({"50256": -100})),
            ("parallel_tool_calls", json!(false)),
            ("metadata", json!({"project": "q3"})),
            ("store", json!(false)),
            ("reasoning_effort", json!("low")),
            ("service_tier", json!("auto")),
            ("modalities", json!(["text"])),
            ("prediction", json!({"type": "content", "content": "draft"})),
            ("verbosity", json!("medium")),
            ("prompt_cache_key", json!("k1")),
            ("safety_identifier", json!("user-hash")),
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]),
            ),
            ("tool_choice", json!("auto")),
        ] {
            body[field] = value;
        }
        let request = parse(body).unwrap();
        request.validate(&limits()).unwrap();
        let upstream = request.upstream_body(&limits()).unwrap();
        for forwarded in [
            "logprobs",
            "top_logprobs",
            "logit_bias",
            "parallel_tool_calls",
            "reasoning_effort",
            "verbosity",
            "tools",
            "tool_choice",
        ] {
            assert!(
                upstream.get(forwarded).is_some(),
                "{forwarded} is forwarded"
            );
        }
        for dropped in [
            "metadata",
            "store",
            "service_tier",
            "modalities",
            "prediction",
            "prompt_cache_key",
            "safety_identifier",
        ] {
            assert!(
                upstream.get(dropped).is_none(),
                "{dropped} is not forwarded"
            );
        }
    }

    #[test]
    fn what_sophia_cannot_honour_is_refused_by_name() {
        for (field, value) in [
            ("store", json!(true)),
            ("service_tier", json!("priority")),
            ("modalities", json!(["text", "audio"])),
            ("audio", json!({"voice": "alloy", "format": "wav"})),
            ("web_search_options", json!({})),
            ("reasoning_effort", json!("extreme")),
            ("verbosity", json!("loud")),
            ("top_logprobs", json!(3)),
            ("logit_bias", json!({"abc": 1})),
        ] {
            let mut body = ok();
            body[field] = value;
            let error = parse(body.clone())
                .and_then(|r| r.validate(&limits()).map(|_| r))
                .unwrap_err();
            assert_eq!(error.status(), 400, "{body}");
            assert!(error.to_string().contains(field), "{field}: {error}");
        }
    }

    #[test]
    fn tool_calls_in_the_history_pass_through_intact() {
        let body = json!({"model": "sophia-small", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "refusal": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ]});
        let request = parse(body.clone()).unwrap();
        request.validate(&limits()).unwrap();
        let upstream = request.upstream_body(&limits()).unwrap();
        assert_eq!(
            upstream["messages"][1]["tool_calls"],
            body["messages"][1]["tool_calls"]
        );
        assert_eq!(upstream["messages"][2]["tool_call_id"], "call_1");
    }
}
