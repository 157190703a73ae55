//! Rate limits shared across instances, against the local AWS.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;

use harness::{body_json, json_request, local_aws, sdk_config_for, unique_stack};
use serde_json::json;
use sophia_shared::config::Env;

async fn probe(endpoint: &str, table: &str, key: &str, requests: u32) -> u32 {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_limit-probe"))
        .args([key, "60", "20", &requests.to_string()])
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("STATE_TABLE", table)
        // Exact counts: requests leased by a process that then stops are never
        // used (the lease test covers leases).
        .env("RATE_LIMIT_LEASE_MS", "0")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn two_processes_share_one_limit() {
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("limits"), &[]);
    let table = stack.env("STATE_TABLE");
    // 20 at once, then 1 per second. Each process alone would admit 20 of 60.
    let started = Instant::now();
    let (a, b) = tokio::join!(
        probe(&aws.endpoint, table, "shared", 60),
        probe(&aws.endpoint, table, "shared", 60)
    );
    let elapsed = started.elapsed().as_secs_f64();
    let refill = elapsed.ceil() as u32;
    println!("two processes admitted {a} + {b} of 120 in {elapsed:.2} s (limit: 20 + 1/s)");
    assert!(a + b >= 20, "the burst is available: {a} + {b}");
    assert!(
        a + b <= 20 + refill,
        "combined admissions stay at the limit: {a} + {b} in {elapsed:.2} s"
    );
    assert!(a > 0 && b > 0, "both processes took part: {a}, {b}");
}

#[tokio::test]
async fn the_api_answers_429_with_retry_after_and_ratelimit_headers() {
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("limits-api"), &[]);
    let env = stack.env_with(&[("RATE_LIMIT_IP_PER_MIN", "6"), ("RATE_LIMIT_IP_BURST", "3")]);
    let sdk = sdk_config_for(&aws.endpoint).await;
    let deps = api_auth::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let body = json!({"api_key": "sk_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000"});
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let response =
            api_auth::handler::handle(&deps, json_request("POST", "/v1/auth/token", &body, None))
                .await;
        statuses.push(response.status().as_u16());
        last = Some(response);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429, 429],
        "the burst of 3, then refused"
    );
    let limited = last.unwrap();
    assert_eq!(limited.headers()["ratelimit-limit"], "3");
    assert_eq!(limited.headers()["ratelimit-remaining"], "0");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    assert_eq!(
        body_json(&limited)["type"],
        "urn:sophia:problem:rate-limited"
    );
}

#[tokio::test]
async fn concurrent_requests_under_the_limit_are_all_admitted() {
    use sophia_shared::guard::ratelimit::{Limiter, Rule};
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("limits-burst"), &[]);
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws.sdk_config().await);
    // Five separate limiters stand for five instances, each with two requests in flight.
    let limiters: Vec<Limiter> = (0..5)
        .map(|_| Limiter::new(dynamodb.clone(), stack.env("STATE_TABLE").to_owned()))
        .collect();
    // One refill a minute: however slow the machine, no token comes back mid-test.
    let rule = Rule {
        per_minute: 1,
        burst: 12,
    };
    let checks = limiters
        .iter()
        .flat_map(|l| [l.check("hot", rule), l.check("hot", rule)]);
    let decisions = futures_util::future::join_all(checks).await;
    assert!(decisions.iter().all(|d| d.allowed), "{decisions:?}");
    // Two more fit the burst of 12, then the limit holds for everyone.
    let more = futures_util::future::join_all((0..4).map(|i| limiters[i].check("hot", rule))).await;
    assert_eq!(more.iter().filter(|d| d.allowed).count(), 2, "{more:?}");
}

