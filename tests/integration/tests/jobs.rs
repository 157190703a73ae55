//! Asynchronous jobs end to end, the API side: api-jobs (idempotency, tenant
//! isolation), chat as a job, the sweeper and the admin dead-letter routes,
//! against the local AWS and a fleet simulator. The worker's side is in
//! `jobs_worker.rs`; both use `harness::jobs`.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use fleet_sim::{Fault, FaultMode};
use harness::jobs::{completion, env_for, job_id, setup};
use harness::{
    body_json, json_request, local_aws, receive_batch, settle, start_sim, unique_stack, with_bearer,
};
use serde_json::{Value, json};
use sophia_shared::config::Env;

#[tokio::test]
async fn a_poison_job_is_dead_lettered_failed_with_a_reason_and_completes_after_redrive() {
    let setup = setup(&[]).await;
    let sdk = local_aws().sdk_config().await;
    setup
        .sim
        .sim
        .set_fault(Fault {
            mode: FaultMode::Error,
            status: Some(500),
            ..Fault::default()
        })
        .await;
    let poisoned = job_id(
        &setup
            .submit(&setup.token_a, &completion("poison"), None)
            .await,
    );
    // A message that is not a job at all.
    setup
        .sqs
        .send_message()
        .queue_url(setup.queue())
        .message_body("{not json")
        .send()
        .await
        .unwrap();
    // Deliveries until SQS dead-letters both (maxReceiveCount 5 in infra).
    for _ in 0..10 {
        if setup.poll_once(true).await == 0 {
            break;
        }
    }
    let job = setup.status(&poisoned).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "dead_lettered");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("5 deliveries"), "{message}");

    // A job whose every run died without an answer: only the sweeper can fail it.
    let orphan = job_id(
        &setup
            .submit(&setup.token_b, &completion("orphan"), None)
            .await,
    );
    let orphan_message = receive_batch(&setup.sqs, setup.queue(), 1).await;
    setup
        .sqs
        .send_message()
        .queue_url(setup.stack.env("JOBS_DLQ_URL"))
        .message_body(orphan_message.records[0].body.clone().unwrap())
        .send()
        .await
        .unwrap();
    settle(
        &setup.sqs,
        setup.queue(),
        &orphan_message,
        &Default::default(),
        false,
    )
    .await;
    let env = env_for(&setup.stack, &setup.sim, &[]);
    let sweeper = job_queue_sweep::handler::Deps::from_env(&Env::new(&env), &sdk).unwrap();
    let report = job_queue_sweep::handler::handle(&sweeper, json!({"run": "t1"}))
        .await
        .unwrap();
    assert_eq!(report.dead_lettered, vec![orphan.clone()]);
    assert_eq!(report.dead_letter_messages, 3);
    assert_eq!(report.unreadable_messages, 1);
    let again = job_queue_sweep::handler::handle(&sweeper, json!({"run": "t1"}))
        .await
        .unwrap();
    assert!(again.dead_lettered.is_empty(), "idempotent");
    let orphan_job = body_json(&setup.read(&setup.token_b, &orphan).await);
    assert_eq!(orphan_job["error"]["code"], "dead_lettered");

    // The operator lists the dead letters (nothing is lost by looking) ...
    let admin = api_admin::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let platform = harness::issue_token(&setup.stack, "ops", &["admin", "platform"]).await;
    let list = || async {
        let request = with_bearer(
            json_request(
                "GET",
                "/v1/admin/queues/jobs/dead-letters",
                &Value::Null,
                None,
            ),
            &platform,
        );
        body_json(&api_admin::handler::handle(&admin, request).await)
    };
    assert_eq!(list().await["listed"], 3);
    assert_eq!(list().await["listed"], 3, "listing twice loses nothing");
    // ... fixes the cause and redrives.
    setup.sim.sim.set_fault(Fault::default()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let request = with_bearer(
        json_request("POST", "/v1/admin/queues/jobs/redrive", &Value::Null, None),
        &platform,
    );
    let response = api_admin::handler::handle(&admin, request).await;
    assert_eq!(response.status(), 200);
    let report = body_json(&response);
    assert_eq!(report["method"], "receive-send-delete");
    assert_eq!(report["moved"], 3);
    let audit = with_bearer(
        json_request("GET", "/v1/admin/audit", &Value::Null, None),
        &platform,
    );
    let audit = body_json(&api_admin::handler::handle(&admin, audit).await);
    assert!(audit.to_string().contains("queue.redriven"), "{audit}");
    // The garbage message fails again and stays out of the way (not retried now).
    for _ in 0..5 {
        if setup.poll_once(false).await == 0 {
            break;
        }
    }
    for (id, token) in [(&poisoned, &setup.token_a), (&orphan, &setup.token_b)] {
        let job = body_json(&setup.read(token, id).await);
        assert_eq!(job["status"], "done", "{job}");
        assert!(job.get("error").is_none());
    }
    assert_eq!(setup.usage_requests("tenant-a").await, 1);
    assert_eq!(setup.usage_requests("tenant-b").await, 1);
    // A tenant admin without the platform scope cannot touch queues.
    let tenant_admin = harness::issue_token(&setup.stack, "tenant-a", &["admin"]).await;
    let request = with_bearer(
        json_request(
            "GET",
            "/v1/admin/queues/jobs/dead-letters",
            &Value::Null,
            None,
        ),
        &tenant_admin,
    );
    assert_eq!(
        api_admin::handler::handle(&admin, request).await.status(),
        403
    );
}

