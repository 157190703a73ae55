//! The assistant's memory end to end: api-memory and worker-memory-embed against
//! the local AWS and a fleet simulator whose embeddings mean something.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use fleet_sim::{Fault, FaultMode, SimServer};
use harness::{
    Provisioned, body_json, issue_token_for, json_request, lambda_context, local_aws,
    receive_batch, settle, start_sim, status_and_json, unique_stack, with_bearer,
};
use serde_json::{Value, json};
use sophia_shared::config::Env;

mod degraded;

struct Memory {
    stack: Provisioned,
    sim: SimServer,
    deps: api_memory::handler::Deps,
    env: HashMap<String, String>,
}

fn env_for(
    stack: &Provisioned,
    sim: &SimServer,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env = stack.env_with(&[
        ("FLEET_ENDPOINTS", &format!("primary={}", sim.base_url())),
        ("FLEET_ATTEMPT_TIMEOUT_MS", "500"),
        ("FLEET_MAX_ATTEMPTS", "1"),
        ("BREAKER_COOL_DOWN_MS", "100"),
        ("MEMORY_EMBED_TIMEOUT_MS", "1500"),
        ("RATE_LIMIT_PRINCIPAL_BURST", "100000"),
        ("RATE_LIMIT_IP_BURST", "100000"),
    ]);
    env.remove("FLEET_TOKEN_SECRET");
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

async fn setup(extra: &[(&str, &str)]) -> Memory {
    let stack = local_aws().provision(&unique_stack("memory"), &[]);
    let sim = start_sim().await;
    let env = env_for(&stack, &sim, extra);
    let deps =
        api_memory::handler::Deps::from_env(&Env::new(&env), &local_aws().sdk_config().await)
            .await
            .unwrap();
    Memory {
        stack,
        sim,
        deps,
        env,
    }
}

impl Memory {
    async fn token(&self, tenant: &str, user: &str) -> String {
        issue_token_for(&self.stack, tenant, user, &["memory"]).await
    }

    async fn call(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let response = api_memory::handler::handle(
            &self.deps,
            with_bearer(json_request(method, path, &body, None), token),
        )
        .await;
        status_and_json(&response)
    }

    async fn store(&self, token: &str, body: Value) -> (u16, Value) {
        self.call(token, "POST", "/v1/memory", body).await
    }

    async fn search(&self, token: &str, body: Value) -> Value {
        let (status, found) = self.call(token, "POST", "/v1/memory/search", body).await;
        assert_eq!(status, 200, "{found}");
        found
    }

    /// Every item of the memory table (a scan: what an auditor would do).
    async fn items(&self) -> Vec<HashMap<String, AttributeValue>> {
        aws_sdk_dynamodb::Client::new(&local_aws().sdk_config().await)
            .scan()
            .table_name(self.stack.env("MEMORY_TABLE"))
            .send()
            .await
            .unwrap()
            .items()
            .to_vec()
    }

    /// One run of worker-memory-embed over what the queue holds, as Lambda's
    /// event source would do it. Returns (records, failed records).
    async fn run_worker(&self, retry_now: bool) -> (usize, usize) {
        let sdk = local_aws().sdk_config().await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let queue = self.stack.env("MEMORY_EMBED_QUEUE_URL");
        let worker =
            worker_memory_embed::handler::Deps::from_env(&Env::new(&self.env), &sdk).unwrap();
        let event = receive_batch(&sqs, queue, 10).await;
        let records = event.records.len();
        let response = worker_memory_embed::handler::handle(
            &worker,
            event.clone(),
            &lambda_context(Duration::from_secs(30)),
        )
        .await;
        settle(&sqs, queue, &event, &response, retry_now).await;
        (records, response.batch_item_failures.len())
    }
}

fn ids(found: &Value) -> Vec<String> {
    found["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["memory"]["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_stored_memory_is_recalled_first_among_unrelated_ones_with_its_signals() {
    let m = setup(&[]).await;
    let token = m.token("acme", "key:dana").await;
    for text in [
        "Deploys freeze on Fridays",
        "Dana owns the Q3 migration",
        "The office plants need water on Mondays",
        "Lunch orders go to Sam by 11",
    ] {
        let (status, stored) = m.store(&token, json!({"text": text})).await;
        assert_eq!(status, 201, "{stored}");
        assert_eq!(stored["vector"], "ready");
        assert!(stored["id"].as_str().unwrap().starts_with("mem_"));
    }
    let found = m
        .search(
            &token,
            json!({"query": "Who runs the Q3 migration?", "k": 3}),
        )
        .await;
    assert_eq!(found["degraded"], false);
    assert_eq!(ids(&found)[0], "Dana owns the Q3 migration", "{found}");
    let best = &found["data"][0];
    assert!(
        best["signals"]["vector_similarity"].as_f64().unwrap() > 0.3,
        "{best}"
    );
    assert_eq!(best["signals"]["vector_rank"], 1);
    assert_eq!(best["signals"]["lexical_rank"], 1);
    assert!(best["score"].as_f64().unwrap() > 0.0);
    assert_eq!(found["considered"], 4);
}

#[tokio::test]
async fn filters_apply_before_ranking() {
    let m = setup(&[]).await;
    let token = m.token("acme", "key:filters").await;
    for (text, namespace, tags, metadata) in [
        (
            "Release train leaves Tuesday",
            "ops",
            json!(["release"]),
            json!({"team": "infra"}),
        ),
        (
            "Release notes go to the wiki",
            "docs",
            json!(["release"]),
            json!({"team": "docs"}),
        ),
        (
            "Release freeze during audits",
            "ops",
            json!(["audit"]),
            json!({"team": "infra"}),
        ),
    ] {
        let (status, _) = m
            .store(
                &token,
                json!({"text": text, "namespace": namespace, "tags": tags, "metadata": metadata}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let by = |filter: Value| {
        let mut query = json!({"query": "release"});
        for (k, v) in filter.as_object().unwrap() {
            query[k] = v.clone();
        }
        query
    };
    let found = m.search(&token, by(json!({"namespace": "ops"}))).await;
    assert_eq!(found["considered"], 2);
    let found = m
        .search(&token, by(json!({"namespace": "ops", "tags": ["audit"]})))
        .await;
    assert_eq!(ids(&found), ["Release freeze during audits"]);
    let found = m
        .search(&token, by(json!({"metadata": {"team": "docs"}})))
        .await;
    assert_eq!(ids(&found), ["Release notes go to the wiki"]);
    let found = m
        .search(&token, by(json!({"created_after": 4_000_000_000u64})))
        .await;
    assert_eq!(found["considered"], 0);
}

#[tokio::test]
async fn duplicates_update_the_existing_memory_and_keep_its_history() {
    let m = setup(&[]).await;
    let token = m.token("acme", "key:dup").await;
    let (status, first) = m
        .store(
            &token,
            json!({"text": "Dana owns the Q3 migration", "tags": ["owner"]}),
        )
        .await;
    assert_eq!(status, 201);
    let id = first["id"].as_str().unwrap().to_owned();
    // The same text, differently spaced and cased: an exact duplicate.
    let (status, exact) = m
        .store(&token, json!({"text": "  dana OWNS the q3   migration"}))
        .await;
    assert_eq!(status, 200, "{exact}");
    assert_eq!(
        (exact["id"].as_str(), exact["merged"].as_str()),
        (Some(id.as_str()), Some("exact"))
    );
    assert_eq!(exact["tags"], json!(["owner"]), "kept when not given");
    // The same words with other punctuation: a near duplicate (cosine 1 ≥ 0.95).
    let (status, near) = m
        .store(&token, json!({"text": "Dana owns the Q3 migration!"}))
        .await;
    assert_eq!(status, 200, "{near}");
    assert_eq!(
        (near["id"].as_str(), near["merged"].as_str()),
        (Some(id.as_str()), Some("near"))
    );
    let (status, read) = m
        .call(&token, "GET", &format!("/v1/memory/{id}"), Value::Null)
        .await;
    assert_eq!(status, 200);
    assert_eq!(read["text"], "Dana owns the Q3 migration!");
    assert_eq!(read["version"], 3);
    let history: Vec<&str> = read["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        [
            "Dana owns the Q3 migration",
            "  dana OWNS the q3   migration"
        ]
    );
    // One memory, not three.
    let found = m.search(&token, json!({"query": "migration"})).await;
    assert_eq!(found["considered"], 1);
    // Another namespace is another memory.
    let (status, _) = m
        .store(
            &token,
            json!({"text": "Dana owns the Q3 migration", "namespace": "other"}),
        )
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn patch_keeps_the_previous_version_and_delete_removes_everything_of_the_memory() {
    let m = setup(&[]).await;
    let token = m.token("acme", "key:patch").await;
    let (_, stored) = m
        .store(
            &token,
            json!({"text": "Standup is at 9", "metadata": {"room": "A"}}),
        )
        .await;
    let id = stored["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/memory/{id}");
    let (status, patched) = m
        .call(
            &token,
            "PATCH",
            &path,
            json!({"text": "Standup is at 9:30", "metadata": {"room": "B"}}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (
            patched["version"].as_u64(),
            patched["metadata"]["room"].as_str()
        ),
        (Some(2), Some("B"))
    );
    let found = m.search(&token, json!({"query": "standup 9:30"})).await;
    assert_eq!(ids(&found), ["Standup is at 9:30"]);
    let (_, read) = m.call(&token, "GET", &path, Value::Null).await;
    assert_eq!(read["history"][0]["metadata"]["room"], "A");
    for bad in [
        json!({}),
        json!({"text": ""}),
        json!({"bogus": 1}),
        json!({"tags": vec!["t"; 21]}),
    ] {
        let (status, problem) = m.call(&token, "PATCH", &path, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {problem}");
    }
    let (status, _) = m.call(&token, "DELETE", &path, Value::Null).await;
    assert_eq!(status, 204);
    assert_eq!(m.call(&token, "GET", &path, Value::Null).await.0, 404);
    assert_eq!(m.call(&token, "DELETE", &path, Value::Null).await.0, 404);
    let left: Vec<String> = m
        .items()
        .await
        .iter()
        .map(|item| item["sk"].as_s().unwrap().clone())
        .filter(|sk| sk != "meta")
        .collect();
    assert!(
        left.is_empty(),
        "memory, history and index are gone: {left:?}"
    );
}

#[tokio::test]
async fn another_users_memory_is_not_found_by_any_route_and_forget_all_touches_only_its_owner() {
    let m = setup(&[]).await;
    let dana = m.token("acme", "key:dana").await;
    let sam = m.token("acme", "key:sam").await;
    let other_tenant = m.token("globex", "key:dana").await;
    let (_, secret) = m
        .store(&dana, json!({"text": "Dana's salary review is in March"}))
        .await;
    let id = secret["id"].as_str().unwrap().to_owned();
    for token in [&sam, &other_tenant] {
        let path = format!("/v1/memory/{id}");
        assert_eq!(m.call(token, "GET", &path, Value::Null).await.0, 404);
        assert_eq!(
            m.call(token, "PATCH", &path, json!({"text": "mine now"}))
                .await
                .0,
            404
        );
        assert_eq!(m.call(token, "DELETE", &path, Value::Null).await.0, 404);
        let found = m
            .search(token, json!({"query": "salary review March"}))
            .await;
        assert_eq!(found["considered"], 0);
    }
    m.store(&sam, json!({"text": "Sam prefers async standups"}))
        .await;
    m.store(&other_tenant, json!({"text": "Globex Dana likes tea"}))
        .await;
    m.call(
        &dana,
        "PATCH",
        &format!("/v1/memory/{id}"),
        json!({"text": "Dana's salary review moved to April"}),
    )
    .await;

    let (status, forgotten) = m.call(&dana, "DELETE", "/v1/memory", Value::Null).await;
    assert_eq!(status, 200, "{forgotten}");
    assert_eq!(forgotten["forgotten"], 1);
    let items = m.items().await;
    let partitions: Vec<&str> = items
        .iter()
        .map(|i| i["pk"].as_s().unwrap().as_str())
        .collect();
    assert!(
        !partitions.contains(&"mem#acme#key:dana"),
        "nothing of Dana's is left (memory, vector, history, index, meta): {partitions:?}"
    );
    assert!(partitions.contains(&"mem#acme#key:sam"));
    assert!(partitions.contains(&"mem#globex#key:dana"));
    assert_eq!(
        m.search(&dana, json!({"query": "salary"})).await["considered"],
        0
    );
    // Audited, without the content.
    let audit = aws_sdk_dynamodb::Client::new(&local_aws().sdk_config().await)
        .query()
        .table_name(m.stack.env("AUDIT_TABLE"))
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S("audit#acme".into()))
        .send()
        .await
        .unwrap();
    let entry = audit
        .items()
        .iter()
        .find(|i| {
            i.get("action")
                .and_then(|a| a.as_s().ok())
                .map(String::as_str)
                == Some("memory.forgotten")
        })
        .expect("a memory.forgotten audit entry");
    assert!(
        !format!("{entry:?}").contains("salary"),
        "no content in the audit log"
    );
}

#[tokio::test]
async fn expiry_hides_a_memory_at_once() {
    let m = setup(&[]).await;
    let token = m.token("acme", "key:expiry").await;
    let soon = sophia_shared::clock::now_secs() + 2;
    let (status, memory) = m
        .store(
            &token,
            json!({"text": "The demo room is booked today", "expires_at": soon}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        m.search(&token, json!({"query": "demo room"})).await["considered"],
        1
    );
    // Wait past the expiry we set (the TTL deletion comes later, if ever, locally).
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    assert_eq!(
        m.search(&token, json!({"query": "demo room"})).await["considered"],
        0
    );
    let id = memory["id"].as_str().unwrap();
    assert_eq!(
        m.call(&token, "GET", &format!("/v1/memory/{id}"), Value::Null)
            .await
            .0,
        404
    );
    // The same text can be stored again: the expired one makes room.
    let (status, _) = m
        .store(&token, json!({"text": "The demo room is booked today"}))
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn bad_input_and_limits_are_4xx_problems_naming_the_limit() {
    let m = setup(&[("MEMORY_MAX_PER_USER", "2")]).await;
    let token = m.token("acme", "key:limits").await;
    for (body, status, words) in [
        (json!({"text": ""}), 400, "text"),
        (
            json!({"text": "x".repeat(8001)}),
            400,
            "MEMORY_MAX_TEXT_CHARS",
        ),
        (
            json!({"text": "x", "tags": vec!["t"; 21]}),
            400,
            "MEMORY_MAX_TAGS",
        ),
        (
            json!({"text": "x", "namespace": "Not OK"}),
            400,
            "namespace",
        ),
        (
            json!({"text": "x", "metadata": {"a": "x".repeat(5000)}}),
            400,
            "MEMORY_MAX_METADATA_BYTES",
        ),
        (json!({"text": "x", "expires_at": 1}), 400, "expires_at"),
        (json!({"text": 5}), 400, "invalid"),
        (json!({"text": "x", "user": "someone-else"}), 400, "user"),
    ] {
        let (got, problem) = m.store(&token, body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(words),
            "{problem}"
        );
    }
    for query in [
        json!({"query": "x", "k": 0}),
        json!({"query": "x", "k": 51}),
        json!({"query": ""}),
    ] {
        let (got, _) = m
            .call(&token, "POST", "/v1/memory/search", query.clone())
            .await;
        assert_eq!(got, 400, "{query}");
    }
    assert_eq!(
        m.call(&token, "GET", "/v1/memory/not-an-id", Value::Null)
            .await
            .0,
        404
    );
    assert_eq!(
        m.call(&token, "GET", "/v1/memory/export?cursor=zzz", Value::Null)
            .await
            .0,
        400
    );
    m.store(&token, json!({"text": "one"})).await;
    m.store(&token, json!({"text": "two"})).await;
    let (status, problem) = m.store(&token, json!({"text": "three"})).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("MEMORY_MAX_PER_USER")
    );
    // A token without the memory scope is refused.
    let chat_only = harness::issue_token(&m.stack, "acme", &["chat"]).await;
    assert_eq!(m.store(&chat_only, json!({"text": "x"})).await.0, 403);
}

#[tokio::test]
async fn idempotency_keys_replay_and_export_pages_through_everything() {
    let m = setup(&[]).await;
    let token = m.token("acme", "key:export").await;
    let send = |key: &'static str, text: &'static str| {
        let mut request = with_bearer(
            json_request("POST", "/v1/memory", &json!({"text": text}), None),
            &token,
        );
        request
            .headers_mut()
            .insert("idempotency-key", key.parse().unwrap());
        api_memory::handler::handle(&m.deps, request)
    };
    let first = send("k-1", "Badge office closes at 5").await;
    assert_eq!(first.status(), 201);
    let again = send("k-1", "Badge office closes at 5").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(body_json(&again)["id"], body_json(&first)["id"]);
    assert_eq!(send("k-1", "Another text").await.status(), 422);
    for i in 0..60 {
        let (status, stored) = m
            .store(
                &token,
                json!({"text": format!("fact number {i} of the export")}),
            )
            .await;
        assert_eq!(status, 201, "{i}: {stored}");
    }
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/memory/export?cursor={c}"),
            None => "/v1/memory/export".to_owned(),
        };
        let (status, page) = m.call(&token, "GET", &path, Value::Null).await;
        assert_eq!(status, 200, "{page}");
        seen += page["data"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, 61);
}

/// The files `make invoke FN=api-memory EVENT=…` and `FN=worker-memory-embed` send.
#[tokio::test]
async fn sample_events_get_their_documented_answers() {
    let m = setup(&[]).await;
    let token = m.token("dev", "key:0000000000000000").await;
    for (file, status) in [
        ("store.json", 201),
        ("store.json", 201),
        ("search.json", 200),
        ("store-too-long.json", 400),
        ("get-unknown.json", 404),
        ("export.json", 200),
    ] {
        let response = api_memory::handler::handle(
            &m.deps,
            with_bearer(harness::http_event("api-memory", file), &token),
        )
        .await;
        assert_eq!(response.status(), status, "{file}: {:?}", response.body());
        if file == "search.json" {
            let found = body_json(&response);
            assert_eq!(
                found["data"][0]["memory"]["text"],
                "Dana owns the Q3 migration"
            );
        }
    }
    let text = std::fs::read_to_string(
        harness::workspace_root().join("events/worker-memory-embed/batch.json"),
    )
    .unwrap();
    let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_str(&text).unwrap();
    let worker = worker_memory_embed::handler::Deps::from_env(
        &Env::new(&m.env),
        &local_aws().sdk_config().await,
    )
    .unwrap();
    let response = worker_memory_embed::handler::handle(
        &worker,
        event.clone(),
        &lambda_context(Duration::from_secs(30)),
    )
    .await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, [event.records[1].message_id.as_deref().unwrap()]);
}
