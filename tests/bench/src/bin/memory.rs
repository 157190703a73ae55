//! The assistant's memory: recall latency for users with 1 000 and 10 000
//! memories (warm and cold cache, the embedding call excluded), store latency
//! (the embedding call included and excluded), and the storage per memory.
//!
//! AWS is the local moto server provisioned from infra/, so the cold figures
//! carry moto's service time per Query page (DynamoDB's is lower); the fleet is
//! an in-process simulator on loopback. Vectors have 384 dimensions, what
//! common embedding models (e.g. all-MiniLM-L6-v2) produce.

// A bench tool: failing loudly is right.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use harness::{local_aws, start_sim, unique_stack};
use serde_json::json;
use sophia_shared::config::Env;
use sophia_shared::inference::Inference;
use sophia_shared::memory::model::{
    Memory, MemorySettings, NewMemory, Owner, RecallQuery, VectorState,
};
use sophia_shared::memory::service::MemoryService;
use sophia_shared::memory::store::StoredVector;
use sophia_shared::memory::vector::Quantized;
use sophia_shared::observability::{RequestContext, TraceContext};
use sophia_shared::ops::audit::AuditLog;

#[derive(Parser)]
struct Args {
    /// Recalls measured per user size and cache state.
    #[arg(long, default_value_t = 200)]
    recalls: usize,
    /// Cold recalls (each reads the user's whole partition).
    #[arg(long, default_value_t = 20)]
    cold_recalls: usize,
    /// Stores measured.
    #[arg(long, default_value_t = 100)]
    stores: usize,
    #[arg(long, default_value_t = 384)]
    dims: usize,
}

const WORDS: [&str; 48] = [
    "migration",
    "release",
    "budget",
    "roadmap",
    "payroll",
    "vendor",
    "contract",
    "audit",
    "deploy",
    "freeze",
    "backlog",
    "sprint",
    "review",
    "launch",
    "hiring",
    "onboarding",
    "security",
    "database",
    "network",
    "invoice",
    "customer",
    "support",
    "billing",
    "design",
    "research",
    "pricing",
    "legal",
    "office",
    "travel",
    "training",
    "incident",
    "oncall",
    "dashboard",
    "metrics",
    "storage",
    "backup",
    "license",
    "renewal",
    "partner",
    "summit",
    "quarter",
    "forecast",
    "planning",
    "retro",
    "demo",
    "feedback",
    "survey",
    "policy",
];