/// Now, in the limiter's unit (Unix microseconds): where [`minutes_taken`] counts from.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The stored TAT of `key`, in whole intervals of one minute past `start_us`.
async fn minutes_taken(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
    start_us: u64,
) -> u64 {
    let item = dynamodb
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(format!("ratelimit#{key}")))
        .key("sk", AttributeValue::S("gcra".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let tat: u64 = item.item().unwrap()["tat"].as_n().unwrap().parse().unwrap();
    // Whole minutes: the test's own few seconds round away.
    (tat - start_us + 30_000_000) / 60_000_000
}

/// Waits until no lease refill for `key` is waiting or on the wire.
async fn refilled(limiter: &sophia_shared::guard::ratelimit::Limiter, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while limiter.refilling(key) {
        assert!(Instant::now() < deadline, "a lease refill never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_returning_caller_leases_requests_and_instances_still_share_one_limit() {
    use sophia_shared::guard::ratelimit::{Limiter, Rule};
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("limits-lease"), &[]);
    let table = stack.env("STATE_TABLE").to_owned();
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws.sdk_config().await);
    // A lease time far beyond any slowness of the local AWS, so the test sees
    // leases, not the clock; one refill a minute: no token comes back mid-test.
    let a = Limiter::new(dynamodb.clone(), table.clone()).with_lease_ttl(Duration::from_secs(600));
    // The other instance writes for every request, so its count is exact.
    let b = Limiter::new(dynamodb.clone(), table.clone()).with_lease_ttl(Duration::ZERO);
    let rule = Rule {
        per_minute: 1,
        burst: 40,
    };
    assert_eq!(rule.lease(), 4);
    let start_us = now_us();
    let settled = || refilled(&a, "lease");
    // A first request writes one.
    assert!(a.check("lease", rule).await.allowed);
    assert_eq!(minutes_taken(&dynamodb, &table, "lease", start_us).await, 1);
    // A returning caller's writes take more than its request: it holds a lease,
    // refilled in the background once half used.
    for _ in 0..9 {
        assert!(a.check("lease", rule).await.allowed);
        settled().await;
    }
    let taken_by_a = minutes_taken(&dynamodb, &table, "lease", start_us).await;
    assert!(
        (11..=18).contains(&taken_by_a),
        "10 admitted, at most two leases of 4 ahead: {taken_by_a}"
    );
    // Another instance gets what is left, and not one more.
    let mut by_b = 0;
    for _ in 0..50 {
        if b.check("lease", rule).await.allowed {
            by_b += 1;
        }
    }
    assert_eq!(
        by_b,
        40 - taken_by_a,
        "the bucket's 40 less what the first instance took"
    );
    assert_eq!(
        minutes_taken(&dynamodb, &table, "lease", start_us).await,
        40
    );
    // The first instance still admits what it holds, then no more.
    let mut held = 0;
    for _ in 0..20 {
        if a.check("lease", rule).await.allowed {
            held += 1;
        }
        settled().await;
    }
    assert_eq!(
        held,
        taken_by_a - 10,
        "every leased request is used, none beyond"
    );
    assert_eq!(
        minutes_taken(&dynamodb, &table, "lease", start_us).await,
        40
    );
}

#[tokio::test]
async fn a_lease_refill_waits_for_the_answer_in_progress() {
    use sophia_shared::background::Answering;
    use sophia_shared::guard::ratelimit::{Limiter, Rule};
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("limits-refill"), &[]);
    let table = stack.env("STATE_TABLE").to_owned();
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws.sdk_config().await);
    // A long lease: a refill waits for the answer at most a second.
    let limiter =
        Limiter::new(dynamodb.clone(), table.clone()).with_lease_ttl(Duration::from_secs(600));
    let rule = Rule {
        per_minute: 1,
        burst: 40,
    };
    let start_us = now_us();
    // Requests, each its own answer, until one asks for a refill while its
    // answer is still in progress.
    let mut answering = None;
    for _ in 0..20 {
        let answer = Answering::start();
        assert!(limiter.check("refill", rule).await.allowed);
        if limiter.refilling("refill") {
            answering = Some(answer);
            break;
        }
        drop(answer);
        refilled(&limiter, "refill").await;
    }
    let answering = answering.expect("a returning caller's lease is refilled");
    let before = minutes_taken(&dynamodb, &table, "refill", start_us).await;
    // Far less than the wait's one-second bound: the refill has not written.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(limiter.refilling("refill"), "the refill waits");
    assert_eq!(
        minutes_taken(&dynamodb, &table, "refill", start_us).await,
        before,
        "nothing written while the answer is in progress"
    );
    drop(answering);
    refilled(&limiter, "refill").await;
    assert!(
        minutes_taken(&dynamodb, &table, "refill", start_us).await > before,
        "the refill took its lease once the answer was complete"
    );
}

