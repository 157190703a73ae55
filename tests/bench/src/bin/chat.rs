//! api-chat benchmarks, measured side by side in one run against the same simulator.
//!
//! 1. Request-path overhead: each round makes one direct HTTP call to a fleet
//!    simulator and one call through api-chat's handler (parsing, validation,
//!    the resilient client, response building, usage accounting, logs and EMF) to
//!    the same simulator, interleaved, and reports both and their paired
//!    difference. DynamoDB is replaced by an in-process responder that answers at
//!    once, so the figure is our own code and SDK work, not DynamoDB's service
//!    time (a few ms in AWS, which is not ours to shave).
//! 2. Failover: latency of requests while the primary is healthy versus
//!    black-holed, with the production breaker settings.

// A bench tool: failing loudly is right, and it calls the simulator directly on purpose.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::collections::HashMap;
use std::time::Instant;

use api_chat::handler::Deps;
use aws_config::{BehaviorVersion, Region};
use axum::http::HeaderMap;
use clap::Parser;
use fleet_sim::{Fault, FaultMode};
use serde_json::{Value, json};
use sophia_shared::auth::AuthSettings;
use sophia_shared::auth::tokens::KeyRing;
use sophia_shared::aws::{AwsSettings, configure};
use sophia_shared::config::Env;

#[derive(Parser)]
struct Args {
    /// Interleaved rounds for the overhead comparison.
    #[arg(long, default_value_t = 2000)]
    rounds: usize,
    /// Runs of the overhead comparison; the report gives each and their median.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Requests per phase of the failover comparison.
    #[arg(long, default_value_t = 200)]
    failover_requests: usize,
}

const KEY_RING: &str = r#"{"kid": "bench", "secret": "bench-signing-key-material-of-64-characters-for-hs256-bench-key"}"#;

const CACHED_ANSWER: &str = r#"{"id":"chatcmpl-cached","object":"chat.completion","created":1,"model":"sophia-small","choices":[{"index":0,"message":{"role":"assistant","content":"a cached answer of sixteen words or so, as the simulator would have written it"},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":8,"completion_tokens":16,"total_tokens":24}}"#;

/// AWS calls seen by the responder, by operation (X-Amz-Target).
static CALLS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Rate-limit writes the responder answered: a lease refill when a round has one.
static RATE_LIMIT_WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The rate-limit buckets' stored TATs, by partition key.
static BUCKETS: std::sync::Mutex<Option<HashMap<String, u64>>> = std::sync::Mutex::new(None);

