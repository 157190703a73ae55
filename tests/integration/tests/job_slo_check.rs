//! job-slo-check: request outcomes → CloudWatch metrics → burn rates → alerts,
//! against the local AWS.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use harness::{Provisioned, local_aws, ship_emf, unique_stack};
use job_slo_check::handler::{Deps, SloError, handle};
use serde_json::{Value, json};
use sophia_shared::config::Env;

/// Every EMF document this test process writes.
static DOCUMENTS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

fn capture_emf() {
    sophia_shared::observability::set_emf_sink(|document| {
        DOCUMENTS.lock().unwrap().push(document.clone());
    });
}

async fn stack_with_webhook(prefix: &str) -> (Provisioned, Arc<Mutex<Vec<String>>>) {
    let stack = local_aws().provision(&unique_stack(prefix), &[]);
    let received = harness::alert_webhook(&stack).await;
    (stack, received)
}

async fn checker(stack: &Provisioned, slos: &Value) -> Deps {
    let env = stack.env_with(&[("SLOS", &slos.to_string())]);
    Deps::from_env(&Env::new(&env), &local_aws().sdk_config().await).unwrap()
}

/// Real requests through api-health's pipeline: its `/ready` fails (503) while
/// the fleet is unreachable. Their EMF documents are shipped to the local
/// CloudWatch; the check then pages on every row and stores the status.
#[tokio::test]
async fn failing_requests_become_slis_that_page() {
    capture_emf();
    let (stack, received) = stack_with_webhook("slo-e2e").await;
    let service_env = stack.env_with(&[
        (
            "FLEET_ENDPOINTS",
            &format!("primary={}", harness::dead_endpoint()),
        ),
        ("READY_CHECK_TIMEOUT_MS", "200"),
    ]);
    let sdk = local_aws().sdk_config().await;
    let mut config = api_health::handler::HealthConfig::from_env(&Env::new(&service_env)).unwrap();
    // A service name of this test's own, so concurrent tests cannot mix in.
    let service: &'static str = Box::leak(format!("api-health-{}", stack.stack).into_boxed_str());
    config.http.service = service;
    let health = api_health::handler::Deps::new(config, &sdk).unwrap();
    for _ in 0..20 {
        let response =
            api_health::handler::handle(&health, harness::http_event("api-health", "ready.json"))
                .await;
        assert_eq!(response.status(), 503);
    }
    let documents: Vec<Value> = DOCUMENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d["Service"] == service && d["Route"] == "/ready")
        .cloned()
        .collect();
    assert_eq!(documents.len(), 20);
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&sdk);
    ship_emf(&cloudwatch, &documents).await;

    let deps = checker(
        &stack,
        &json!([{"name": "ready-availability", "service": service, "route": "/ready", "sli": "availability", "objective_percent": 99.9}]),
    )
    .await;
    let report = handle(&deps, json!({"run": "t1"})).await.unwrap();
    let status = &report.slos[0];
    assert_eq!(status.firing, vec!["page-fast", "page-slow", "ticket"]);
    assert_eq!(status.period_counts.total, 20.0, "{status:?}");
    assert!(
        status.budget_remaining < 0.0,
        "all of it spent: {}",
        status.budget_remaining
    );
    assert_eq!(received.lock().unwrap().len(), 3, "one alert per row");
    handle(&deps, json!({"run": "t2"})).await.unwrap();
    assert_eq!(
        received.lock().unwrap().len(),
        3,
        "no repeats while it lasts"
    );
    // The dashboard's status item.
    let item = aws_sdk_dynamodb::Client::new(&sdk)
        .get_item()
        .table_name(stack.env("STATE_TABLE"))
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("slo#ready-availability".into()),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("status".into()),
        )
        .send()
        .await
        .unwrap();
    assert!(item.item().unwrap().contains_key("budget_remaining"));
}

