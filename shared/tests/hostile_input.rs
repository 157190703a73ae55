//! Property tests for hostile input: whatever arrives, the answer is a clean
//! 4xx (never a panic, never a 5xx) and no forged token is accepted.
//! `make test` runs a few hundred cases; `make fuzz` runs many more
//! (`PROPTEST_CASES`), bounded in count so it stops by itself.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use base64::Engine;
use http::Method;
use lambda_http::{Body, Request};
use proptest::prelude::*;
use sophia_shared::auth::tokens::{
    API_KEY_PREFIX, KeyRing, Opaque, REFRESH_PREFIX, SigningKey, TokenPolicy,
};
use sophia_shared::http::policy::HttpPolicy;
use sophia_shared::http::request::{json_depth_exceeds, json_response, parse_json};
use sophia_shared::http::routing::Route;
use sophia_shared::http::serve;

fn policy() -> TokenPolicy {
    TokenPolicy {
        issuer: "iss".into(),
        audience: "aud".into(),
        access_ttl_secs: 600,
        refresh_ttl_secs: 3600,
        leeway_secs: 5,
    }
}

fn ring() -> KeyRing {
    KeyRing::new(
        SigningKey::new("k1", b"property-test-signing-key-material").unwrap(),
        vec![],
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const ROUTES: [Route<u8>; 2] = [
    Route::public(Method::POST, "/v1/things", 0),
    Route::public(Method::GET, "/v1/things/{id}", 1),
];

fn http_policy() -> HttpPolicy {
    HttpPolicy {
        service: "fuzz",
        cors_allowed_origins: vec!["https://app.example".into()],
        max_body_bytes: 4096,
        default_budget: Duration::from_secs(1),
        auth: None,
        limits: None,
        slow_request_ms: 200.0,
        bulkhead: None,
        reject_unknown_origins: false,
    }
}

proptest! {
    #[test]
    fn json_parsing_never_panics_and_fails_as_a_client_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(error) = parse_json::<serde_json::Value>(&bytes) {
            prop_assert!(error.status().is_client_error());
        }
        let _ = json_depth_exceeds(&bytes, 32);
    }

    #[test]
    fn nested_json_is_refused_before_serde(depth in 33usize..5000) {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        prop_assert!(parse_json::<serde_json::Value>(body.as_bytes()).is_err());
    }

    #[test]
    fn the_pipeline_answers_anything_without_a_5xx(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
        path in "(/[a-zA-Z0-9%._~-]{0,12}){0,5}",
        content_type in prop::sample::select(vec!["application/json", "text/plain", "application/problem+json", ""]),
        correlation in "[ -~]{0,200}",
        origin in prop::sample::select(vec!["https://app.example", "https://evil.example", "null", ""]),
        body in proptest::collection::vec(any::<u8>(), 0..6000),
    ) {
        let mut builder = http::Request::builder().method(method).uri(if path.is_empty() { "/".to_owned() } else { path });
        for (name, value) in [("content-type", content_type), ("origin", origin)] {
            if !value.is_empty() {
                builder = builder.header(name, value);
            }
        }
        if let Ok(value) = http::HeaderValue::from_str(&correlation) {
            builder = builder.header("x-correlation-id", value);
        }
        let Ok(request) = builder.body(Body::from(body)) else { return Ok(()) };
        let request: Request = request;
        let response = runtime().block_on(serve(&http_policy(), &ROUTES, request, |api| async move {
            let value: serde_json::Value = if api.route == 0 { api.json()? } else { serde_json::json!({}) };
            json_response(http::StatusCode::OK, &value)
        }));
        prop_assert!(response.status().as_u16() < 500, "{}", response.status());
        prop_assert!(response.headers().contains_key("x-correlation-id"));
        let echoed = response.headers()["x-correlation-id"].to_str().unwrap();
        prop_assert!(echoed.len() <= 128 && !echoed.contains(' '));
    }

    #[test]
    fn random_strings_are_never_valid_tokens(token in "[ -~]{0,600}") {
        prop_assert!(policy().verify(&ring(), &token).is_err());
    }

    #[test]
    fn any_change_to_a_valid_token_is_refused(position in 0usize..10_000, replacement in any::<u8>()) {
        let p = policy();
        let token = p.sign(&ring(), &p.claims("s", "t", &["chat".into()], "f")).unwrap();
        let mut bytes = token.clone().into_bytes();
        let index = position % bytes.len();
        // Keep it ASCII: the change has to be to the token, not to its encoding.
        bytes[index] = b'!' + replacement % 94;
        let mutated = String::from_utf8(bytes).unwrap();
        prop_assume!(mutated != token);
        // Trailing base64 bits can decode to the same bytes; only then may it pass.
        if let Ok(claims) = p.verify(&ring(), &mutated) {
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let same = mutated.split('.').zip(token.split('.')).all(|(a, b)| engine.decode(a).ok() == engine.decode(b).ok());
            prop_assert!(same, "a changed token was accepted: {claims:?}");
        }
    }

    #[test]
    fn opaque_credentials_parse_or_refuse_cleanly(text in "[a-z0-9_]{0,140}") {
        for (prefix, ids) in [(API_KEY_PREFIX, 1), (REFRESH_PREFIX, 2)] {
            if let Some(parsed) = Opaque::parse(prefix, &text, ids) {
                prop_assert_eq!(parsed.render(prefix), text.clone());
            }
        }
    }
}