#[tokio::test]
async fn idempotency_key_replays_the_job_and_refuses_another_body() {
    // Two requests a day: a replay or a refused key must not use one up.
    let setup = setup(&[("TENANT_DEFAULT_REQUESTS_PER_DAY", "2")]).await;
    let first = setup
        .submit(&setup.token_a, &completion("once"), Some("order-42"))
        .await;
    let id = job_id(&first);
    let replay = setup
        .submit(&setup.token_a, &completion("once"), Some("order-42"))
        .await;
    assert_eq!(job_id(&replay), id);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let other = setup
        .submit(
            &setup.token_a,
            &completion("something else"),
            Some("order-42"),
        )
        .await;
    assert_eq!(other.status(), 422);
    assert_eq!(
        body_json(&other)["type"],
        "urn:sophia:problem:idempotency-key-reused"
    );
    // The same key of another tenant is another job.
    let theirs = job_id(
        &setup
            .submit(&setup.token_b, &completion("once"), Some("order-42"))
            .await,
    );
    assert_ne!(theirs, id);
    // One message per job, none for the replay.
    let mut received = 0;
    loop {
        let batch = receive_batch(&setup.sqs, setup.queue(), 10).await;
        if batch.records.is_empty() {
            break;
        }
        received += batch.records.len();
    }
    assert_eq!(received, 2);
    let bad_key = setup
        .submit(&setup.token_a, &completion("x"), Some("has space"))
        .await;
    assert_eq!(bad_key.status(), 400);
    // Only the first submission counted: one more job fits, the next does not.
    job_id(
        &setup
            .submit(&setup.token_a, &completion("second"), None)
            .await,
    );
    let over = setup
        .submit(&setup.token_a, &completion("third"), Some("order-43"))
        .await;
    assert_eq!(over.status(), 429);
    // A replay still answers when the quota is used up.
    let late_replay = setup
        .submit(&setup.token_a, &completion("once"), Some("order-42"))
        .await;
    assert_eq!(job_id(&late_replay), id);
}

#[tokio::test]
async fn a_job_of_one_tenant_is_invisible_to_another() {
    let setup = setup(&[]).await;
    let id = job_id(
        &setup
            .submit(&setup.token_a, &completion("mine"), None)
            .await,
    );
    assert_eq!(setup.read(&setup.token_a, &id).await.status(), 200);
    let theirs = setup.read(&setup.token_b, &id).await;
    let unknown = setup
        .read(&setup.token_b, "job_00000000000000000000000000000000")
        .await;
    assert_eq!(theirs.status(), 404);
    assert_eq!(unknown.status(), 404);
    let (a, b) = (body_json(&theirs), body_json(&unknown));
    assert_eq!(
        a["detail"], b["detail"],
        "indistinguishable from a missing job"
    );
    assert_eq!(setup.read(&setup.token_a, "../etc").await.status(), 404);
    // Without the jobs scope: 403.
    let chat_only = harness::issue_token(&setup.stack, "tenant-a", &["chat"]).await;
    assert_eq!(setup.read(&chat_only, &id).await.status(), 403);
    // Invalid requests are refused before anything is stored.
    let invalid = setup
        .submit(
            &setup.token_a,
            &json!({"model": "nope", "messages": []}),
            None,
        )
        .await;
    assert_eq!(invalid.status(), 400);
}