#[tokio::test]
async fn floods_of_forged_tokens_are_throttled_too() {
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("limits-forged"), &[]);
    let env = stack.env_with(&[("RATE_LIMIT_IP_PER_MIN", "6"), ("RATE_LIMIT_IP_BURST", "3")]);
    let sdk = sdk_config_for(&aws.endpoint).await;
    let deps = api_admin::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let request = http::Request::builder()
            .uri("/v1/admin/keys")
            .header("authorization", "Bearer forged.token.value")
            .body(lambda_http::Body::Empty)
            .unwrap();
        statuses.push(
            api_admin::handler::handle(&deps, request)
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
}

/// Chat checks its rate limits in the same round trip as the quota reservation
/// (issue 16), started before the body is parsed: a malformed request still
/// pays its rate limit and is refused 429 once the budget is spent, and a
/// request refused by the rate limit gives its quota reservation back.
#[tokio::test]
async fn chat_rate_limits_alongside_the_quota_refuse_malformed_requests_too_and_return_the_quota() {
    let s = harness::chat::setup(
        1,
        &[
            ("RATE_LIMIT_PRINCIPAL_PER_MIN", "1"),
            ("RATE_LIMIT_PRINCIPAL_BURST", "2"),
        ],
    )
    .await;
    let path = harness::chat::PATH;
    let valid = harness::chat::completion("within the limit");
    let malformed = json!({"model": "sophia-small", "messages": "not a list"});
    let mut statuses = Vec::new();
    for body in [&valid, &malformed, &malformed, &valid] {
        let request = s.deps.authorize(json_request("POST", path, body, None));
        let response = harness::chat_handle(&s.deps, request).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert_eq!(
                body_json(&response)["type"],
                "urn:sophia:problem:rate-limited"
            );
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(statuses, [200, 400, 429, 429]);
    assert_eq!(harness::chat::calls(&s.sims[0]), 1);
    let daily = harness::usage_items(&s.stack, "tenant-a", "daily#").await;
    assert_eq!(
        harness::number_of(&daily[0], "requests"),
        1.0,
        "the refused valid request's reservation was given back"
    );
}

#[tokio::test]
async fn a_chat_answer_ends_only_after_the_lease_refill_it_asked_for() {
    use harness::chat::{PATH, completion, setup, streamed};
    use http_body_util::BodyExt;
    let s = setup(1, &[]).await;
    let limits = s.deps.http.limits.clone().expect("rate limits configured");
    let mut refills_after_the_last_byte = 0;
    for round in 0..40 {
        let body = if round % 2 == 0 {
            completion("refill")
        } else {
            streamed("refill")
        };
        let request = s.deps.authorize(json_request("POST", PATH, &body, None));
        let response = api_chat::handler::handle(&s.deps, request).await;
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut text = Vec::new();
        // The answer's last byte: a whole answer's one frame, a stream's [DONE].
        while !text.ends_with(b"}") && !text.ends_with(b"data: [DONE]\n\n") {
            let frame = body.frame().await.expect("a frame").unwrap();
            text.extend_from_slice(&frame.into_data().unwrap());
        }
        if limits.limiter.refills_in_flight() > 0 {
            refills_after_the_last_byte += 1;
        }
        // What is left of the body is the invocation's tail: billing and the refill.
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
        assert_eq!(
            limits.limiter.refills_in_flight(),
            0,
            "round {round}: the invocation ended with a refill on the wire"
        );
    }
    assert!(
        refills_after_the_last_byte > 0,
        "a returning caller's leases are refilled after its answers"
    );
}
