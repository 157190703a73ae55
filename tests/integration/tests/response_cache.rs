//! The exact-match response cache of chat completions, against a fleet
//! simulator and the local AWS: opt-in per tenant (flag) and per request
//! (header), deterministic requests only, never another tenant's answer, a hit
//! costs no fleet call and is billed as cached.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use harness::chat::{Chat, PATH, calls, completion, setup};
use harness::{json_request, local_aws, number_of};
use serde_json::{Value, json};
use sophia_shared::ops::flags::{FlagValue, Flags};

async fn turn_on_the_cache(stack: &harness::Provisioned, tenant: &str) {
    let dynamodb = aws_sdk_dynamodb::Client::new(&local_aws().sdk_config().await);
    Flags::new(
        dynamodb,
        stack.env("AUTH_TABLE").to_owned(),
        Duration::from_secs(1),
    )
    .set(tenant, "response_cache", &FlagValue::Bool(true))
    .await
    .unwrap();
}

/// One completion with `x-sophia-cache: <header>` as `token`'s caller: status,
/// the answer's `x-sophia-cache`, the body.
async fn ask(
    chat: &Chat,
    token: &str,
    body: &Value,
    header: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = json_request("POST", PATH, body, None);
    if let Some(value) = header {
        request
            .headers_mut()
            .insert("x-sophia-cache", value.parse().unwrap());
    }
    let (status, marked, text) =
        harness::chat::stream_request(chat, harness::with_bearer(request, token)).await;
    (status, marked, serde_json::from_str(&text).unwrap())
}

fn greedy(text: &str) -> Value {
    let mut body = completion(text);
    body["temperature"] = json!(0);
    body
}

#[tokio::test]
async fn a_repeated_deterministic_request_is_answered_from_the_cache_and_billed_as_cached() {
    // The flag is cached per instance; 1 ms makes the test's flag change visible at once.
    let s = setup(1, &[("RESPONSE_CACHE_FLAG_CACHE_MS", "1")]).await;
    let token = s.deps.token.clone();

    // Asked for, but the tenant has not turned it on: the fleet answers.
    let (status, marked, _) = ask(&s.deps, &token, &greedy("cache me"), Some("use")).await;
    assert_eq!((status, marked.as_deref()), (200, Some("bypass")));
    assert_eq!(calls(&s.sims[0]), 1);

    turn_on_the_cache(&s.stack, "tenant-a").await;
    let (status, marked, first) = ask(&s.deps, &token, &greedy("cache me"), Some("use")).await;
    assert_eq!((status, marked.as_deref()), (200, Some("miss")));
    assert_eq!(calls(&s.sims[0]), 2);
    let (status, marked, second) = ask(&s.deps, &token, &greedy("cache me"), Some("use")).await;
    assert_eq!((status, marked.as_deref()), (200, Some("hit")));
    assert_eq!(calls(&s.sims[0]), 2, "a hit makes no fleet call");
    assert_eq!(first, second, "the stored answer, unchanged");

    // Without the header nothing is looked up, and the answer says nothing.
    let (status, marked, _) = ask(&s.deps, &token, &greedy("cache me"), None).await;
    assert_eq!((status, marked), (200, None));
    assert_eq!(calls(&s.sims[0]), 3);

    let items = harness::usage_items(&s.stack, "tenant-a", "usage#").await;
    assert_eq!(items.len(), 1);
    assert_eq!(number_of(&items[0], "requests"), 4.0);
    assert_eq!(number_of(&items[0], "cached_requests"), 1.0);
    let completion_tokens = first["usage"]["completion_tokens"].as_f64().unwrap();
    assert_eq!(
        number_of(&items[0], "completion_tokens"),
        3.0 * completion_tokens,
        "the hit added no upstream tokens"
    );
}

#[tokio::test]
async fn random_sampling_streams_and_other_tenants_never_get_a_cached_answer() {
    let s = setup(1, &[("RESPONSE_CACHE_FLAG_CACHE_MS", "1")]).await;
    turn_on_the_cache(&s.stack, "tenant-a").await;
    turn_on_the_cache(&s.stack, "tenant-b").await;
    let token_a = s.deps.token.clone();
    let token_b = harness::issue_token(&s.stack, "tenant-b", &["chat"]).await;

    let (_, marked, _) = ask(&s.deps, &token_a, &greedy("shared words"), Some("use")).await;
    assert_eq!(marked.as_deref(), Some("miss"));
    let (status, marked, _) = ask(&s.deps, &token_b, &greedy("shared words"), Some("use")).await;
    assert_eq!(
        (status, marked.as_deref()),
        (200, Some("miss")),
        "tenant-b has its own cache"
    );
    assert_eq!(calls(&s.sims[0]), 2);

    // OpenAI's default temperature is 1: without a seed, no two answers need agree.
    for _ in 0..2 {
        let (_, marked, _) = ask(&s.deps, &token_a, &completion("random"), Some("use")).await;
        assert_eq!(marked.as_deref(), Some("bypass"));
    }
    assert_eq!(calls(&s.sims[0]), 4);
    // A seed makes it deterministic.
    let mut seeded = completion("seeded");
    seeded["seed"] = json!(7);
    seeded["temperature"] = json!(0.8);
    let (_, first, _) = ask(&s.deps, &token_a, &seeded, Some("use")).await;
    let (_, second, _) = ask(&s.deps, &token_a, &seeded, Some("use")).await;
    assert_eq!(
        (first.as_deref(), second.as_deref()),
        (Some("miss"), Some("hit"))
    );
    // A different request is a different entry.
    seeded["seed"] = json!(8);
    let (_, third, _) = ask(&s.deps, &token_a, &seeded, Some("use")).await;
    assert_eq!(third.as_deref(), Some("miss"));
    assert_eq!(calls(&s.sims[0]), 6);

    // Streams are never served from the cache.
    let mut streamed = greedy("shared words");
    streamed["stream"] = json!(true);
    let mut request = json_request("POST", PATH, &streamed, None);
    request
        .headers_mut()
        .insert("x-sophia-cache", "use".parse().unwrap());
    let response = harness::chat::stream_request(&s.deps, s.deps.authorize(request)).await;
    assert_eq!(response.0, 200);
    assert_eq!(response.1.as_deref(), Some("bypass"));
    assert!(response.2.contains("[DONE]"), "{}", response.2);
    assert_eq!(calls(&s.sims[0]), 7);
}

#[tokio::test]
async fn a_bad_cache_header_is_a_400_and_an_expired_entry_a_miss() {
    let s = setup(
        1,
        &[
            ("RESPONSE_CACHE_FLAG_CACHE_MS", "1"),
            ("RESPONSE_CACHE_TTL_SECS", "1"),
        ],
    )
    .await;
    turn_on_the_cache(&s.stack, "tenant-a").await;
    let token = s.deps.token.clone();
    let (status, marked, problem) = ask(&s.deps, &token, &greedy("x"), Some("always")).await;
    assert_eq!((status, marked), (400, None));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("x-sophia-cache"),
        "{problem}"
    );
    assert_eq!(calls(&s.sims[0]), 0);

    let (_, marked, _) = ask(&s.deps, &token, &greedy("x"), Some("use")).await;
    assert_eq!(marked.as_deref(), Some("miss"));
    // Injected: the entry lives 1 s; after 2.1 s it is expired (whether or not
    // DynamoDB has deleted it yet).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, marked, _) = ask(&s.deps, &token, &greedy("x"), Some("use")).await;
    assert_eq!(marked.as_deref(), Some("miss"));
    assert_eq!(calls(&s.sims[0]), 2);
}
