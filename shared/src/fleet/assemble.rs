//! A non-streamed chat completion put together from the chunks of a streamed
//! one. The client always streams from the fleet, so the wait for a dead or
//! hung endpoint is bounded by the time to the first chunk instead of the whole
//! generation; the caller that did not ask for a stream gets the
//! `chat.completion` object the model server would have sent.
//!
//! Deltas are merged the way OpenAI documents them: text fields (`content`,
//! `refusal`, `reasoning_content`, …) are concatenated, tool calls are merged by
//! their `index` (the name and id come first, the arguments in pieces),
//! `logprobs` lists are appended, and the last non-null `finish_reason` wins.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use crate::fleet::sse::SseFramer;
use crate::fleet::stream::ByteStream;

/// More stream than any answer a Lambda may return (6 MB) needs.
const MAX_STREAM_BYTES: usize = 8 * 1024 * 1024;

/// Why reading a stream to its end failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CollectError {
    #[error("the model server went silent")]
    Idle,
    #[error("the attempt's time ran out")]
    Deadline,
    #[error("the connection broke, or the stream ended without [DONE]")]
    Broken,
    #[error("the stream was larger than {MAX_STREAM_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Assemble(#[from] AssembleError),
}

/// Reads a stream whose first chunk arrived to its `[DONE]` and returns the
/// assembled completion; at most `idle` between chunks, nothing after `until`.
pub(crate) async fn collect(
    first: Bytes,
    mut rest: ByteStream,
    idle: Duration,
    until: Instant,
) -> Result<Value, CollectError> {
    let mut framer = SseFramer::default();
    let mut assembler = CompletionAssembler::default();
    let mut received = first.len();
    framer.push(&first);
    loop {
        while let Some(data) = framer.next_data() {
            if data == "[DONE]" {
                return Ok(assembler.finish());
            }
            let chunk: Value = serde_json::from_str(&data).map_err(|_| AssembleError::Malformed)?;
            assembler.push(&chunk)?;
        }
        if received > MAX_STREAM_BYTES {
            return Err(CollectError::TooLarge);
        }
        let left = until.saturating_duration_since(Instant::now());
        let (wait, on_timeout) = if left < idle {
            (left, CollectError::Deadline)
        } else {
            (idle, CollectError::Idle)
        };
        match tokio::time::timeout(wait, rest.next()).await {
            Ok(Some(Ok(chunk))) => {
                received += chunk.len();
                framer.push(&chunk);
            }
            Ok(Some(Err(_)) | None) => return Err(CollectError::Broken),
            Err(_) => return Err(on_timeout),
        }
    }
}

/// Why a chunk could not be merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("a chunk is not a JSON object with choices")]
    Malformed,
    #[error("the model server reported an error in the stream")]
    UpstreamError,
}

