//! api-dashboard against the local AWS: every section filled by the real
//! writers (billing's usage rows, job-slo-check's statuses and alerts, the
//! probe's shared health, API keys' tenant registry, a dead-lettered message),
//! the platform and tenant views, and a section that fails while the others answer.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use harness::{Provisioned, body_json, issue_token, local_aws, unique_stack, with_bearer};
use serde_json::{Value, json};
use sophia_shared::auth::store::AuthStore;
use sophia_shared::config::Env;
use sophia_shared::fleet::health::{EndpointStatus, SharedHealth};
use sophia_shared::inference::budget::Budget;
use sophia_shared::inference::usage::{Usage, UsageRecorder};
use sophia_shared::jobs::store::JobStore;
use sophia_shared::jobs::{Claim, FailureKind, NewJob};

fn dashboard_env(stack: &Provisioned, overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = stack.report["functions"]["api-dashboard"]
        .as_object()
        .expect("api-dashboard is in the template")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    for (key, value) in overrides {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    env
}

async fn get(deps: &api_dashboard::handler::Deps, token: Option<&str>) -> (u16, Value) {
    let mut request = harness::http_event("api-dashboard", "document.json");
    if let Some(token) = token {
        request = with_bearer(request, token);
    }
    let response = api_dashboard::handler::handle(deps, request).await;
    (response.status().as_u16(), body_json(&response))
}

/// Every EMF document this test process writes.
static DOCUMENTS: std::sync::Mutex<Vec<Value>> = std::sync::Mutex::new(Vec::new());

/// The SLO this test evaluates: api-health's /ready of a service name of its
/// own, failing while the fleet is unreachable.
async fn failing_slo(stack: &Provisioned) -> Value {
    let service: &'static str = Box::leak(format!("api-health-{}", stack.stack).into_boxed_str());
    let sdk = local_aws().sdk_config().await;
    let env = stack.env_with(&[
        (
            "FLEET_ENDPOINTS",
            &format!("primary={}", harness::dead_endpoint()),
        ),
        ("READY_CHECK_TIMEOUT_MS", "200"),
    ]);
    sophia_shared::observability::set_emf_sink(|document| {
        DOCUMENTS.lock().unwrap().push(document.clone());
    });
    let mut config = api_health::handler::HealthConfig::from_env(&Env::new(&env)).unwrap();
    config.http.service = service;
    let health = api_health::handler::Deps::new(config, &sdk).unwrap();
    for _ in 0..10 {
        let response =
            api_health::handler::handle(&health, harness::http_event("api-health", "ready.json"))
                .await;
        assert_eq!(response.status(), 503);
    }
    let mine: Vec<Value> = DOCUMENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d["Service"] == service)
        .cloned()
        .collect();
    harness::ship_emf(&aws_sdk_cloudwatch::Client::new(&sdk), &mine).await;
    json!([
        {"name": "ready-availability", "service": service, "route": "/ready", "sli": "availability", "objective_percent": 99.9},
        {"name": "health-latency", "service": service, "route": "/health", "sli": "latency", "objective_percent": 95}
    ])
}

