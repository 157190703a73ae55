//! Non-streamed chat completions are streamed from the fleet and assembled by
//! the client: the caller still gets one `chat.completion`, while failover is
//! bounded by the first-chunk timeout (scaled with the prompt) and a stream
//! that breaks or goes silent before its end fails over instead of failing.
//! Against fleet simulators and the local AWS; delays are injected.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;

use fleet_sim::{Behaviour, Fault, FaultMode};
use harness::chat::{calls, chat, completion, setup};
use serde_json::{Value, json};

fn usage_requests(
    items: &[std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>],
) -> f64 {
    items
        .iter()
        .map(|item| harness::number_of(item, "requests"))
        .sum()
}

#[tokio::test]
async fn the_fleet_is_asked_for_a_stream_and_the_caller_gets_one_completion() {
    let s = setup(1, &[]).await;
    let (status, body, _) = chat(&s.deps, &completion("one two three")).await;
    assert_eq!(status, 200, "{body}");
    let forwarded = s.sims[0].sim.last_request().unwrap();
    assert_eq!(forwarded["stream"], true);
    assert_eq!(forwarded["stream_options"], json!({"include_usage": true}));
    assert_eq!(s.sims[0].sim.counters.streams.load(Ordering::Relaxed), 1);

    assert_eq!(body["object"], "chat.completion");
    assert!(
        body["id"].as_str().unwrap().starts_with("chatcmpl-"),
        "{body}"
    );
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("one two three"), "{content}");
    assert_eq!(content.split(' ').count(), 8, "max_tokens words: {content}");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    let items = harness::usage_items(&s.stack, "tenant-a", "usage#").await;
    assert_eq!(
        usage_requests(&items),
        1.0,
        "billed once, from the usage chunk"
    );
}

#[tokio::test]
async fn a_tool_call_streamed_in_pieces_comes_back_whole() {
    let s = setup(1, &[]).await;
    let mut body = completion("weather in Paris");
    body["tools"] = json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }}]);
    let (status, answer, _) = chat(&s.deps, &body).await;
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{answer}");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(
        arguments.is_object(),
        "the pieces join into JSON: {arguments}"
    );
}

#[tokio::test]
async fn a_stream_that_breaks_before_its_end_fails_over_and_is_billed_once() {
    let s = setup(2, &[]).await;
    s.sims[0]
        .sim
        .set_fault(Fault {
            mode: FaultMode::DropStream,
            after_chunks: Some(3),
            ..Fault::default()
        })
        .await;
    let (status, body, _) = chat(&s.deps, &completion("one two three four")).await;
    assert_eq!(
        status, 200,
        "the caller saw nothing of the broken stream: {body}"
    );
    assert_eq!(calls(&s.sims[0]), 1);
    assert_eq!(s.sims[1].sim.counters.streams.load(Ordering::Relaxed), 1);
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.split(' ').count(), 8, "a whole answer: {content}");
    let items = harness::usage_items(&s.stack, "tenant-a", "usage#").await;
    assert_eq!(usage_requests(&items), 1.0);
}

#[tokio::test]
async fn a_server_that_goes_silent_mid_answer_is_failed_over_after_the_idle_timeout() {
    // The primary sends its first chunk, then one token a second; the idle
    // timeout (100 ms) and the attempt timeout (3 s) are far apart, so the
    // answer coming from the secondary shows which one applied.
    let s = setup(
        2,
        &[
            ("FLEET_IDLE_TIMEOUT_MS", "100"),
            ("FLEET_ATTEMPT_TIMEOUT_MS", "3000"),
        ],
    )
    .await;
    s.sims[0]
        .sim
        .set_behaviour(Behaviour {
            tokens_per_sec: 1,
            ..Behaviour::default()
        })
        .await;
    let (status, body, elapsed) = chat(&s.deps, &completion("slow")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(calls(&s.sims[0]), 1);
    assert_eq!(s.sims[1].sim.counters.streams.load(Ordering::Relaxed), 1);
    assert!(
        elapsed < std::time::Duration::from_millis(2500),
        "failed over at the idle timeout, not after the 8 s answer: {elapsed:?}"
    );
}

#[tokio::test]
async fn a_long_prompt_is_given_longer_for_its_first_chunk() {
    // The primary takes 700 ms to its first byte. The first-chunk timeout is
    // 300 ms plus 100 ms per KiB: a short prompt fails over, an 8 KiB one
    // (1.1 s allowed) waits for the primary.
    let s = setup(
        2,
        &[
            ("FLEET_TTFT_TIMEOUT_MS", "300"),
            ("FLEET_TTFT_PER_PROMPT_KIB_MS", "100"),
            ("FLEET_ATTEMPT_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    s.sims[0]
        .sim
        .set_fault(Fault {
            mode: FaultMode::SlowStart,
            delay_ms: Some(700),
            ..Fault::default()
        })
        .await;
    let (status, _, _) = chat(&s.deps, &completion("short")).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.sims[1].sim.counters.streams.load(Ordering::Relaxed),
        1,
        "the short prompt failed over"
    );
    let long = "word ".repeat(8 * 1024 / 5);
    let (status, body, _) = chat(&s.deps, &completion(&long)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        s.sims[1].sim.counters.streams.load(Ordering::Relaxed),
        1,
        "the long prompt was answered by the slow primary"
    );
    assert_eq!(s.sims[0].sim.counters.streams.load(Ordering::Relaxed), 1);
}