#[derive(Debug, Default)]
struct ToolCallParts {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

#[derive(Debug, Default)]
struct ChoiceParts {
    role: Option<Value>,
    /// Text fields of the delta, concatenated, in the order first seen.
    texts: Vec<(String, String)>,
    tool_calls: BTreeMap<u64, ToolCallParts>,
    finish_reason: Value,
    logprobs: Option<Map<String, Value>>,
}

#[derive(Debug, Default)]
pub struct CompletionAssembler {
    top: Map<String, Value>,
    choices: BTreeMap<u64, ChoiceParts>,
    usage: Option<Value>,
}

impl CompletionAssembler {
    /// Merges one `chat.completion.chunk`.
    pub fn push(&mut self, chunk: &Value) -> Result<(), AssembleError> {
        let Some(object) = chunk.as_object() else {
            return Err(AssembleError::Malformed);
        };
        if object.get("error").is_some_and(|e| !e.is_null()) {
            return Err(AssembleError::UpstreamError);
        }
        for key in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if let Some(value) = object.get(key).filter(|v| !v.is_null()) {
                self.top.insert(key.to_owned(), value.clone());
            }
        }
        if let Some(usage) = object.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage.clone());
        }
        let Some(choices) = object.get("choices").and_then(Value::as_array) else {
            // A usage-only chunk may come without `choices`; anything else is garbage.
            return match self.usage {
                Some(_) if object.contains_key("usage") => Ok(()),
                _ => Err(AssembleError::Malformed),
            };
        };
        for choice in choices {
            let index = choice["index"].as_u64().unwrap_or(0);
            let parts = self.choices.entry(index).or_default();
            if let Some(delta) = choice.get("delta").and_then(Value::as_object) {
                parts.merge_delta(delta);
            }
            if !choice["finish_reason"].is_null() {
                parts.finish_reason = choice["finish_reason"].clone();
            }
            if let Some(logprobs) = choice.get("logprobs").and_then(Value::as_object) {
                let merged = parts.logprobs.get_or_insert_with(Map::new);
                for (key, value) in logprobs {
                    match (merged.get_mut(key), value) {
                        (Some(Value::Array(have)), Value::Array(more)) => {
                            have.extend(more.iter().cloned())
                        }
                        (_, Value::Null) => {
                            merged.entry(key.clone()).or_insert(Value::Null);
                        }
                        _ => {
                            merged.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The `chat.completion` object of everything merged so far.
    pub fn finish(self) -> Value {
        let mut answer = self.top;
        answer.insert("object".to_owned(), json!("chat.completion"));
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, parts)| parts.into_choice(index))
            .collect();
        answer.insert("choices".to_owned(), Value::Array(choices));
        if let Some(usage) = self.usage {
            answer.insert("usage".to_owned(), usage);
        }
        Value::Object(answer)
    }
}

impl ChoiceParts {
    fn merge_delta(&mut self, delta: &Map<String, Value>) {
        for (key, value) in delta {
            match (key.as_str(), value) {
                ("role", role) if !role.is_null() => self.role = Some(role.clone()),
                ("tool_calls", Value::Array(calls)) => {
                    for (position, call) in calls.iter().enumerate() {
                        let index = call["index"].as_u64().unwrap_or(position as u64);
                        let parts = self.tool_calls.entry(index).or_default();
                        if let Some(id) = call.get("id").filter(|v| !v.is_null()) {
                            parts.id = Some(id.clone());
                        }
                        if let Some(kind) = call.get("type").filter(|v| !v.is_null()) {
                            parts.kind = Some(kind.clone());
                        }
                        if let Some(name) = call["function"]["name"].as_str() {
                            parts.name.push_str(name);
                        }
                        if let Some(arguments) = call["function"]["arguments"].as_str() {
                            parts.arguments.push_str(arguments);
                        }
                    }
                }
                (_, Value::String(text)) => {
                    match self.texts.iter_mut().find(|(name, _)| name == key) {
                        Some((_, have)) => have.push_str(text),
                        None => self.texts.push((key.clone(), text.clone())),
                    }
                }
                _ => {}
            }
        }
    }

    fn into_choice(self, index: u64) -> Value {
        let mut message = Map::new();
        message.insert(
            "role".to_owned(),
            self.role.unwrap_or_else(|| json!("assistant")),
        );
        message.insert("content".to_owned(), Value::Null);
        for (key, text) in self.texts {
            message.insert(key, Value::String(text));
        }
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .into_values()
                .map(|call| {
                    json!({
                        "id": call.id.unwrap_or(Value::Null),
                        "type": call.kind.unwrap_or_else(|| json!("function")),
                        "function": { "name": call.name, "arguments": call.arguments },
                    })
                })
                .collect();
            message.insert("tool_calls".to_owned(), Value::Array(calls));
        }
        json!({
            "index": index,
            "message": message,
            "finish_reason": self.finish_reason,
            "logprobs": self.logprobs.map_or(Value::Null, Value::Object),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(choices: Value) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
               "model": "m", "choices": choices})
    }

    #[test]
    fn text_deltas_become_one_message_with_usage() {
        let mut assembler = CompletionAssembler::default();
        for piece in [
            chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}])),
            chunk(json!([{"index": 0, "delta": {"content": "Hello"}}])),
            chunk(json!([{"index": 0, "delta": {"content": " world"}, "finish_reason": "stop"}])),
            json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 3,
                   "completion_tokens": 2, "total_tokens": 5}}),
        ] {
            assembler.push(&piece).unwrap();
        }
        assert_eq!(
            assembler.finish(),
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                             "message": {"role": "assistant", "content": "Hello world"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            })
        );
    }

    #[test]
    fn tool_calls_merge_by_index_and_choices_stay_apart() {
        let mut assembler = CompletionAssembler::default();
        for piece in [
            chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": null,
                "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                "function": {"name": "lookup", "arguments": ""}}]}}]),
            ),
            chunk(json!([{"index": 1, "delta": {"content": "second"}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "{\"q\":"}}]}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "1}"}}]}, "finish_reason": "tool_calls"}])),
        ] {
            assembler.push(&piece).unwrap();
        }
        let answer = assembler.finish();
        let first = &answer["choices"][0]["message"];
        assert_eq!(first["content"], Value::Null);
        assert_eq!(
            first["tool_calls"],
            json!([{"id": "call_1", "type": "function",
                    "function": {"name": "lookup", "arguments": "{\"q\":1}"}}])
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(answer["choices"][1]["message"]["content"], "second");
        assert_eq!(answer["choices"][1]["index"], 1);
        assert!(answer.get("usage").is_none());
    }

    #[test]
    fn logprobs_and_reasoning_are_appended() {
        let mut assembler = CompletionAssembler::default();
        for (text, reasoning) in [("a", "think "), ("b", "more")] {
            let piece = chunk(json!([{"index": 0,
                "delta": {"content": text, "reasoning_content": reasoning},
                "logprobs": {"content": [{"token": text, "logprob": -0.5}], "refusal": null}}]));
            assembler.push(&piece).unwrap();
        }
        let answer = assembler.finish();
        assert_eq!(answer["choices"][0]["message"]["content"], "ab");
        assert_eq!(
            answer["choices"][0]["message"]["reasoning_content"],
            "think more"
        );
        assert_eq!(
            answer["choices"][0]["logprobs"],
            json!({"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -0.5}],
                   "refusal": null})
        );
    }

    #[test]
    fn errors_and_garbage_in_the_stream_are_refused() {
        let mut assembler = CompletionAssembler::default();
        assert_eq!(
            assembler.push(&json!({"error": {"message": "engine died"}})),
            Err(AssembleError::UpstreamError)
        );
        assert_eq!(assembler.push(&json!([1])), Err(AssembleError::Malformed));
        assert_eq!(
            assembler.push(&json!({"id": "x"})),
            Err(AssembleError::Malformed)
        );
    }

    fn stream_of(chunks: &[&'static str]) -> ByteStream {
        let items: Vec<reqwest::Result<Bytes>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        Box::pin(futures_util::stream::iter(items))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test]
    async fn a_stream_is_read_to_done_across_chunk_boundaries() {
        let first = Bytes::from_static(
            b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"",
        );
        let rest = stream_of(&[
            "}}]}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        ]);
        let answer = collect(first, rest, Duration::from_secs(5), far())
            .await
            .unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "Hi");
        assert_eq!(answer["usage"]["total_tokens"], 3);
    }

    #[tokio::test]
    async fn an_end_without_done_a_silence_and_garbage_are_failures() {
        let first = || Bytes::from_static(b"data: {\"choices\":[]}\n\n");
        let ended = collect(first(), stream_of(&[]), Duration::from_secs(5), far()).await;
        assert_eq!(ended.unwrap_err(), CollectError::Broken);

        let silent: ByteStream = Box::pin(futures_util::stream::pending());
        let idle = collect(first(), silent, Duration::from_millis(20), far()).await;
        assert_eq!(idle.unwrap_err(), CollectError::Idle);

        let silent: ByteStream = Box::pin(futures_util::stream::pending());
        let soon = Instant::now() + Duration::from_millis(20);
        let deadline = collect(first(), silent, Duration::from_secs(5), soon).await;
        assert_eq!(deadline.unwrap_err(), CollectError::Deadline);

        let garbage = collect(
            Bytes::from_static(b"data: not json\n\n"),
            stream_of(&[]),
            Duration::from_secs(5),
            far(),
        )
        .await;
        assert_eq!(
            garbage.unwrap_err(),
            CollectError::Assemble(AssembleError::Malformed)
        );
    }
}
