//! Asynchronous jobs end to end: api-jobs, the worker, the sweeper and the admin
//! dead-letter routes against the local AWS and fleet simulators. The tests play
//! Lambda's SQS event source themselves (receive, invoke, delete what succeeded).

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use fleet_sim::{Behaviour, Fault, FaultMode, SimServer};
use harness::{
    Provisioned, body_json, json_request, lambda_context, local_aws, receive_batch, settle,
    start_sim, unique_stack, with_bearer,
};
use serde_json::{Value, json};
use sophia_shared::config::Env;

fn completion(text: &str) -> Value {
    json!({"model": "sophia-small", "messages": [{"role": "user", "content": text}], "max_tokens": 8})
}

struct Setup {
    stack: Provisioned,
    sim: SimServer,
    jobs: api_jobs::handler::Deps,
    worker: Arc<worker_inference::handler::Deps>,
    sqs: aws_sdk_sqs::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    token_a: String,
    token_b: String,
}

fn env_for(
    stack: &Provisioned,
    sim: &SimServer,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env = stack.env_with(&[
        ("FLEET_ENDPOINTS", &format!("primary={}", sim.base_url())),
        ("FLEET_ATTEMPT_TIMEOUT_MS", "3000"),
        ("FLEET_BACKOFF_BASE_MS", "5"),
        ("FLEET_BACKOFF_CAP_MS", "20"),
        // Generous limits: these tests count executions, not rate limiting.
        ("RATE_LIMIT_PRINCIPAL_PER_MIN", "100000"),
        ("RATE_LIMIT_PRINCIPAL_BURST", "100000"),
        ("RATE_LIMIT_IP_PER_MIN", "100000"),
        ("RATE_LIMIT_IP_BURST", "100000"),
        ("JOB_HEARTBEAT_SECS", "1"),
        // A redrive in these tests follows the fix within a second, not minutes.
        ("BREAKER_COOL_DOWN_MS", "200"),
    ]);
    // The simulators run without auth.
    env.remove("FLEET_TOKEN_SECRET");
    for (key, value) in extra {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    env
}

async fn setup(extra: &[(&str, &str)]) -> Setup {
    let stack = local_aws().provision(&unique_stack("jobs"), &[]);
    let sim = start_sim().await;
    let env = env_for(&stack, &sim, extra);
    let sdk = local_aws().sdk_config().await;
    let jobs = api_jobs::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let worker = worker_inference::handler::Deps::from_env(&Env::new(&env), &sdk).unwrap();
    Setup {
        token_a: harness::issue_token(&stack, "tenant-a", &["chat", "jobs"]).await,
        token_b: harness::issue_token(&stack, "tenant-b", &["chat", "jobs"]).await,
        stack,
        sim,
        jobs,
        worker: Arc::new(worker),
        sqs: aws_sdk_sqs::Client::new(&sdk),
        dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
    }
}

impl Setup {
    fn queue(&self) -> &str {
        self.stack.env("JOBS_QUEUE_URL")
    }

    async fn submit(
        &self,
        token: &str,
        body: &Value,
        key: Option<&str>,
    ) -> lambda_http::Response<lambda_http::Body> {
        let mut request = with_bearer(json_request("POST", "/v1/jobs", body, None), token);
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("idempotency-key", key.parse().unwrap());
        }
        api_jobs::handler::handle(&self.jobs, request).await
    }

    async fn read(&self, token: &str, id: &str) -> lambda_http::Response<lambda_http::Body> {
        let request = with_bearer(
            json_request("GET", &format!("/v1/jobs/{id}"), &Value::Null, None),
            token,
        );
        api_jobs::handler::handle(&self.jobs, request).await
    }

    async fn status(&self, id: &str) -> Value {
        body_json(&self.read(&self.token_a, id).await)
    }

    /// One worker invocation over one received batch; failed records come back at
    /// once when `retry_now`. Returns how many records the batch had.
    async fn poll_once(&self, retry_now: bool) -> usize {
        let event = receive_batch(&self.sqs, self.queue(), 10).await;
        let count = event.records.len();
        if count == 0 {
            return 0;
        }
        let response = worker_inference::handler::handle(
            &self.worker,
            event.clone(),
            &lambda_context(Duration::from_secs(30)),
        )
        .await;
        settle(&self.sqs, self.queue(), &event, &response, retry_now).await;
        count
    }

    fn completions(&self) -> u64 {
        self.sim.sim.counters.completions.load(Ordering::SeqCst)
    }

    async fn usage_requests(&self, tenant: &str) -> u64 {
        let date = sophia_shared::quota::utc_date(sophia_shared::auth::tokens::now_secs());
        let item = self
            .dynamodb
            .get_item()
            .table_name(self.stack.env("USAGE_TABLE"))
            .key("pk", AttributeValue::S(format!("tenant#{tenant}")))
            .key(
                "sk",
                AttributeValue::S(format!("usage#{date}#sophia-small")),
            )
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        item.item()
            .and_then(|i| i.get("requests"))
            .and_then(|v| v.as_n().ok())
            .map_or(0, |n| n.parse().unwrap())
    }
}

