//! Property tests: arbitrary JSON shaped like chat requests is either valid or a
//! clean 400, never a panic. `make fuzz` raises the case count.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{Value, json};
use sophia_shared::http::request::parse_json;
use sophia_shared::inference::chat::{ChatRequest, Limits};

fn limits() -> Limits {
    Limits {
        models: vec!["sophia-small".into()],
        max_messages: 8,
        max_message_chars: 200,
        max_total_chars: 800,
        max_tokens: 512,
    }
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[ -~]{0,300}".prop_map(Value::String),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "user",
            "system",
            "assistant",
            "tool",
            "developer",
            "wizard",
        ]),
        scalar(),
        prop::option::of("[a-z_]{1,10}"),
    )
        .prop_map(|(role, content, extra)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(field) = extra {
                m[field] = json!(1);
            }
            m
        })
}

proptest! {
    #[test]
    fn chat_requests_validate_or_fail_as_400(
        model in prop::sample::select(vec!["sophia-small", "other", ""]),
        messages in proptest::collection::vec(message(), 0..12),
        max_tokens in prop::option::of(any::<i64>()),
        temperature in prop::option::of(scalar()),
        stream in prop::option::of(scalar()),
    ) {
        let mut body = json!({"model": model, "messages": messages});
        if let Some(v) = max_tokens { body["max_tokens"] = json!(v); }
        if let Some(v) = temperature { body["temperature"] = v; }
        if let Some(v) = stream { body["stream"] = v; }
        let bytes = body.to_string().into_bytes();
        match parse_json::<ChatRequest>(&bytes) {
            Err(error) => prop_assert_eq!(error.status().as_u16(), 400),
            Ok(request) => {
                if let Err(error) = request.validate(&limits()) {
                    prop_assert_eq!(error.status().as_u16(), 400);
                } else {
                    let upstream = request.upstream_body(&limits()).unwrap();
                    prop_assert!(upstream["max_tokens"].as_u64().is_some_and(|t| t <= 512) || upstream.get("max_completion_tokens").is_some());
                }
            }
        }
    }
}