/// A rate-limit `UpdateItem` as DynamoDB applies it: the limiter's two GCRA
/// writes with their conditions, the new TAT returned, or the stored one with a
/// `ConditionalCheckFailedException`. Without this the limiter would see no TAT,
/// fail open and log an error on every request, which is not the path measured.
fn rate_limit_update(request: &Value) -> (http::StatusCode, String) {
    let pk = request["Key"]["pk"]["S"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let values = &request["ExpressionAttributeValues"];
    let number = |name: &str| {
        values[name]["N"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
    };
    let now = number(":now").unwrap_or_default();
    let mut buckets = BUCKETS.lock().unwrap();
    let buckets = buckets.get_or_insert_with(HashMap::new);
    let stored = buckets.get(&pk).copied();
    let written = match number(":interval") {
        // SET tat = tat + :interval, if tat >= :now AND tat <= :limit
        Some(interval) => stored
            .filter(|tat| *tat >= now && *tat <= number(":limit").unwrap_or_default())
            .map(|tat| tat + interval),
        // SET tat = :tat, if attribute_not_exists(tat) OR tat < :now
        None => match stored {
            Some(tat) if tat >= now => None,
            _ => number(":tat"),
        },
    };
    match written {
        Some(tat) => {
            buckets.insert(pk, tat);
            (
                http::StatusCode::OK,
                json!({"Attributes": {"tat": {"N": tat.to_string()}}}).to_string(),
            )
        }
        None => (
            http::StatusCode::BAD_REQUEST,
            json!({
                "__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException",
                "message": "The conditional request failed",
                "Item": stored.map(|tat| json!({"tat": {"N": tat.to_string()}})),
            })
            .to_string(),
        ),
    }
}

/// Answers the AWS calls api-chat makes (DynamoDB UpdateItem, PutItem, Query,
/// TransactWriteItems, Secrets Manager GetSecretValue for the signing keys) at once.
async fn instant_aws() -> String {
    let app = axum::Router::new().fallback(|headers: HeaderMap, request: String| async move {
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        CALLS.lock().unwrap().push(target.rsplit('.').next().unwrap_or_default().to_owned());
        if target.ends_with("UpdateItem") && request.contains("ratelimit#") {
            RATE_LIMIT_WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (status, body) = rate_limit_update(&serde_json::from_str(&request).unwrap());
            return (status, [("content-type", "application/x-amz-json-1.0")], body);
        }
        // The response cache: the tenant's flag is on, and every entry is there.
        let body = if target.ends_with("Query") && request.contains("flag#") {
            json!({"Items": [{"pk": {"S": "tenant#bench-tenant"}, "sk": {"S": "flag#response_cache"},
                              "value": {"S": "true"}}], "Count": 1, "ScannedCount": 1})
            .to_string()
        } else if target.ends_with("GetItem") && request.contains("cache#") {
            json!({"Item": {"answer": {"S": CACHED_ANSWER}, "expires_at": {"N": "99999999999"}}})
                .to_string()
        } else if target.ends_with("UpdateItem") && request.contains("daily#") {
            // The quota reservation: the day's first request, far from the quota.
            json!({"Attributes": {"requests": {"N": "1"}}}).to_string()
        } else if target.ends_with("Query") {
            r#"{"Items":[],"Count":0,"ScannedCount":0}"#.to_owned()
        } else if target.ends_with("GetSecretValue") {
            json!({"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:bench", "Name": "bench", "SecretString": KEY_RING, "VersionId": "v1"}).to_string()
        } else {
            "{}".to_owned()
        };
        (
            http::StatusCode::OK,
            [("content-type", "application/x-amz-json-1.1")],
            body,
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn deps(fleet: &str, dynamodb: &str, extra: &[(&str, &str)]) -> Deps {
    let mut env: HashMap<String, String> = [
        ("CHAT_MODELS", "sophia-small"),
        (
            "PRICE_TABLE",
            r#"{"sophia-small": {"prompt_per_mtok": 0.1, "completion_per_mtok": 0.3}}"#,
        ),
        ("STATE_TABLE", "bench-state"),
        ("USAGE_TABLE", "bench-usage"),
        // Only `Prefer: respond-async` uses them; the bench never sends it.
        ("JOBS_TABLE", "bench-jobs"),
        ("JOBS_QUEUE_URL", "http://127.0.0.1:9/queue/bench-jobs"),
        ("AUTH_TABLE", "bench-auth"),
        ("SIGNING_KEYS_SECRET", "bench-keys"),
        ("FLEET_ENDPOINTS", fleet),
        // Every round is admitted, as a caller within its limits is: the limits'
        // writes are paid, never a 429.
        ("RATE_LIMIT_PRINCIPAL_PER_MIN", "6000000"),
        ("RATE_LIMIT_PRINCIPAL_BURST", "100000"),
        ("RATE_LIMIT_IP_PER_MIN", "6000000"),
        ("RATE_LIMIT_IP_BURST", "100000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let sdk = sdk_config(dynamodb).await;
    Deps::from_env(&Env::new(&env), &sdk).await.unwrap()
}

/// The SDK configuration the functions run with (`aws::configure`: timeouts,
/// retries, no stalled-stream check), pointed at the responder.
async fn sdk_config(dynamodb: &str) -> aws_config::SdkConfig {
    // No AWS_* variable set: the functions' defaults.
    let no_variables: [(&str, &str); 0] = [];
    let settings = AwsSettings::from_env(&Env::new(&no_variables)).unwrap();
    configure(aws_config::defaults(BehaviorVersion::latest()), settings)
        .endpoint_url(dynamodb)
        .region(Region::new("us-east-1"))
        .test_credentials()
        .load()
        .await
}

fn token() -> String {
    let settings = AuthSettings::from_env(&Env::new(&[
        ("AUTH_TABLE", "a"),
        ("SIGNING_KEYS_SECRET", "k"),
    ]))
    .unwrap();
    let ring = KeyRing::from_json(KEY_RING).unwrap();
    settings
        .policy
        .sign(
            &ring,
            &settings.policy.claims(
                "key:bench",
                "bench-tenant",
                &["chat".to_owned()],
                "bench-family",
            ),
        )
        .unwrap()
}

fn request(body: &Value) -> lambda_http::Request {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let bearer = format!("Bearer {}", TOKEN.get_or_init(token));
    http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", bearer)
        .body(lambda_http::Body::from(body.to_string()))
        .unwrap()
}

/// The AWS calls the responder saw since the last time, by operation.
fn calls_by_operation() -> std::collections::BTreeMap<String, usize> {
    let mut by_operation = std::collections::BTreeMap::new();
    for call in CALLS.lock().unwrap().drain(..) {
        *by_operation.entry(call).or_default() += 1;
    }
    by_operation
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() - 1) as f64 * q).round() as usize]
}

fn print(name: &str, [p50, p99, max]: [f64; 3]) {
    eprintln!("  {name:<52} p50 {p50:>8.3} ms   p99 {p99:>8.3} ms   max {max:>8.3} ms");
}

/// Prints a line's p50, p99 and max and returns them.
fn line(name: &str, values: &mut [f64]) -> [f64; 3] {
    let quantiles = [
        quantile(values, 0.5),
        quantile(values, 0.99),
        quantile(values, 1.0),
    ];
    print(name, quantiles);
    quantiles
}

/// Each run's quantiles by line, for the median over runs (one run on a shared
/// 2-core machine moves by more than the effects measured).
#[derive(Default)]
struct Runs(Vec<(String, Vec<[f64; 3]>)>);

impl Runs {
    fn line(&mut self, name: &str, values: &mut [f64]) {
        let quantiles = line(name, values);
        match self.0.iter_mut().find(|(known, _)| known == name) {
            Some((_, runs)) => runs.push(quantiles),
            None => self.0.push((name.to_owned(), vec![quantiles])),
        }
    }

    fn medians(&self) {
        for (name, runs) in &self.0 {
            let median = |i: usize| {
                let mut values: Vec<f64> = runs.iter().map(|q| q[i]).collect();
                quantile(&mut values, 0.5)
            };
            print(name, [median(0), median(1), median(2)]);
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // Logs and EMF are written to stdout as in Lambda, so their cost is paid as in
    // production; the report goes to stderr (bench.sh discards stdout).
    sophia_shared::observability::init_logging();

    let dynamodb = instant_aws().await;
    let sim = fleet_sim::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let body = json!({"model": "sophia-small", "messages": [{"role": "user", "content": "measure the overhead of the chat route please"}], "max_tokens": 16});
    let chat = deps(&format!("primary={}", sim.base_url()), &dynamodb, &[]).await;
    // The same handler with the fleet call always after admission, for comparison.
    let admit_first = deps(
        &format!("primary={}", sim.base_url()),
        &dynamodb,
        &[("ADMIT_ALONGSIDE_FLEET_SECS", "0")],
    )
    .await;
    // And with every rate-limit decision written (no leases).
    let unleased = deps(
        &format!("primary={}", sim.base_url()),
        &dynamodb,
        &[("RATE_LIMIT_LEASE_MS", "0")],
    )
    .await;
    let direct = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let url = format!("{}/v1/chat/completions", sim.base_url());

    // The handler streams from the fleet (bounded failover) and assembles the
    // answer, so it is also compared with a direct streamed call read to its end:
    // on loopback with a simulator that sends every token at once, receiving the
    // ~20 frames of a stream costs more than one JSON body, and that transport
    // cost is not our code's. With a real model server the frames are spread
    // over the generation and only the last one's handling adds latency.
    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    streamed_body["stream_options"] = json!({"include_usage": true});
    // The floor under "one round trip": a single DynamoDB call through the SDK
    // (build, sign, send, parse) to the responder that answers at once, with the
    // SDK's defaults and with the functions' configuration.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&dynamodb)
        .region(Region::new("us-east-1"))
        .test_credentials()
        .load()
        .await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let ours = aws_sdk_dynamodb::Client::new(&sdk_config(&dynamodb).await);
    let mut runs = Runs::default();
    for run in 1..=args.runs {
        let (mut direct_ms, mut handler_ms, mut added_ms) = (Vec::new(), Vec::new(), Vec::new());
        let (mut direct_stream_ms, mut added_over_stream_ms) = (Vec::new(), Vec::new());
        let mut admit_first_over_stream_ms = Vec::new();
        let mut unleased_over_stream_ms = Vec::new();
        let (mut with_refill_ms, mut without_refill_ms) = (Vec::new(), Vec::new());
        for round in 0..args.rounds + 100 {
            let started = Instant::now();
            let streamed = direct
                .post(&url)
                .json(&streamed_body)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let direct_stream_elapsed = started.elapsed().as_secs_f64() * 1000.0;
            assert!(streamed.ends_with(b"data: [DONE]\n\n"));

            let started = Instant::now();
            let reply: Value = direct
                .post(&url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let direct_elapsed = started.elapsed().as_secs_f64() * 1000.0;
            assert!(reply["usage"].is_object());

            let writes = RATE_LIMIT_WRITES.load(std::sync::atomic::Ordering::Relaxed);
            let (response, handler_elapsed) = handle_timed(&chat, request(&body)).await;
            assert_eq!(response.status(), 200);
            settle_refills(&chat).await;
            let refilled = RATE_LIMIT_WRITES.load(std::sync::atomic::Ordering::Relaxed) > writes;
            let (response, admit_first_elapsed) = handle_timed(&admit_first, request(&body)).await;
            assert_eq!(response.status(), 200);
            settle_refills(&admit_first).await;
            let (response, unleased_elapsed) = handle_timed(&unleased, request(&body)).await;
            assert_eq!(response.status(), 200);
            if round >= 100 {
                admit_first_over_stream_ms.push(admit_first_elapsed - direct_stream_elapsed);
                unleased_over_stream_ms.push(unleased_elapsed - direct_stream_elapsed);
                direct_ms.push(direct_elapsed);
                handler_ms.push(handler_elapsed);
                added_ms.push(handler_elapsed - direct_elapsed);
                direct_stream_ms.push(direct_stream_elapsed);
                added_over_stream_ms.push(handler_elapsed - direct_stream_elapsed);
                if refilled {
                    with_refill_ms.push(handler_elapsed - direct_stream_elapsed);
                } else {
                    without_refill_ms.push(handler_elapsed - direct_stream_elapsed);
                }
            }
        }
        let (mut one_call_ms, mut one_call_ours_ms) = (Vec::new(), Vec::new());
        for round in 0..2 * (args.rounds + 100) {
            let client = if round % 2 == 0 { &client } else { &ours };
            let started = Instant::now();
            client
                .update_item()
                .table_name("bench-usage")
                .key(
                    "pk",
                    aws_sdk_dynamodb::types::AttributeValue::S("tenant#bench".into()),
                )
                .key(
                    "sk",
                    aws_sdk_dynamodb::types::AttributeValue::S("floor".into()),
                )
                .update_expression("ADD requests :one")
                .expression_attribute_values(
                    ":one",
                    aws_sdk_dynamodb::types::AttributeValue::N("1".into()),
                )
                .send()
                .await
                .unwrap();
            if round >= 200 {
                let elapsed = started.elapsed().as_secs_f64() * 1000.0;
                if round % 2 == 0 {
                    one_call_ms.push(elapsed);
                } else {
                    one_call_ours_ms.push(elapsed);
                }
            }
        }
        eprintln!(
            "api-chat request path, run {run} of {}: {} interleaved rounds (after 100 warm-up), same simulator:",
            args.runs, args.rounds
        );
        runs.line("direct HTTP call to the simulator", &mut direct_ms);
        runs.line("through api-chat's handler", &mut handler_ms);
        runs.line("added by the handler (paired difference)", &mut added_ms);
        runs.line(
            "direct streamed call, read to [DONE]",
            &mut direct_stream_ms,
        );
        runs.line(
            "added over the streamed call (paired)",
            &mut added_over_stream_ms,
        );
        eprintln!(
            "  of which {} rounds had a rate-limit lease refill:",
            with_refill_ms.len()
        );
        runs.line("  rounds with a lease refill", &mut with_refill_ms);
        runs.line("  rounds without", &mut without_refill_ms);
        runs.line(
            "same, admission before the fleet call (paired)",
            &mut admit_first_over_stream_ms,
        );
        runs.line(
            "same, every rate-limit decision written (paired)",
            &mut unleased_over_stream_ms,
        );
        runs.line(
            "one DynamoDB call through the SDK (answered at once)",
            &mut one_call_ms,
        );
        runs.line(
            "same, the functions' SDK configuration",
            &mut one_call_ours_ms,
        );
    }
    eprintln!("api-chat request path, median of {} runs:", args.runs);
    runs.medians();
    CALLS.lock().unwrap().clear();
    let counted = 100;
    for _ in 0..counted {
        assert_eq!(handle(&chat, request(&body)).await.status(), 200);
    }
    let by_operation = calls_by_operation();
    eprintln!(
        "  AWS calls per request over {counted} steady-state requests (same principal and IP):"
    );
    for (operation, count) in &by_operation {
        eprintln!("    {operation:<20} {:.2}", *count as f64 / counted as f64);
    }

    // A response-cache hit: no fleet call; the flag is read once and cached.
    let mut greedy = body.clone();
    greedy["temperature"] = json!(0);
    let mut hits_ms = Vec::new();
    let mut cached = request(&greedy);
    cached
        .headers_mut()
        .insert("x-sophia-cache", "use".parse().unwrap());
    let _ = handle(&chat, cached).await;
    CALLS.lock().unwrap().clear();
    for _ in 0..args.rounds {
        let mut hit = request(&greedy);
        hit.headers_mut()
            .insert("x-sophia-cache", "use".parse().unwrap());
        let (response, elapsed) = handle_timed(&chat, hit).await;
        hits_ms.push(elapsed);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-sophia-cache"], "hit");
    }
    let by_operation = calls_by_operation();
    eprintln!(
        "\nresponse-cache hits, {} requests (AWS answering at once):",
        args.rounds
    );
    line("a hit, through api-chat's handler", &mut hits_ms);
    eprintln!("  AWS calls per hit:");
    for (operation, count) in &by_operation {
        eprintln!(
            "    {operation:<20} {:.2}",
            *count as f64 / args.rounds as f64
        );
    }

    let primary = fleet_sim::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let secondary = fleet_sim::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let fleet = format!(
        "primary={},secondary={}",
        primary.base_url(),
        secondary.base_url()
    );
    // Production defaults except the timeouts, set as on loopback: a non-streamed
    // completion is streamed from the fleet, so the first-chunk timeout (250 ms,
    // plus 25 ms per KiB of request) is what a black hole costs until the
    // breaker opens; the 1 s attempt timeout bounds a whole answer.
    let knobs = [
        ("FLEET_ATTEMPT_TIMEOUT_MS", "1000"),
        ("FLEET_TTFT_TIMEOUT_MS", "250"),
    ];
    let mut phases = Vec::new();
    for black_holed in [false, true] {
        let chat = deps(&fleet, &dynamodb, &knobs).await;
        if black_holed {
            primary
                .sim
                .set_fault(Fault {
                    mode: FaultMode::BlackHole,
                    ..Fault::default()
                })
                .await;
        }
        let mut latencies = Vec::new();
        for _ in 0..args.failover_requests {
            let started = Instant::now();
            let response = handle(&chat, request(&body)).await;
            assert_eq!(response.status(), 200);
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let slow = latencies.iter().filter(|ms| **ms > 200.0).count();
        phases.push((black_holed, latencies, slow));
    }
    eprintln!(
        "\nfailover, {} requests per phase (fresh client each phase; first-chunk timeout 250 ms, attempt timeout 1 s; breaker opens after 5 failures):",
        args.failover_requests
    );
    for (black_holed, mut latencies, slow) in phases {
        let name = if black_holed {
            "primary black-holed"
        } else {
            "primary healthy"
        };
        line(name, &mut latencies);
        eprintln!(
            "  {:<44} {slow} requests paid the dead primary's timeout",
            ""
        );
    }

    let requests = args.failover_requests;
    eprintln!(
        "\ntotal outage (every endpoint answers 503), {requests} requests, up to 3 attempts each:"
    );
    for (name, knobs) in [
        (
            "retry budget only (breakers off)",
            vec![
                ("BREAKER_CONSECUTIVE_FAILURES", "1000000"),
                ("BREAKER_MIN_CALLS", "1000000"),
            ],
        ),
        ("retry budget and breakers (production)", vec![]),
    ] {
        for sim in [&primary, &secondary] {
            sim.sim
                .set_fault(Fault {
                    mode: FaultMode::Error,
                    status: Some(503),
                    ..Fault::default()
                })
                .await;
        }
        let before = primary.requests() + secondary.requests();
        let chat = deps(&fleet, &dynamodb, &knobs).await;
        for _ in 0..requests {
            assert_eq!(handle(&chat, request(&body)).await.status(), 503);
        }
        let after = primary.requests() + secondary.requests();
        let attempts = after - before;
        eprintln!(
            "  {name:<44} {attempts} upstream attempts = {:.2} per request (3.00 without budget or breakers)",
            attempts as f64 / requests as f64
        );
    }

    // Token verification alone: signature, claims, scope, cached revocation list.
    let auth = sophia_shared::auth::Authenticator::from_env(
        &Env::new(&[
            ("AUTH_TABLE", "bench-auth"),
            ("SIGNING_KEYS_SECRET", "bench-keys"),
        ]),
        &sdk_config(&dynamodb).await,
    )
    .await
    .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {}", token()).parse().unwrap(),
    );
    auth.authenticate(&headers, "chat").await.unwrap();
    let rounds = 20_000u32;
    let started = Instant::now();
    for _ in 0..rounds {
        auth.authenticate(&headers, "chat").await.unwrap();
    }
    let per_call = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    eprintln!(
        "\ntoken verification (HS256 signature, claims, scope, cached revocations), {rounds} calls: {per_call:.2} µs each, no network"
    );

    let rule = sophia_shared::guard::ratelimit::Rule {
        per_minute: 600,
        burst: 60,
    };
    let decisions = 1_000_000u32;
    let started = Instant::now();
    let mut tat = None;
    for i in 0..decisions {
        let now = 1_000_000_000_000 + u64::from(i) * 100_000;
        let (next, decision) = std::hint::black_box(sophia_shared::guard::ratelimit::decide(
            std::hint::black_box(tat),
            now,
            rule,
        ));
        if decision.allowed {
            tat = next;
        }
    }
    let per_decision = started.elapsed().as_secs_f64() * 1e9 / f64::from(decisions);
    eprintln!(
        "rate-limit decision (GCRA arithmetic, excluding its DynamoDB write): {per_decision:.1} ns each (black-boxed)"
    );
}

/// Waits (off the clock) until no lease refill of `deps` is waiting or on the
/// wire, so that none runs into the next round's timings: a refill starts
/// after the answer, as billing does, and each round pays it before the next.
async fn settle_refills(deps: &Deps) {
    let limits = deps.http.limits.as_ref().expect("rate limits configured");
    for _ in 0..1000 {
        if limits.limiter.refills_in_flight() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_micros(100)).await;
    }
    panic!("a lease refill did not finish within a second");
}

/// api-chat's answer and the milliseconds until the caller had all of it: its
/// last byte (`Content-Length`). Billing runs after that byte, before the
/// invocation ends; it is read here too (off the clock), so every round still
/// pays it before the next one starts.
async fn handle_timed(
    deps: &Deps,
    request: lambda_http::Request,
) -> (http::Response<bytes::Bytes>, f64) {
    use http_body_util::BodyExt;
    let started = Instant::now();
    let (parts, mut body) = api_chat::handler::handle(deps, request).await.into_parts();
    let length: usize = parts.headers["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut bytes = Vec::with_capacity(length);
    while bytes.len() < length {
        let frame = body.frame().await.unwrap().unwrap();
        bytes.extend_from_slice(&frame.into_data().unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    assert!(body.collect().await.unwrap().to_bytes().is_empty());
    (http::Response::from_parts(parts, bytes.into()), elapsed)
}

/// api-chat's answer with its whole body read, as a caller receives it.
async fn handle(deps: &Deps, request: lambda_http::Request) -> http::Response<bytes::Bytes> {
    use http_body_util::BodyExt;
    let (parts, body) = api_chat::handler::handle(deps, request).await.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    http::Response::from_parts(parts, bytes)
}
