//! api-health against the local AWS and fleet simulators.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use api_health::handler::{Deps, HealthConfig, handle};
use harness::{
    body_json, dead_endpoint, http_event, local_aws, sdk_config_for, start_sim, unique_stack,
};
use sophia_shared::config::Env;

const SECURITY_HEADERS: [&str; 5] = [
    "strict-transport-security",
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
];

async fn deps(aws_endpoint: &str, env: &std::collections::HashMap<String, String>) -> Deps {
    let config = HealthConfig::from_env(&Env::new(env)).unwrap();
    Deps::new(config, &sdk_config_for(aws_endpoint).await).unwrap()
}

#[tokio::test]
async fn ready_is_200_when_every_dependency_answers() {
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("health-ok"), &[]);
    let (primary, secondary) = (start_sim().await, start_sim().await);
    let fleet = format!(
        "primary={},secondary={}",
        primary.base_url(),
        secondary.base_url()
    );
    let deps = deps(
        &aws.endpoint,
        &stack.env_with(&[("FLEET_ENDPOINTS", &fleet)]),
    )
    .await;

    let response = handle(&deps, http_event("api-health", "ready.json")).await;

    assert_eq!(response.status(), 200, "{:?}", body_json(&response));
    let body = body_json(&response);
    assert_eq!(body["status"], "ready");
    let names: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["dynamodb", "sqs", "fleet:primary", "fleet:secondary"]
    );
    for check in body["checks"].as_array().unwrap() {
        assert_eq!(check["status"], "ok", "{check}");
        assert!(check["latency_ms"].as_f64().unwrap() >= 0.0);
    }
    for header in SECURITY_HEADERS {
        assert!(response.headers().contains_key(header), "{header}");
    }
    assert_eq!(response.headers()["x-correlation-id"], "sample-ready");
    // The simulators really were asked.
    for sim in [&primary, &secondary] {
        assert_eq!(
            sim.sim
                .counters
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}

#[tokio::test]
async fn ready_is_503_naming_a_stopped_simulator() {
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("health-sim"), &[]);
    let (primary, secondary) = (start_sim().await, start_sim().await);
    let fleet = format!(
        "primary={},secondary={}",
        primary.base_url(),
        secondary.base_url()
    );
    let deps = deps(
        &aws.endpoint,
        &stack.env_with(&[("FLEET_ENDPOINTS", &fleet)]),
    )
    .await;
    secondary.stop().await;

    let response = handle(&deps, http_event("api-health", "ready.json")).await;

    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(response.headers().contains_key("retry-after"));
    let problem = body_json(&response);
    assert_eq!(problem["type"], "urn:sophia:problem:not-ready");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("fleet:secondary"),
        "{problem}"
    );
    assert!(
        !problem["detail"]
            .as_str()
            .unwrap()
            .contains("fleet:primary"),
        "{problem}"
    );
    let checks = problem["checks"].as_array().unwrap();
    let status_of =
        |name: &str| checks.iter().find(|c| c["name"] == name).unwrap()["status"].clone();
    assert_eq!(status_of("fleet:secondary"), "down");
    assert_eq!(status_of("fleet:primary"), "ok");
    assert_eq!(status_of("dynamodb"), "ok");
}

#[tokio::test]
async fn ready_is_503_naming_a_black_holed_simulator_within_the_check_timeout() {
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("health-hole"), &[]);
    let primary = start_sim().await;
    primary
        .sim
        .set_fault(fleet_sim::Fault {
            mode: fleet_sim::FaultMode::BlackHole,
            ..Default::default()
        })
        .await;
    let fleet = format!("primary={}", primary.base_url());
    let env = stack.env_with(&[
        ("FLEET_ENDPOINTS", &fleet),
        ("READY_CHECK_TIMEOUT_MS", "300"),
    ]);
    let deps = deps(&aws.endpoint, &env).await;

    let started = Instant::now();
    let response = handle(&deps, http_event("api-health", "ready.json")).await;

    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), 503);
    let problem = body_json(&response);
    let check = &problem["checks"][2];
    assert_eq!(check["name"], "fleet:primary");
    assert_eq!(check["reason"], "timeout");
}

#[tokio::test]
async fn ready_is_503_naming_an_unreachable_local_aws() {
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("health-aws"), &[]);
    let primary = start_sim().await;
    let fleet = format!("primary={}", primary.base_url());
    let deps = deps(
        &dead_endpoint(),
        &stack.env_with(&[("FLEET_ENDPOINTS", &fleet)]),
    )
    .await;

    let response = handle(&deps, http_event("api-health", "ready.json")).await;

    assert_eq!(response.status(), 503);
    let problem = body_json(&response);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("dynamodb") && detail.contains("sqs"),
        "{detail}"
    );
    assert_eq!(problem["checks"][0]["reason"], "unreachable");
    // Nothing internal leaks into the public answer.
    let text = problem.to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.contains("dispatch"),
        "{text}"
    );
}

#[tokio::test]
async fn ready_is_503_when_the_table_is_missing() {
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("health-table"), &[]);
    let primary = start_sim().await;
    let fleet = format!("primary={}", primary.base_url());
    let env = stack.env_with(&[
        ("FLEET_ENDPOINTS", &fleet),
        ("STATE_TABLE", "no-such-table"),
    ]);
    let deps = deps(&aws.endpoint, &env).await;

    let response = handle(&deps, http_event("api-health", "ready.json")).await;

    assert_eq!(response.status(), 503);
    let problem = body_json(&response);
    assert_eq!(problem["checks"][0]["name"], "dynamodb");
    assert_eq!(problem["checks"][0]["reason"], "rejected");
    assert_eq!(problem["checks"][1]["status"], "ok");
}

#[tokio::test]
async fn liveness_needs_no_dependency() {
    let fleet = format!("primary={}", dead_endpoint());
    let env = [
        ("STATE_TABLE", "t"),
        ("JOBS_QUEUE_URL", "http://127.0.0.1:9/q"),
        ("FLEET_ENDPOINTS", fleet.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let deps = deps(&dead_endpoint(), &env).await;

    let response = handle(&deps, http_event("api-health", "health.json")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(body_json(&response)["status"], "ok");
}
