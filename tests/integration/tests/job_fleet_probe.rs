//! job-fleet-probe against fleet simulators and the local AWS, and a fresh
//! api-chat instance reading what it wrote.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_sim::{Fault, FaultMode};
use harness::{
    issue_token, json_request, local_aws, sdk_config_for, start_sim, unique_stack, with_bearer,
};
use job_fleet_probe::handler::{Deps, ProbeError, handle};
use serde_json::json;
use sophia_shared::config::Env;

fn status_of(report: &job_fleet_probe::handler::ProbeReport, name: &str) -> &'static str {
    report
        .endpoints
        .iter()
        .find(|e| e.name == name)
        .unwrap()
        .status
}

#[tokio::test]
async fn a_dead_endpoint_is_marked_down_within_two_runs_and_a_fresh_client_routes_around_it() {
    let stack = local_aws().provision(&unique_stack("probe"), &[]);
    let token = harness::current_secret(&stack, "FLEET_TOKEN_SECRET").await;
    let (primary, secondary) = (start_sim().await, start_sim().await);
    for sim in [&primary, &secondary] {
        sim.sim.set_tokens(vec![token.clone()]).await;
    }
    let fleet = format!(
        "primary={},secondary={}",
        primary.base_url(),
        secondary.base_url()
    );
    let env = stack.env_with(&[("FLEET_ENDPOINTS", &fleet), ("PROBE_TIMEOUT_MS", "300")]);
    let sdk = sdk_config_for(&local_aws().endpoint).await;
    let probe = Deps::from_env(&Env::new(&env), &sdk).unwrap();

    let healthy = handle(&probe, json!({"run": "t0"})).await.unwrap();
    assert_eq!(status_of(&healthy, "primary"), "up");
    assert!(healthy.endpoints.iter().all(|e| e.probe_ok), "{healthy:?}");
    assert_eq!(
        primary.sim.counters.completions.load(Ordering::Relaxed),
        1,
        "the probe generated a token"
    );

    primary
        .sim
        .set_fault(Fault {
            mode: FaultMode::BlackHole,
            ..Fault::default()
        })
        .await;
    let first = handle(&probe, json!({"run": "t1"})).await.unwrap();
    assert_eq!(
        status_of(&first, "primary"),
        "up",
        "one lost probe does not flap it"
    );
    let retried = handle(&probe, json!({"run": "t1"})).await.unwrap();
    assert!(
        retried.endpoints.iter().all(|e| e.already_counted),
        "a retried run counts nothing twice"
    );
    assert_eq!(status_of(&retried, "primary"), "up");
    let second = handle(&probe, json!({"run": "t2"})).await.unwrap();
    assert_eq!(status_of(&second, "primary"), "down");
    assert_eq!(status_of(&second, "secondary"), "up");

    // A fresh api-chat instance: it has never seen the primary fail.
    let mut chat_env = stack.env_with(&[
        ("FLEET_ENDPOINTS", &fleet),
        ("FLEET_ATTEMPT_TIMEOUT_MS", "4000"),
    ]);
    chat_env.remove("FLEET_TOKEN_SECRET");
    for sim in [&primary, &secondary] {
        sim.sim.set_tokens(vec![]).await;
    }
    let chat = api_chat::handler::Deps::from_env(&Env::new(&chat_env), &sdk)
        .await
        .unwrap();
    let access = issue_token(&stack, "tenant-a", &["chat"]).await;
    let body = json!({"model": "sophia-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let started = Instant::now();
    let response = harness::chat_handle(
        &chat,
        with_bearer(
            json_request("POST", "/v1/chat/completions", &body, None),
            &access,
        ),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        elapsed < Duration::from_millis(2000),
        "paid the dead primary's 4 s timeout: {elapsed:?}"
    );
    assert_eq!(
        primary.sim.counters.completions.load(Ordering::Relaxed),
        1,
        "only the first probe's completion"
    );

    // Healed: it takes two good probes to come back.
    primary.sim.set_fault(Fault::default()).await;
    primary.sim.set_tokens(vec![token.clone()]).await;
    secondary.sim.set_tokens(vec![token]).await;
    assert_eq!(
        status_of(
            &handle(&probe, json!({"run": "t3"})).await.unwrap(),
            "primary"
        ),
        "down"
    );
    assert_eq!(
        status_of(
            &handle(&probe, json!({"run": "t4"})).await.unwrap(),
            "primary"
        ),
        "up"
    );
}

#[tokio::test]
async fn a_stopped_simulator_is_marked_down_and_a_bad_event_is_not_retried() {
    let stack = local_aws().provision(&unique_stack("probe-stop"), &[]);
    let sim = start_sim().await;
    let fleet = format!("only={}", sim.base_url());
    let mut env = stack.env_with(&[("FLEET_ENDPOINTS", &fleet), ("PROBE_TIMEOUT_MS", "300")]);
    env.remove("FLEET_TOKEN_SECRET");
    let probe = Deps::from_env(&Env::new(&env), &local_aws().sdk_config().await).unwrap();
    sim.stop().await;
    handle(&probe, harness_event("scheduled.json"))
        .await
        .unwrap();
    let report = handle(&probe, json!({})).await.unwrap();
    assert_eq!(report.endpoints[0].status, "down");
    assert_eq!(report.endpoints[0].failure, Some("unreachable"));

    let error = handle(&probe, harness_event("bad.json")).await.unwrap_err();
    assert!(matches!(error, ProbeError::Invalid(_)));
    let diagnostic: lambda_runtime::Diagnostic = error.into();
    assert!(diagnostic.error_type.starts_with("NonRetryable"));
}

fn harness_event(file: &str) -> serde_json::Value {
    let path = harness::workspace_root()
        .join("events/job-fleet-probe")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