/// Outcomes over the last three days in 5-minute buckets of 100 requests, with
/// `bad(k)` bad ones in bucket k (k = 0 is the newest). Bucket times sit in the
/// middle of their 5 minutes, away from every window's edge.
async fn put_buckets(service: &str, route: &str, bad: impl Fn(u64) -> f64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let documents: Vec<Value> = (0..864u64)
        .map(|k| {
            json!({
                "Service": service,
                "Route": route,
                "Requests": 100.0,
                "Errors": bad(k),
                "_aws": {
                    "Timestamp": now - k * 300_000 - 150_000,
                    "CloudWatchMetrics": [{
                        "Namespace": "Sophia",
                        "Dimensions": [["Service", "Route"]],
                        "Metrics": [{"Name": "Requests", "Unit": "Count"}, {"Name": "Errors", "Unit": "Count"}],
                    }],
                },
            })
        })
        .collect();
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&local_aws().sdk_config().await);
    ship_emf(&cloudwatch, &documents).await;
}

/// Each row of the burn-rate table, alone, and a burn just under the fastest
/// row's threshold (objective 99.9 %: the budget is 0.1 % errors).
#[tokio::test]
async fn each_row_of_the_burn_rate_table_fires_alone() {
    let (stack, received) = stack_with_webhook("slo-rows").await;
    let service = format!("svc-{}", stack.stack);
    // Errors per bucket of 100 requests.
    type Bad = Box<dyn Fn(u64) -> f64>;
    let scenarios: [(&str, Bad, Vec<&str>); 4] = [
        // 2 % for the last hour: 20× over 1 h and 5 min; 3.3× over 6 h.
        (
            "fast",
            Box::new(|k| if k < 12 { 2.0 } else { 0.0 }),
            vec!["page-fast"],
        ),
        // 0.8 % for the last 6 h: 8× over 6 h and 30 min; 0.67× over 3 days.
        (
            "slow",
            Box::new(|k| if k < 72 { 0.8 } else { 0.0 }),
            vec!["page-slow"],
        ),
        // 0.15 % for three days: 1.5× everywhere.
        ("ticket", Box::new(|_| 0.15), vec!["ticket"]),
        // 1.43 % for the last hour: 14.3×, just under 14.4×.
        (
            "under",
            Box::new(|k| if k < 12 { 1.43 } else { 0.0 }),
            vec![],
        ),
    ];
    let mut slos = Vec::new();
    for (name, bad, _) in &scenarios {
        let route = format!("/{name}");
        put_buckets(&service, &route, bad).await;
        slos.push(json!({"name": name, "service": service, "route": route, "sli": "availability", "objective_percent": 99.9}));
    }
    let deps = checker(&stack, &Value::Array(slos)).await;
    let report = handle(&deps, json!({})).await.unwrap();
    for ((name, _, expected), status) in scenarios.iter().zip(&report.slos) {
        assert_eq!(
            &status.firing, expected,
            "{name}: burn rates {:?}",
            status.burn_rates
        );
    }
    let messages = received.lock().unwrap().clone();
    assert_eq!(messages.len(), 3, "{messages:?}");
    for row in ["page-fast", "page-slow", "ticket"] {
        assert_eq!(
            messages
                .iter()
                .filter(|m| m.contains(&format!("#{row})")))
                .count(),
            1,
            "{row}: {messages:?}"
        );
    }
    let bad = handle(&deps, json!({"unexpected": true})).await;
    assert!(matches!(bad, Err(SloError::Invalid(_))));
}

#[tokio::test]
async fn a_resolved_burn_sends_one_resolve() {
    let (stack, received) = stack_with_webhook("slo-resolve").await;
    let service = format!("svc-{}", stack.stack);
    put_buckets(&service, "/flap", |k| if k < 12 { 2.0 } else { 0.0 }).await;
    let slos = json!([{"name": "flap", "service": service, "route": "/flap", "sli": "availability", "objective_percent": 99.9}]);
    let deps = checker(&stack, &slos).await;
    assert_eq!(
        handle(&deps, json!({})).await.unwrap().slos[0].firing,
        vec!["page-fast"]
    );
    // The same SLO judged at 99 %: a 10× budget, so the same errors burn 2×.
    let relaxed = checker(
        &stack,
        &json!([{"name": "flap", "service": service, "route": "/flap", "sli": "availability", "objective_percent": 99.0}]),
    )
    .await;
    assert!(
        handle(&relaxed, json!({})).await.unwrap().slos[0]
            .firing
            .is_empty()
    );
    let messages = received.lock().unwrap().clone();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].starts_with("[FIRING]") && messages[1].starts_with("[RESOLVED]"));
}
