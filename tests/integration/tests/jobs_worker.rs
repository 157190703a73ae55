//! Asynchronous jobs end to end, the worker's side: each job runs once in
//! effect and is billed once, through duplicate deliveries, racing and killed
//! workers, poison records, long jobs and results that cannot be stored. The
//! tests play Lambda's SQS event source themselves (`harness::jobs`).

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_sim::Behaviour;
use harness::jobs::{completion, env_for, job_id, setup};
use harness::{body_json, lambda_context, local_aws, receive_batch, settle};
use serde_json::json;
use sophia_shared::config::Env;

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
        // The simulator's 7 s come before the first chunk, as a long prefill would.
        ("FLEET_TTFT_TIMEOUT_MS", "10000"),
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
