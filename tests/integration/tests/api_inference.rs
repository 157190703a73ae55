//! The OpenAI-compatible routes beside chat: models, embeddings, and the
//! parameters and tool calls real clients send, against the local AWS and a
//! fleet simulator.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use fleet_sim::FaultMode;
use harness::chat::{Chat, calls, fault, setup, stream};
use harness::chat_handle as handle;
use harness::{body_json, json_request};
use serde_json::{Value, json};

async fn post(deps: &Chat, path: &str, body: &Value) -> (u16, Value) {
    let response = handle(deps, deps.authorize(json_request("POST", path, body, None))).await;
    (response.status().as_u16(), body_json(&response))
}

async fn get(deps: &Chat, path: &str) -> (u16, Value) {
    let response = handle(
        deps,
        deps.authorize(json_request("GET", path, &Value::Null, None)),
    )
    .await;
    (response.status().as_u16(), body_json(&response))
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn vector(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn models_are_listed_in_openais_shape_and_unknown_ones_are_404() {
    let s = setup(1, &[]).await;
    let (status, list) = get(&s.deps, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sophia-small", "sophia-large", "sophia-embed"]);
    for model in list["data"].as_array().unwrap() {
        assert_eq!(model["object"], "model");
        assert!(model["created"].as_u64().unwrap() > 1_700_000_000);
        assert!(model["owned_by"].is_string());
    }
    let (status, model) = get(&s.deps, "/v1/models/sophia-large").await;
    assert_eq!((status, model["id"].as_str()), (200, Some("sophia-large")));
    let (status, problem) = get(&s.deps, "/v1/models/gpt-9").await;
    assert_eq!(status, 404);
    assert_eq!(problem["type"], "urn:sophia:problem:not-found");
    let anonymous = handle(
        &s.deps,
        json_request("GET", "/v1/models", &Value::Null, None),
    )
    .await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        calls(&s.sims[0]),
        0,
        "the model list is ours, not the fleet's"
    );
}

#[tokio::test]
async fn embeddings_mean_something_come_in_both_encodings_and_are_billed() {
    let s = setup(1, &[]).await;
    let texts = [
        "Dana owns the Q3 migration",
        "Deploys freeze on Fridays",
        "Who runs the Q3 migration?",
    ];
    let (status, body) = post(
        &s.deps,
        "/v1/embeddings",
        &json!({"model": "sophia-embed", "input": texts}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    let vectors: Vec<Vec<f64>> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["index"], i);
            assert_eq!(item["object"], "embedding");
            vector(&item["embedding"])
        })
        .collect();
    assert!(
        cosine(&vectors[2], &vectors[0]) > cosine(&vectors[2], &vectors[1]),
        "the question is closer to its answer"
    );
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);

    // base64 is the same vector, as little-endian f32s (what the SDKs decode).
    let (status, encoded) = post(
        &s.deps,
        "/v1/embeddings",
        &json!({"model": "sophia-embed", "input": texts[0], "encoding_format": "base64", "dimensions": 24}),
    )
    .await;
    assert_eq!(status, 200, "{encoded}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(decoded.len(), 24, "dimensions reached the fleet");
    let forwarded = s.sims[0].sim.last_request().unwrap();
    assert_eq!(forwarded["dimensions"], 24);
    assert!(
        forwarded.get("encoding_format").is_none(),
        "floats are asked of the fleet"
    );

    // Token IDs are input too.
    let (status, _) = post(
        &s.deps,
        "/v1/embeddings",
        &json!({"model": "sophia-embed", "input": [[1, 2, 3], [4]]}),
    )
    .await;
    assert_eq!(status, 200);

    let usage = harness::usage_items(&s.stack, "tenant-a", "usage#").await;
    let item = usage
        .iter()
        .find(|item| item["sk"].as_s().unwrap().ends_with("#sophia-embed"))
        .expect("embedding usage is recorded per model");
    assert_eq!(item["requests"].as_n().unwrap(), "3");
    let billed: u64 = item["prompt_tokens"].as_n().unwrap().parse().unwrap();
    assert!(billed >= prompt_tokens, "{billed} tokens billed");
    assert!(
        item["cost_micro_usd"]
            .as_n()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
}

#[tokio::test]
async fn bad_embedding_requests_are_4xx_and_never_reach_the_fleet() {
    let s = setup(1, &[]).await;
    for body in [
        json!({"model": "sophia-small", "input": "a chat model"}),
        json!({"model": "sophia-embed", "input": []}),
        json!({"model": "sophia-embed", "input": ""}),
        json!({"model": "sophia-embed", "input": "x".repeat(40_000)}),
        json!({"model": "sophia-embed", "input": vec!["x"; 300]}),
        json!({"model": "sophia-embed", "input": [-1]}),
        json!({"model": "sophia-embed", "input": {"text": "x"}}),
        json!({"model": "sophia-embed", "input": "x", "dimensions": 0}),
        json!({"model": "sophia-embed", "input": "x", "encoding_format": "int8"}),
        json!({"model": "sophia-embed", "input": "x", "extra": true}),
        json!({"input": "no model"}),
    ] {
        let (status, problem) = post(&s.deps, "/v1/embeddings", &body).await;
        assert_eq!(status, 400, "{body}: {problem}");
        assert!(problem["detail"].is_string());
    }
    assert_eq!(calls(&s.sims[0]), 0);
    // Another tenant cannot see anything here, but a fleet outage is a clear 503.
    fault(&s.sims[0], FaultMode::Error).await;
    let (status, problem) = post(
        &s.deps,
        "/v1/embeddings",
        &json!({"model": "sophia-embed", "input": "x"}),
    )
    .await;
    assert!(matches!(status, 502 | 503), "{status} {problem}");
}

#[tokio::test]
async fn the_parameters_clients_send_are_forwarded_or_dropped_as_documented() {
    let s = setup(1, &[]).await;
    let body = json!({
        "model": "sophia-small",
        "messages": [{"role": "user", "content": "params"}],
        "max_tokens": 3,
        "logprobs": true, "top_logprobs": 2, "logit_bias": {"11": 5},
        "parallel_tool_calls": true, "reasoning_effort": "low", "verbosity": "low",
        "metadata": {"k": "v"}, "store": false, "service_tier": "default",
        "modalities": ["text"], "prediction": {"type": "content", "content": "p"},
        "prompt_cache_key": "c", "safety_identifier": "s", "seed": 1, "user": "u",
    });
    let (status, answer) = post(&s.deps, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{answer}");
    let forwarded = s.sims[0].sim.last_request().unwrap();
    for key in [
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "parallel_tool_calls",
        "reasoning_effort",
        "verbosity",
        "seed",
        "user",
    ] {
        assert_eq!(forwarded[key], body[key], "{key} is forwarded as sent");
    }
    for key in [
        "metadata",
        "store",
        "service_tier",
        "modalities",
        "prediction",
        "prompt_cache_key",
        "safety_identifier",
    ] {
        assert!(forwarded.get(key).is_none(), "{key} is not forwarded");
    }
    for (key, value) in [
        ("store", json!(true)),
        ("audio", json!({"voice": "alloy"})),
        ("service_tier", json!("flex")),
        ("web_search_options", json!({})),
    ] {
        let mut refused = body.clone();
        refused[key] = value;
        let (status, problem) = post(&s.deps, "/v1/chat/completions", &refused).await;
        assert_eq!(status, 400, "{key}");
        assert!(
            problem["detail"].as_str().unwrap().contains(key),
            "{problem}"
        );
    }
    let mut typo = body.clone();
    typo["max_token"] = json!(3);
    let (status, problem) = post(&s.deps, "/v1/chat/completions", &typo).await;
    assert_eq!(status, 400);
    assert!(
        problem["detail"].as_str().unwrap().contains("max_token"),
        "{problem}"
    );
}

#[tokio::test]
async fn tool_calls_pass_through_intact_plain_and_streamed() {
    let s = setup(1, &[]).await;
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]);
    let (status, answer) = post(
        &s.deps,
        "/v1/chat/completions",
        &json!({"model": "sophia-small", "messages": [{"role": "user", "content": "roadmap please"}], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "lookup"}}}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(s.sims[0].sim.last_request().unwrap()["tools"], tools);

    // The history with the call and the tool's answer goes upstream unchanged.
    let history = json!([
        {"role": "user", "content": "roadmap please"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Q3: migration"},
    ]);
    let (status, _) = post(
        &s.deps,
        "/v1/chat/completions",
        &json!({"model": "sophia-small", "messages": history, "tools": tools}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(s.sims[0].sim.last_request().unwrap()["messages"], history);

    let (status, text, _) = stream(
        &s.deps,
        &json!({"model": "sophia-small", "stream": true, "messages": [{"role": "user", "content": "streamed lookup"}], "tools": tools}),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mut arguments = String::new();
    for event in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if event == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(event).unwrap();
        for delta in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            arguments.push_str(delta["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"q": "streamed"}),
        "the argument pieces add up: {text}"
    );
    assert!(
        text.contains("\"finish_reason\":\"tool_calls\"") && text.ends_with("data: [DONE]\n\n")
    );
}