#[tokio::test]
async fn every_section_shows_what_the_writers_stored() {
    let stack = local_aws().provision(&unique_stack("dash"), &[]);
    let sdk = local_aws().sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let _webhook = harness::alert_webhook(&stack).await;

    // Tenants registered by their API keys; usage billed to two of them.
    let auth = AuthStore::new(dynamodb.clone(), stack.env("AUTH_TABLE").to_owned());
    for tenant in ["dash-a", "dash-b", "dash-c"] {
        auth.create_api_key(tenant, &["chat".into()], "test")
            .await
            .unwrap();
    }
    let usage = UsageRecorder::new(dynamodb.clone(), stack.env("USAGE_TABLE").to_owned());
    let tokens = Usage {
        prompt_tokens: 100,
        completion_tokens: 20,
    };
    usage
        .record("dash-a", "sophia-small", &tokens, 16.0)
        .await
        .unwrap();
    usage
        .record("dash-a", "sophia-large", &tokens, 144.0)
        .await
        .unwrap();
    usage
        .record("dash-b", "sophia-small", &tokens, 16.0)
        .await
        .unwrap();

    // Three jobs of dash-a: two pending, one failed for good.
    let job_store = JobStore::from_env(&Env::new(&stack.env), &sdk).unwrap();
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        let new = NewJob {
            tenant: "dash-a",
            model: "sophia-small",
            request: text,
            idempotency_key: None,
        };
        ids.push(job_store.submit(new).await.unwrap().job.id);
    }
    let Claim::Claimed { attempt, .. } = job_store.claim(&ids[2], "test", u64::MAX).await.unwrap()
    else {
        panic!("a new job is claimable");
    };
    assert!(
        job_store
            .fail(&ids[2], attempt, FailureKind::Rejected, "refused")
            .await
            .unwrap()
    );

    // The probe's record of one endpoint.
    let health = SharedHealth::new(
        dynamodb.clone(),
        stack.env("STATE_TABLE").to_owned(),
        std::time::Duration::ZERO,
    );
    health
        .write(&SharedHealth::record_now(
            "primary",
            EndpointStatus::Down,
            None,
            3,
        ))
        .await
        .unwrap();

    // job-slo-check pages on the failing SLO (status stored, alerts sent).
    let slos = failing_slo(&stack).await;
    let slo_env = stack.env_with(&[("SLOS", &slos.to_string())]);
    let checker = job_slo_check::handler::Deps::from_env(&Env::new(&slo_env), &sdk).unwrap();
    job_slo_check::handler::handle(&checker, json!({"run": "dash-1"}))
        .await
        .unwrap();

    // One message dead-lettered from the jobs queue.
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queues: Value =
        serde_json::from_str(&dashboard_env(&stack, &[])["DASHBOARD_QUEUES"]).unwrap();
    let dlq_url = queues[0]["dead_letter_url"].as_str().unwrap();
    assert_eq!(queues[0]["name"], "jobs");
    sqs.send_message()
        .queue_url(dlq_url)
        .message_body("{}")
        .send()
        .await
        .unwrap();

    let env = dashboard_env(&stack, &[("SLOS", &slos.to_string())]);
    let deps = api_dashboard::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    // dash-a's budget: $0.001 a month, 16 % spent (160 micro-USD billed above).
    let budget = Budget {
        monthly_usd: 0.001,
        daily_usd: None,
        alert_thresholds_percent: vec![10, 50],
        hard_limit: true,
    };
    deps.sources
        .budgets
        .set("dash-a", Some(&budget), sophia_shared::clock::now_secs())
        .await
        .unwrap();

    // The platform view: every section.
    let token = issue_token(&stack, "dash-a", &["admin", "platform"]).await;
    let (status, body) = get(&deps, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let sections = &body["sections"];
    for name in [
        "slos", "fleet", "queues", "usage", "budgets", "jobs", "drift", "secrets", "alerts",
    ] {
        assert!(
            sections[name]["error"].is_null(),
            "{name}: {}",
            sections[name]
        );
    }
    let slo_rows = sections["slos"]["data"].as_array().unwrap();
    assert_eq!(
        slo_rows[0]["name"], "ready-availability",
        "least budget first"
    );
    assert!(slo_rows[0]["budget_remaining"].as_f64().unwrap() < 0.0);
    assert_eq!(slo_rows[0]["time_to_exhaustion_hours"], json!(0.0));
    assert_eq!(
        slo_rows[0]["firing"],
        json!(["page-fast", "page-slow", "ticket"])
    );
    assert!(slo_rows[0]["burn_rates"]["5m"].as_f64().unwrap() > 14.4);
    assert!(sections["slos"]["stale_seconds"].as_u64().unwrap() < 600);
    // The second SLO was evaluated too (no traffic: nothing burnt).
    assert_eq!(slo_rows[1]["budget_remaining"], json!(1.0));

    let fleet = sections["fleet"]["data"].as_array().unwrap();
    let primary = fleet.iter().find(|e| e["endpoint"] == "primary").unwrap();
    assert_eq!(primary["status"], "down");
    assert_eq!(primary["streak"], 3);

    let queues = sections["queues"]["data"]["queues"].as_array().unwrap();
    let jobs = queues.iter().find(|q| q["name"] == "jobs").unwrap();
    assert_eq!(jobs["dead_letter_depth"], 1, "{jobs}");
    assert_eq!(jobs["depth"], 3, "the three jobs' messages");
    assert_eq!(queues.len(), 7, "every queue of the template");

    let usage = &sections["usage"]["data"];
    assert_eq!(usage["days_are"], "UTC");
    let mine: Vec<&Value> = usage["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["tenant"].as_str().unwrap().starts_with("dash-"))
        .collect();
    assert_eq!(mine.len(), 3, "every registered tenant, billed or not");
    let a = mine.iter().find(|t| t["tenant"] == "dash-a").unwrap();
    assert_eq!(a["today"]["requests"], json!(2.0));
    assert_eq!(a["today"]["by_model"].as_array().unwrap().len(), 2);
    assert_eq!(a["days"].as_array().unwrap().len(), 30);
    assert_eq!(usage["top_tenants"][0]["tenant"], "dash-a");
    assert_eq!(usage["top_models"][0]["model"], "sophia-large");

    let budgets = sections["budgets"]["data"]["budgets"].as_array().unwrap();
    let a = budgets.iter().find(|b| b["tenant"] == "dash-a").unwrap();
    let month = &a["periods"][0];
    assert_eq!(month["period"], "monthly");
    assert_eq!(month["spent_usd"], json!(0.00016));
    assert_eq!(month["percent"], json!(16.0));
    assert_eq!(month["crossed_percent"], json!([10]));
    assert!(a["blocked_until"].is_null());

    let job_rows = sections["jobs"]["data"]["tenants"].as_array().unwrap();
    let a = job_rows.iter().find(|t| t["tenant"] == "dash-a").unwrap();
    assert_eq!(
        (&a["pending"], &a["running"], &a["done"], &a["failed"]),
        (&json!(2), &json!(0), &json!(0), &json!(1)),
        "{a}"
    );
    let b = job_rows.iter().find(|t| t["tenant"] == "dash-b").unwrap();
    assert_eq!(b["pending"], json!(0));
    assert_eq!(job_rows[0]["tenant"], "dash-a", "busiest first");

    assert_eq!(sections["drift"]["data"]["never_run"], true);
    // The stack's secrets carry their age policy (template tags); all fresh.
    let secrets = sections["secrets"]["data"]["secrets"].as_array().unwrap();
    let keys = secrets
        .iter()
        .find(|s| {
            stack
                .env("SIGNING_KEYS_SECRET")
                .contains(s["secret"].as_str().unwrap())
        })
        .unwrap_or_else(|| panic!("the signing keys are listed: {secrets:?}"));
    assert_eq!(keys["max_age_days"], 30);
    assert_eq!(keys["overdue"], false);
    let alerts = &sections["alerts"]["data"];
    let firing: Vec<&str> = alerts["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        firing.contains(&"slo#ready-availability#page-fast"),
        "{alerts}"
    );
    assert_eq!(alerts["recent"][0]["source"], "job-slo-check");

    // A tenant's admin: its own usage, budget and jobs only, no operations sections.
    let token = issue_token(&stack, "dash-b", &["admin"]).await;
    let (status, body) = get(&deps, Some(&token)).await;
    assert_eq!(status, 200);
    let sections = body["sections"].as_object().unwrap();
    assert_eq!(
        sections.keys().collect::<Vec<_>>(),
        vec!["budgets", "jobs", "usage"]
    );
    assert_eq!(
        sections["budgets"]["data"]["budgets"],
        json!([]),
        "dash-b has no budget"
    );
    assert_eq!(sections["jobs"]["data"]["tenants"][0]["tenant"], "dash-b");
    let tenants = sections["usage"]["data"]["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0]["tenant"], "dash-b");
    assert_eq!(body["view"], json!({"tenant": "dash-b"}));

    // Without the admin scope: 403; without a token: 401.
    let token = issue_token(&stack, "dash-b", &["chat"]).await;
    assert_eq!(get(&deps, Some(&token)).await.0, 403);
    assert_eq!(get(&deps, None).await.0, 401);
}

/// A source that cannot be read (the usage table is missing) is that
/// section's error; the others still answer.
#[tokio::test]
async fn a_broken_section_does_not_break_the_others() {
    let stack = local_aws().provision(&unique_stack("dash-broken"), &[]);
    let sdk = local_aws().sdk_config().await;
    let env = dashboard_env(&stack, &[("USAGE_TABLE", "no-such-table")]);
    let deps = api_dashboard::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    AuthStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        stack.env("AUTH_TABLE").to_owned(),
    )
    .create_api_key("broken-a", &["chat".into()], "test")
    .await
    .unwrap();
    let token = issue_token(&stack, "broken-a", &["admin", "platform"]).await;
    let (status, body) = get(&deps, Some(&token)).await;
    assert_eq!(status, 200);
    let sections = &body["sections"];
    assert!(
        sections["usage"]["error"].is_string(),
        "{}",
        sections["usage"]
    );
    for name in ["slos", "fleet", "queues", "drift", "secrets", "alerts"] {
        assert!(
            sections[name]["error"].is_null(),
            "{name}: {}",
            sections[name]
        );
    }
    // Nothing checked yet: every SLO says so.
    let slos = sections["slos"]["data"].as_array().unwrap();
    assert!(!slos.is_empty());
    assert!(slos.iter().all(|s| s["never_checked"] == true));
}