fn job_id(response: &lambda_http::Response<lambda_http::Body>) -> String {
    assert_eq!(response.status(), 202, "{:?}", response.body());
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let id = body_json(response)["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_jobs_complete_once_each_and_are_billed_once() {
    let setup = Arc::new(setup(&[]).await);
    // One tenant per job: moto loses concurrent increments of one item inside
    // transactions (DynamoDB does not), so each tenant's counter is billed by one
    // job and "billed once" is checked per job.
    let tenants: Vec<String> = (0..200).map(|i| format!("tenant-{i}")).collect();
    let tokens = futures_util::future::join_all(
        tenants
            .iter()
            .map(|tenant| harness::issue_token(&setup.stack, tenant, &["jobs"])),
    )
    .await;
    let mut ids = Vec::new();
    for chunk in tokens.chunks(20) {
        let submissions = chunk.iter().map(|token| {
            let setup = setup.clone();
            async move { job_id(&setup.submit(token, &completion("job"), None).await) }
        });
        ids.extend(futures_util::future::join_all(submissions).await);
    }
    assert_eq!(ids.len(), 200);
    // Three worker instances drain the queue at the same time.
    let started = Instant::now();
    let workers = (0..3).map(|_| {
        let setup = setup.clone();
        tokio::spawn(async move {
            let mut idle = 0;
            while idle < 3 && started.elapsed() < Duration::from_secs(120) {
                if setup.poll_once(true).await == 0 {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                } else {
                    idle = 0;
                }
            }
        })
    });
    futures_util::future::join_all(workers).await;
    for (id, token) in ids.iter().zip(&tokens) {
        let job = body_json(&setup.read(token, id).await);
        assert_eq!(job["status"], "done", "{job}");
        assert_eq!(job["result"]["object"], "chat.completion");
    }
    assert_eq!(setup.completions(), 200, "each job ran exactly once");
    for tenant in &tenants {
        assert_eq!(
            setup.usage_requests(tenant).await,
            1,
            "{tenant} billed once"
        );
    }
}

#[tokio::test]
async fn a_duplicate_delivery_and_racing_workers_run_the_job_once() {
    // The fleet takes 3 s, so the second worker arrives while the first one runs
    // the job however slowly the local AWS answers its claim.
    let setup = setup(&[("FLEET_ATTEMPT_TIMEOUT_MS", "10000")]).await;
    setup
        .sim
        .sim
        .set_behaviour(Behaviour {
            latency_ms: 3_000,
            ..Behaviour::default()
        })
        .await;
    let id = job_id(
        &setup
            .submit(&setup.token_a, &completion("race"), None)
            .await,
    );
    // The same message twice in the queue (SQS's at-least-once delivery).
    setup
        .sqs
        .send_message()
        .queue_url(setup.queue())
        .message_body(json!({ "job_id": id }).to_string())
        .send()
        .await
        .unwrap();
    let event = receive_batch(&setup.sqs, setup.queue(), 1).await;
    assert_eq!(event.records.len(), 1);
    // Two workers race on the same record.
    let context = lambda_context(Duration::from_secs(30));
    let (first, second) = tokio::join!(
        worker_inference::handler::handle(&setup.worker, event.clone(), &context),
        worker_inference::handler::handle(&setup.worker, event.clone(), &context),
    );
    let failures = first.batch_item_failures.len() + second.batch_item_failures.len();
    assert_eq!(failures, 1, "the loser is told to retry later");
    assert_eq!(setup.status(&id).await["status"], "done");
    // The other copy, and the loser's retry, find the job done.
    for _ in 0..3 {
        let event = receive_batch(&setup.sqs, setup.queue(), 10).await;
        if event.records.is_empty() {
            break;
        }
        let response =
            worker_inference::handler::handle(&setup.worker, event.clone(), &context).await;
        assert!(response.batch_item_failures.is_empty());
        settle(&setup.sqs, setup.queue(), &event, &response, true).await;
    }
    assert_eq!(setup.completions(), 1);
    assert_eq!(setup.usage_requests("tenant-a").await, 1);
}

#[tokio::test]
async fn jobs_of_a_killed_worker_complete_after_redelivery() {
    let setup = setup(&[]).await;
    setup
        .sim
        .sim
        .set_behaviour(Behaviour {
            latency_ms: 5_000,
            ..Behaviour::default()
        })
        .await;
    // One tenant per job (see the 200-job test on moto's counters).
    let tenants = ["kill-0", "kill-1", "kill-2"];
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for tenant in tenants {
        let token = harness::issue_token(&setup.stack, tenant, &["jobs"]).await;
        ids.push(job_id(
            &setup.submit(&token, &completion(tenant), None).await,
        ));
        tokens.push(token);
    }
    let event = receive_batch(&setup.sqs, setup.queue(), 10).await;
    assert_eq!(event.records.len(), 3);
    // An invocation with 4 s left is killed mid-batch (as a timeout would), once
    // it has claimed every job (the fleet holds each for 5 s). Its lease lasts
    // until its deadline + 1 s: 5 s from `started`.
    let started = Instant::now();
    let worker = setup.worker.clone();
    let batch = event.clone();
    let killed = tokio::spawn(async move {
        worker_inference::handler::handle(
            &worker,
            batch,
            &lambda_context(Duration::from_millis(4000)),
        )
        .await
    });
    let claimed_by = started + Duration::from_millis(3500);
    loop {
        let mut running = 0;
        for (id, token) in ids.iter().zip(&tokens) {
            if body_json(&setup.read(token, id).await)["status"] == "running" {
                running += 1;
            }
        }
        if running == ids.len() || Instant::now() > claimed_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    killed.abort();
    for (id, token) in ids.iter().zip(&tokens) {
        assert_eq!(body_json(&setup.read(token, id).await)["status"], "running");
    }
    setup.sim.sim.set_behaviour(Behaviour::default()).await;
    // Its messages were never deleted; make them due now (their visibility timeout
    // "passed"). While the dead run's lease lasts, nobody may take the jobs over.
    settle(&setup.sqs, setup.queue(), &event, &all_failed(&event), true).await;
    let early = receive_batch(&setup.sqs, setup.queue(), 10).await;
    let response = worker_inference::handler::handle(
        &setup.worker,
        early.clone(),
        &lambda_context(Duration::from_secs(30)),
    )
    .await;
    assert!(
        Instant::now() < started + Duration::from_secs(5),
        "the early redelivery must run within the lease for this test to mean anything"
    );
    assert_eq!(
        response.batch_item_failures.len(),
        early.records.len(),
        "lease still held"
    );
    settle(&setup.sqs, setup.queue(), &early, &response, true).await;
    // After the lease, the redelivered messages complete the jobs.
    tokio::time::sleep_until((started + Duration::from_millis(5500)).into()).await;
    let status = |i: usize| {
        let setup = &setup;
        let (token, id) = (tokens[i].clone(), ids[i].clone());
        async move { body_json(&setup.read(&token, &id).await)["status"].clone() }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        setup.poll_once(true).await;
        let mut done = 0;
        for i in 0..ids.len() {
            if status(i).await == "done" {
                done += 1;
            }
        }
        if done == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, tenant) in tenants.iter().enumerate() {
        assert_eq!(status(i).await, "done");
        assert_eq!(setup.usage_requests(tenant).await, 1, "billed once");
    }
}

fn all_failed(
    event: &aws_lambda_events::event::sqs::SqsEvent,
) -> aws_lambda_events::event::sqs::SqsBatchResponse {
    let mut response = aws_lambda_events::event::sqs::SqsBatchResponse::default();
    for record in &event.records {
        let mut failure = aws_lambda_events::event::sqs::BatchItemFailure::default();
        failure.item_identifier = record.message_id.clone().unwrap_or_default();
        response.batch_item_failures.push(failure);
    }
    response
}

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
    let chat = api_chat::handler::Deps::from_env(api_chat::handler::SERVICE, &Env::new(&env), &sdk)
        .await
        .unwrap();
    let token = harness::issue_token(&stack, "tenant-a", &["chat", "jobs"]).await;
    // respond-async: always a job.
    let response =
        api_chat::handler::handle(&chat, chat_request(&token, Some("respond-async"))).await;
    assert_eq!(response.headers()["preference-applied"], "respond-async");
    job_id(&response);
    assert_eq!(sim.sim.counters.completions.load(Ordering::SeqCst), 0);

    // The fleet is down: a 503 without the opt-in, a job with it.
    env.insert(
        "FLEET_ENDPOINTS".into(),
        format!("primary={}", harness::dead_endpoint()),
    );
    env.insert("FLEET_ATTEMPT_TIMEOUT_MS".into(), "300".into());
    let down = api_chat::handler::Deps::from_env(api_chat::handler::SERVICE, &Env::new(&env), &sdk)
        .await
        .unwrap();
    let plain = api_chat::handler::handle(&down, chat_request(&token, None)).await;
    assert_eq!(plain.status(), 503);
    let response =
        api_chat::handler::handle(&down, chat_request(&token, Some("async-fallback"))).await;
    assert_eq!(response.headers()["preference-applied"], "async-fallback");
    job_id(&response);

    // A token without the jobs scope cannot create jobs through chat either.
    let chat_only = harness::issue_token(&stack, "tenant-a", &["chat"]).await;
    let refused =
        api_chat::handler::handle(&chat, chat_request(&chat_only, Some("respond-async"))).await;
    assert_eq!(refused.status(), 403);
}

/// `events/worker-inference/batch.json` (what `cargo lambda invoke` sends): a good
/// record, a poison one and a duplicate of the good one, pointed at a real job.
#[tokio::test]
async fn the_sample_batch_runs_the_job_once_and_fails_only_the_poison_record() {
    let setup = setup(&[]).await;
    let id = job_id(
        &setup
            .submit(&setup.token_a, &completion("sample"), None)
            .await,
    );
    let path = harness::workspace_root().join("events/worker-inference/batch.json");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("job_5f0c4b1a2e3d4c5b6a7980716253a4b5", &id);
    let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_str(&text).unwrap();
    assert_eq!(event.records.len(), 3);
    let response = worker_inference::handler::handle(
        &setup.worker,
        event.clone(),
        &lambda_context(Duration::from_secs(30)),
    )
    .await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    let poison = event.records[1].message_id.as_deref().unwrap();
    // The duplicate of the good record either found the job done, or found it
    // running and is retried later; the poison record is always retried (to the DLQ).
    assert!(failed.contains(&poison), "{failed:?}");
    assert!(failed.len() <= 2, "{failed:?}");
    assert_eq!(setup.completions(), 1, "the job ran once");
    assert_eq!(setup.status(&id).await["status"], "done");
    assert_eq!(setup.usage_requests("tenant-a").await, 1);
}

/// A job that outlives its message's visibility timeout keeps the message hidden
/// (the heartbeat extends it), so no second worker receives it meanwhile.
#[tokio::test]
async fn a_long_job_keeps_its_message_hidden_while_it_runs() {
    let setup = setup(&[
        ("JOB_VISIBILITY_EXTENSION_SECS", "30"),
        ("FLEET_ATTEMPT_TIMEOUT_MS", "10000"),
    ])
    .await;
    setup
        .sim
        .sim
        .set_behaviour(Behaviour {
            latency_ms: 7_000,
            ..Behaviour::default()
        })
        .await;
    let id = job_id(
        &setup
            .submit(&setup.token_a, &completion("long"), None)
            .await,
    );
    // Delivered with a 4 s visibility timeout; the heartbeat runs every second, so
    // the local AWS has 3 s of slack to claim the job and extend the visibility.
    let event = harness::receive_batch_hidden_for(&setup.sqs, setup.queue(), 1, Some(4)).await;
    assert_eq!(event.records.len(), 1);
    let worker = setup.worker.clone();
    let batch = event.clone();
    let run = tokio::spawn(async move {
        worker_inference::handler::handle(&worker, batch, &lambda_context(Duration::from_secs(30)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let meanwhile = receive_batch(&setup.sqs, setup.queue(), 10).await;
    assert!(
        meanwhile.records.is_empty(),
        "the message reappeared while its job ran"
    );
    let response = run.await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(setup.status(&id).await["status"], "done");
}

/// The answer came but could not be stored (here: billing to a table that does
/// not exist): nothing is written or billed, and the job is given back at once
/// rather than left leased, so the next delivery completes it.
#[tokio::test]
async fn a_result_that_cannot_be_stored_gives_the_job_back() {
    let setup = setup(&[]).await;
    let id = job_id(
        &setup
            .submit(&setup.token_a, &completion("unstored"), None)
            .await,
    );
    let env = env_for(
        &setup.stack,
        &setup.sim,
        &[("USAGE_TABLE", "no-such-table")],
    );
    let broken =
        worker_inference::handler::Deps::from_env(&Env::new(&env), &local_aws().sdk_config().await)
            .unwrap();
    let event = receive_batch(&setup.sqs, setup.queue(), 1).await;
    let response = worker_inference::handler::handle(
        &broken,
        event.clone(),
        &lambda_context(Duration::from_secs(60)),
    )
    .await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(
        setup.status(&id).await["status"],
        "pending",
        "given back, not leased"
    );
    settle(&setup.sqs, setup.queue(), &event, &response, true).await;
    setup.poll_once(true).await;
    assert_eq!(setup.status(&id).await["status"], "done");
    assert_eq!(setup.usage_requests("tenant-a").await, 1, "billed once");
}
