//! `POST /v1/chat/completions`: plain, streamed, and tool calls.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Faulted, SimState, aborted, gate, openai_error};

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stream_options: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
}

/// The tool the model "decides" to call: with tools offered (and `tool_choice`
/// not `none`) and a user message last, the named tool or the first one; after
/// a tool's answer, none (the model then answers in text).
fn tool_to_call(chat: &ChatRequest) -> Option<Value> {
    let tools = chat.tools.as_ref().filter(|tools| !tools.is_empty())?;
    if chat
        .tool_choice
        .as_ref()
        .is_some_and(|choice| choice == "none")
    {
        return None;
    }
    if chat.messages.last().is_some_and(|m| m["role"] != "user") {
        return None;
    }
    let named = chat
        .tool_choice
        .as_ref()
        .and_then(|choice| choice["function"]["name"].as_str());
    tools
        .iter()
        .find(|tool| named.is_none_or(|name| tool["function"]["name"] == name))
        .cloned()
}

/// Arguments for `tool` from its JSON Schema: every required property filled
/// (strings with `text`'s first word, numbers with 1, booleans with true).
fn tool_arguments(tool: &Value, text: &str) -> String {
    let schema = &tool["function"]["parameters"];
    let word = text.split_whitespace().next().unwrap_or("x");
    let mut arguments = serde_json::Map::new();
    for name in schema["required"].as_array().into_iter().flatten() {
        let Some(name) = name.as_str() else { continue };
        let value = match schema["properties"][name]["type"].as_str() {
            Some("number" | "integer") => json!(1),
            Some("boolean") => json!(true),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => json!(word),
        };
        arguments.insert(name.to_owned(), value);
    }
    Value::Object(arguments).to_string()
}

fn words_of(messages: &[Value]) -> (u32, String) {
    let mut count = 0u32;
    let mut last_user = String::new();
    for message in messages {
        let text = match &message["content"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        count = count.saturating_add(text.split_whitespace().count() as u32 + 4);
        if message["role"] == "user" {
            last_user = text;
        }
    }
    (count, last_user)
}

/// The completion: deterministic words derived from the prompt, so tests can check
/// that an answer belongs to its request.
fn completion_words(last_user: &str, n: u32) -> Vec<String> {
    let source: Vec<&str> = last_user.split_whitespace().collect();
    (0..n as usize)
        .map(|i| match source.get(i % source.len().max(1)) {
            Some(word) if i < source.len() => (*word).to_owned(),
            _ => format!("token{i}"),
        })
        .collect()
}

pub(crate) async fn chat_completions(
    axum::extract::State(sim): SimState,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let faulted = match gate(&sim, &headers, true).await {
        Err(response) => return response,
        Ok(Faulted::Respond(response)) => return response,
        Ok(Faulted::Abort) => return aborted(),
        Ok(pass) => pass,
    };
    let Ok(body) = axum::body::to_bytes(request.into_body(), 4 * 1024 * 1024).await else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unreadable body",
        );
    };
    sim.keep_request(&body);
    let chat: ChatRequest = match serde_json::from_slice(&body) {
        Ok(chat) => chat,
        Err(error) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid JSON: {error}"),
            );
        }
    };
    if chat.messages.is_empty() {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "messages is empty",
        );
    }
    let behaviour = sim.behaviour().await;
    let Faulted::Pass { drop_after, delay } = faulted else {
        return aborted();
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if behaviour.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    }
    let (prompt_tokens, last_user) = words_of(&chat.messages);
    let cap = chat
        .max_completion_tokens
        .or(chat.max_tokens)
        .unwrap_or(u32::MAX);
    let n = behaviour.completion_tokens.min(cap).max(1);
    let words = completion_words(&last_user, n);
    let model = chat.model.clone().unwrap_or(behaviour.model.clone());
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": n,
        "total_tokens": prompt_tokens + n,
    });
    let tool_call = tool_to_call(&chat).map(|tool| {
        json!({
            "id": format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            "type": "function",
            "function": {
                "name": tool["function"]["name"],
                "arguments": tool_arguments(&tool, &last_user),
            },
        })
    });
    if !chat.stream
        && let Some(call) = &tool_call
    {
        sim.counters.completions.fetch_add(1, Ordering::Relaxed);
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": null, "tool_calls": [call] },
                "finish_reason": "tool_calls",
            }],
            "usage": usage,
        }))
        .into_response();
    }
    if !chat.stream {
        sim.counters.completions.fetch_add(1, Ordering::Relaxed);
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": words.join(" ") },
                "finish_reason": "stop",
            }],
            "usage": usage,
        }))
        .into_response();
    }
    // Every answered completion counts; a streamed one counts as a stream too.
    sim.counters.completions.fetch_add(1, Ordering::Relaxed);
    sim.counters.streams.fetch_add(1, Ordering::Relaxed);
    let include_usage = chat
        .stream_options
        .as_ref()
        .and_then(|options| options["include_usage"].as_bool())
        .unwrap_or(false);
    let chunk = move |delta: Value, finish: Value| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    };
    let mut events: Vec<Value> = Vec::new();
    let finish = if let Some(call) = &tool_call {
        // As OpenAI streams a tool call: name and id first, the arguments in pieces.
        let arguments = call["function"]["arguments"]
            .as_str()
            .unwrap_or("{}")
            .to_owned();
        events.push(chunk(
            json!({ "role": "assistant", "content": null, "tool_calls": [{
                "index": 0, "id": call["id"], "type": "function",
                "function": { "name": call["function"]["name"], "arguments": "" },
            }]}),
            Value::Null,
        ));
        let pieces: Vec<char> = arguments.chars().collect();
        for piece in pieces.chunks(8) {
            let piece: String = piece.iter().collect();
            events.push(chunk(
                json!({ "tool_calls": [{ "index": 0, "function": { "arguments": piece } }] }),
                Value::Null,
            ));
        }
        "tool_calls"
    } else {
        events.push(chunk(
            json!({ "role": "assistant", "content": "" }),
            Value::Null,
        ));
        for (i, word) in words.iter().enumerate() {
            let text = if i == 0 {
                word.clone()
            } else {
                format!(" {word}")
            };
            events.push(chunk(json!({ "content": text }), Value::Null));
        }
        "stop"
    };
    let mut last = chunk(json!({}), json!(finish));
    if include_usage {
        last["usage"] = Value::Null;
    }
    events.push(last);
    if include_usage {
        let mut usage_chunk = chunk(json!({}), Value::Null);
        usage_chunk["choices"] = json!([]);
        usage_chunk["usage"] = usage;
        events.push(usage_chunk);
    }
    let ttft = Duration::from_millis(behaviour.ttft_ms);
    let pace = (behaviour.tokens_per_sec > 0)
        .then(|| Duration::from_micros(1_000_000 / behaviour.tokens_per_sec));
    let frames = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(i, event)| async move {
            if i == 0 && !ttft.is_zero() {
                tokio::time::sleep(ttft).await;
            } else if let Some(pace) = pace.filter(|_| i > 0) {
                tokio::time::sleep(pace).await;
            }
            if drop_after.is_some_and(|limit| i as u32 >= limit) {
                // Let hyper flush what was sent so far; then cut the connection.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(std::io::Error::other("injected stream drop"));
            }
            Ok::<Bytes, std::io::Error>(Bytes::from(format!("data: {event}\n\n")))
        },
    );
    let done = futures_util::stream::once(async { Ok(Bytes::from_static(b"data: [DONE]\n\n")) });
    let body = Body::from_stream(frames.chain(done));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
