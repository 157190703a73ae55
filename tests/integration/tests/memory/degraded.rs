//! The fleet down, poison messages, the sweeper's repair and the per-instance cache.

use super::*;

#[tokio::test]
async fn with_the_fleet_down_stores_are_accepted_recalls_degrade_and_the_worker_fills_every_vector()
{
    let m = setup(&[]).await;
    let token = m.token("acme", "key:outage").await;
    m.sim
        .sim
        .set_fault(Fault {
            mode: FaultMode::Error,
            status: Some(503),
            ..Fault::default()
        })
        .await;
    let mut stored = Vec::new();
    for text in [
        "Dana owns the Q3 migration",
        "Deploys freeze on Fridays",
        "Sam runs payroll",
    ] {
        let (status, memory) = m.store(&token, json!({"text": text})).await;
        assert_eq!(status, 201, "{memory}");
        assert_eq!(memory["vector"], "pending");
        stored.push(memory["id"].as_str().unwrap().to_owned());
    }
    let found = m
        .search(&token, json!({"query": "Who owns the Q3 migration?"}))
        .await;
    assert_eq!(found["degraded"], true);
    assert_eq!(
        ids(&found)[0],
        "Dana owns the Q3 migration",
        "lexical ranking still answers: {found}"
    );
    assert!(found["data"][0]["signals"].get("vector_rank").is_none());
    // While the fleet is down the worker retries the records.
    let (records, failed) = m.run_worker(true).await;
    assert_eq!((records, failed), (3, 3));
    m.sim.sim.set_fault(Fault::default()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The messages come back (their visibility "passed"): receive them again.
    let sdk = local_aws().sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = m.stack.env("MEMORY_EMBED_QUEUE_URL").to_owned();
    let mut filled = 0;
    for _ in 0..5 {
        let pending = receive_batch(&sqs, &queue, 10).await;
        if pending.records.is_empty() && filled > 0 {
            break;
        }
        let worker = worker_memory_embed::handler::Deps::from_env(&Env::new(&m.env), &sdk).unwrap();
        let response = worker_memory_embed::handler::handle(
            &worker,
            pending.clone(),
            &lambda_context(Duration::from_secs(30)),
        )
        .await;
        filled += pending.records.len() - response.batch_item_failures.len();
        settle(&sqs, &queue, &pending, &response, true).await;
    }
    for id in &stored {
        let (_, memory) = m
            .call(&token, "GET", &format!("/v1/memory/{id}"), Value::Null)
            .await;
        assert_eq!(memory["vector"], "ready", "{memory}");
    }
    let found = m
        .search(&token, json!({"query": "Who owns the Q3 migration?"}))
        .await;
    assert_eq!(found["degraded"], false);
    assert_eq!(found["data"][0]["signals"]["vector_rank"], 1);
}

#[tokio::test]
async fn a_poison_message_is_retried_toward_the_dlq_without_blocking_its_batch() {
    let m = setup(&[]).await;
    let token = m.token("acme", "key:poison").await;
    m.sim
        .sim
        .set_fault(Fault {
            mode: FaultMode::Error,
            status: Some(503),
            count: Some(1),
            ..Fault::default()
        })
        .await;
    let (status, memory) = m
        .store(&token, json!({"text": "Quarterly review on the 12th"}))
        .await;
    assert_eq!((status, memory["vector"].as_str()), (201, Some("pending")));
    let sqs = aws_sdk_sqs::Client::new(&local_aws().sdk_config().await);
    sqs.send_message()
        .queue_url(m.stack.env("MEMORY_EMBED_QUEUE_URL"))
        .message_body("{\"not\": \"a memory message\"")
        .send()
        .await
        .unwrap();
    let (records, failed) = m.run_worker(false).await;
    assert_eq!((records, failed), (2, 1), "only the poison record fails");
    let id = memory["id"].as_str().unwrap();
    let (_, read) = m
        .call(&token, "GET", &format!("/v1/memory/{id}"), Value::Null)
        .await;
    assert_eq!(read["vector"], "ready");
}

#[tokio::test]
async fn a_warm_cache_is_used_and_a_write_elsewhere_is_seen_by_the_next_recall() {
    let m = setup(&[]).await;
    let owner = sophia_shared::memory::model::Owner {
        tenant: "acme".into(),
        user: "key:cache".into(),
    };
    let token = m.token("acme", "key:cache").await;
    m.store(&token, json!({"text": "Dana owns the Q3 migration"}))
        .await;
    let ctx = sophia_shared::observability::RequestContext {
        request_id: "r".into(),
        correlation_id: "c".into(),
        trace: sophia_shared::observability::TraceContext::from_headers(&Default::default(), None),
        deadline: std::time::Instant::now() + Duration::from_secs(10),
    };
    let query: sophia_shared::memory::model::RecallQuery =
        serde_json::from_value(json!({"query": "migration owner"})).unwrap();
    let first = m.deps.memory.recall(&owner, &query, &ctx).await.unwrap();
    let second = m.deps.memory.recall(&owner, &query, &ctx).await.unwrap();
    assert!(second.cached, "the second recall reads only the version");
    assert_eq!(first.results.len(), second.results.len());
    // Another instance (its own deps, its own cache) writes.
    let other =
        api_memory::handler::Deps::from_env(&Env::new(&m.env), &local_aws().sdk_config().await)
            .await
            .unwrap();
    let response = api_memory::handler::handle(
        &other,
        with_bearer(
            json_request(
                "POST",
                "/v1/memory",
                &json!({"text": "The migration starts in July"}),
                None,
            ),
            &token,
        ),
    )
    .await;
    assert_eq!(response.status(), 201);
    let third = m.deps.memory.recall(&owner, &query, &ctx).await.unwrap();
    assert!(!third.cached);
    assert_eq!(third.considered, 2, "the other instance's write is seen");
}

#[tokio::test]
async fn a_vector_whose_message_was_never_sent_is_requested_again_by_the_sweeper() {
    // The memory function cannot reach its queue (a wrong URL): the memory is
    // stored anyway, with its outbox marker.
    let m = setup(&[
        (
            "MEMORY_EMBED_QUEUE_URL",
            "http://127.0.0.1:9/123456789012/no-such-queue",
        ),
        ("AWS_MAX_ATTEMPTS", "1"),
    ])
    .await;
    let token = m.token("acme", "key:stranded").await;
    m.sim
        .sim
        .set_fault(Fault {
            mode: FaultMode::Error,
            status: Some(503),
            ..Fault::default()
        })
        .await;
    let (status, memory) = m
        .store(&token, json!({"text": "The VPN certificate renews in May"}))
        .await;
    assert_eq!(
        (status, memory["vector"].as_str()),
        (201, Some("pending")),
        "{memory}"
    );
    let id = memory["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let sdk = local_aws().sdk_config().await;
    let sweep_env = m.stack.env_with(&[("SWEEP_STRANDED_AFTER_SECS", "0")]);
    let sweeper = job_queue_sweep::handler::Deps::from_env(&Env::new(&sweep_env), &sdk).unwrap();
    let report = job_queue_sweep::handler::handle(&sweeper, json!({"run": "test"}))
        .await
        .unwrap();
    assert_eq!(report.resent_vectors, std::slice::from_ref(&id));
    let again = job_queue_sweep::handler::handle(&sweeper, json!({"run": "test"}))
        .await
        .unwrap();
    assert!(again.resent_vectors.is_empty(), "sent once, marker cleared");

    m.sim.sim.set_fault(Fault::default()).await;
    let (records, failed) = m.run_worker(false).await;
    assert_eq!((records, failed), (1, 0));
    let (_, read) = m
        .call(&token, "GET", &format!("/v1/memory/{id}"), Value::Null)
        .await;
    assert_eq!(read["vector"], "ready");
}