fn text(i: usize) -> String {
    let pick = |n: usize| WORDS[(i * 7 + n * 13 + i / 48) % WORDS.len()];
    format!(
        "Note {i}: the {} {} owner is person{} for the {} {}",
        pick(0),
        pick(1),
        i % 97,
        pick(2),
        pick(3)
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(label: &str, mut samples: Vec<f64>) {
    samples.sort_by(f64::total_cmp);
    println!(
        "memory: {label:<44} p50 {:>8.2} ms  p95 {:>8.2} ms  p99 {:>8.2} ms  (n={})",
        percentile(&samples, 0.5),
        percentile(&samples, 0.95),
        percentile(&samples, 0.99),
        samples.len()
    );
}

fn ctx() -> RequestContext {
    RequestContext {
        request_id: "bench".into(),
        correlation_id: "bench".into(),
        trace: TraceContext::from_headers(&Default::default(), None),
        deadline: Instant::now() + Duration::from_secs(30),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let stack = local_aws().provision(&unique_stack("bench-memory"), &[]);
    let sim = start_sim().await;
    sim.sim
        .set_behaviour(fleet_sim::Behaviour {
            embedding_dims: args.dims,
            ..Default::default()
        })
        .await;
    let mut env = stack.env_with(&[
        ("FLEET_ENDPOINTS", &format!("primary={}", sim.base_url())),
        ("MEMORY_MAX_PER_USER", "100000"),
    ]);
    env.remove("FLEET_TOKEN_SECRET");
    let sdk = local_aws().sdk_config().await;
    let env = Env::new(&env);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let service = Arc::new(MemoryService::new(
        MemorySettings::from_env(&env).unwrap(),
        dynamodb.clone(),
        aws_sdk_sqs::Client::new(&sdk),
        Arc::new(Inference::from_env("bench", &env, &sdk).unwrap()),
        AuditLog::new(dynamodb, stack.env("AUDIT_TABLE").to_owned()),
    ));
    let model = service.settings.model.clone();

    // Stores first, on a near-empty table: moto's writes slow down as the table
    // grows (DynamoDB's do not). The whole store with its embedding call, and
    // the embedding call alone right after (paired), for the figure without it.
    let owner = Owner {
        tenant: "bench".into(),
        user: "stores".into(),
    };
    let (mut with, mut embed_only) = (Vec::new(), Vec::new());
    for i in 0..args.stores {
        let new = NewMemory {
            text: format!(
                "store bench {} about the {} and {}",
                i,
                WORDS[i % 48],
                WORDS[(i * 5) % 48]
            ),
            metadata: None,
            tags: None,
            namespace: None,
            expires_at: None,
        };
        let started = Instant::now();
        let stored = service.store(&owner, &new, None, &ctx()).await.unwrap();
        with.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(stored.created);
        let started = Instant::now();
        service
            .embed("bench", vec![new.text.clone()], &ctx())
            .await
            .unwrap();
        embed_only.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let without: Vec<f64> = with
        .iter()
        .zip(&embed_only)
        .map(|(w, e)| (w - e).max(0.0))
        .collect();
    report("store, embedding included", with);
    report("store, embedding excluded (paired difference)", without);

    for size in [1_000usize, 10_000] {
        let owner = Owner {
            tenant: "bench".into(),
            user: format!("user-{size}"),
        };
        // Vectors as the fleet makes them, imported in batches (a store each
        // would measure moto for minutes).
        let started = Instant::now();
        let texts: Vec<String> = (0..size).map(text).collect();
        let mut memories = Vec::with_capacity(size);
        for chunk in texts.chunks(256) {
            let vectors = service
                .embed("bench", chunk.to_vec(), &ctx())
                .await
                .unwrap();
            for (text, vector) in chunk.iter().zip(vectors) {
                let now = sophia_shared::clock::now_secs();
                memories.push((
                    Memory {
                        id: format!("mem_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
                        text: text.clone(),
                        namespace: "default".into(),
                        tags: vec!["bench".into()],
                        metadata: serde_json::Map::new(),
                        created_at: now,
                        updated_at: now,
                        expires_at: None,
                        version: 1,
                        vector: VectorState::Ready,
                    },
                    Some(vector),
                ));
            }
        }
        service.store.import(&owner, &memories).await.unwrap();
        eprintln!(
            "memory: imported {size} memories in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let query: RecallQuery =
            serde_json::from_value(json!({"query": "who owns the roadmap budget", "k": 10}))
                .unwrap();
        let vector = service
            .embed("bench", vec![query.query.clone()], &ctx())
            .await
            .unwrap()
            .pop();
        // Cold: this instance has no copy; the partition is read page by page.
        let mut cold = Vec::new();
        for _ in 0..args.cold_recalls {
            service.drop_cached(&owner);
            let started = Instant::now();
            let recall = service
                .recall_with(&owner, &query, vector.clone())
                .await
                .unwrap();
            cold.push(started.elapsed().as_secs_f64() * 1000.0);
            assert!(!recall.cached && recall.considered == size);
        }
        let (_, pages) = service.store.load_all(&owner).await.unwrap();
        report(
            &format!("recall, {size} memories, cold ({pages} Query pages)"),
            cold,
        );
        // Warm: one GetItem of the user's version, then ranking in memory.
        let mut warm = Vec::new();
        for _ in 0..args.recalls {
            let started = Instant::now();
            let recall = service
                .recall_with(&owner, &query, vector.clone())
                .await
                .unwrap();
            warm.push(started.elapsed().as_secs_f64() * 1000.0);
            assert!(recall.cached && !recall.results.is_empty());
        }
        report(&format!("recall, {size} memories, warm (1 GetItem)"), warm);
    }

    // Bytes per memory, as DynamoDB counts them (attribute names + values).
    let sample = StoredVector {
        model,
        vector: Quantized::from_f32(&vec![0.05; args.dims]),
    };
    let text_bytes = text(12_345).len();
    let vector_bytes = sample.vector.to_bytes().len();
    let fixed = "pk".len()
        + "mem#tenant-name#key:0123456789abcdef".len()
        + "sk".len()
        + 26
        + "id".len()
        + 28
        + "text".len()
        + text_bytes
        + "namespace".len()
        + 7
        + "tags".len()
        + 8
        + "metadata".len()
        + 2
        + "created_at".len()
        + 10
        + "updated_at".len()
        + 10
        + "version".len()
        + 1
        + "duplicate_key".len()
        + 42
        + "vector".len()
        + vector_bytes
        + "vector_model".len()
        + sample.model.len()
        + "vector_dims".len()
        + 3;
    let index = "pk".len() + 36 + "sk".len() + 42 + "id".len() + 28;
    let total = fixed + index;
    println!(
        "memory: storage per memory: {total} bytes ({text_bytes}-byte text, {}-d int8 vector of {vector_bytes} bytes, the duplicate index item {index} bytes)",
        args.dims
    );
    let gb = total as f64 * 1e6 / 1e9;
    println!(
        "memory: a million memories: {gb:.2} GB x $0.25/GB-month = ${:.2}/month stored; writing them once: 2 items x 1 WRU x 1e6 (transactions double it) x $0.625/M WRU = ${:.2} (list prices us-east-1, arithmetic, not a measurement)",
        gb * 0.25,
        2.0 * 2.0 * 0.625
    );
}