#[tokio::test]
async fn a_job_whose_message_was_never_sent_is_sent_by_the_sweeper() {
    let stack = local_aws().provision(&unique_stack("jobs"), &[]);
    let sim = start_sim().await;
    let sdk = local_aws().sdk_config().await;
    let queue = stack.env("JOBS_QUEUE_URL").to_owned();
    // The API instance sends to a queue that does not exist: storing works, sending fails.
    let broken = env_for(
        &stack,
        &sim,
        &[("JOBS_QUEUE_URL", &format!("{queue}-missing"))],
    );
    let jobs = api_jobs::handler::Deps::from_env(&Env::new(&broken), &sdk)
        .await
        .unwrap();
    let token = harness::issue_token(&stack, "tenant-a", &["jobs"]).await;
    let response = api_jobs::handler::handle(
        &jobs,
        with_bearer(
            json_request("POST", "/v1/jobs", &completion("stranded"), None),
            &token,
        ),
    )
    .await;
    let id = job_id(&response);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    assert!(receive_batch(&sqs, &queue, 10).await.records.is_empty());
    let env = env_for(&stack, &sim, &[("SWEEP_STRANDED_AFTER_SECS", "0")]);
    let sweeper = job_queue_sweep::handler::Deps::from_env(&Env::new(&env), &sdk).unwrap();
    let report = job_queue_sweep::handler::handle(&sweeper, json!({}))
        .await
        .unwrap();
    assert_eq!(report.resent, vec![id.clone()]);
    let again = job_queue_sweep::handler::handle(&sweeper, json!({}))
        .await
        .unwrap();
    assert!(again.resent.is_empty(), "the marker is cleared once sent");
    let batch = receive_batch(&sqs, &queue, 10).await;
    assert_eq!(batch.records.len(), 1);
    assert!(batch.records[0].body.as_deref().unwrap().contains(&id));
    let bad = job_queue_sweep::handler::handle(&sweeper, json!({"unexpected": 1})).await;
    assert!(matches!(
        bad,
        Err(job_queue_sweep::handler::SweepError::Invalid(_))
    ));
}

/// A chat request with a bearer token and, optionally, a `Prefer` header.
fn chat_request(token: &str, prefer: Option<&str>) -> lambda_http::Request {
    let mut request = with_bearer(
        json_request(
            "POST",
            "/v1/chat/completions",
            &completion("hi"),
            Some(Duration::from_secs(10)),
        ),
        token,
    );
    if let Some(prefer) = prefer {
        request
            .headers_mut()
            .insert("prefer", prefer.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn chat_becomes_a_job_when_asked_or_when_the_fleet_is_down_and_the_caller_opted_in() {
    let stack = local_aws().provision(&unique_stack("jobs"), &[]);
    let sim = start_sim().await;
    let sdk = local_aws().sdk_config().await;
    let mut env = env_for(&stack, &sim, &[]);
    let chat = api_chat::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let token = harness::issue_token(&stack, "tenant-a", &["chat", "jobs"]).await;
    // respond-async: always a job.
    let response = harness::chat_handle(&chat, chat_request(&token, Some("respond-async"))).await;
    assert_eq!(response.headers()["preference-applied"], "respond-async");
    job_id(&response);
    assert_eq!(sim.sim.counters.completions.load(Ordering::SeqCst), 0);

    // The fleet is down: a 503 without the opt-in, a job with it.
    env.insert(
        "FLEET_ENDPOINTS".into(),
        format!("primary={}", harness::dead_endpoint()),
    );
    env.insert("FLEET_ATTEMPT_TIMEOUT_MS".into(), "300".into());
    let down = api_chat::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let plain = harness::chat_handle(&down, chat_request(&token, None)).await;
    assert_eq!(plain.status(), 503);
    let response = harness::chat_handle(&down, chat_request(&token, Some("async-fallback"))).await;
    assert_eq!(response.headers()["preference-applied"], "async-fallback");
    job_id(&response);

    // A token without the jobs scope cannot create jobs through chat either.
    let chat_only = harness::issue_token(&stack, "tenant-a", &["chat"]).await;
    let refused =
        harness::chat_handle(&chat, chat_request(&chat_only, Some("respond-async"))).await;
    assert_eq!(refused.status(), 403);
}
