//! The MCP gateway's overhead, in process.
//!
//! 1. A built-in tool call (`job_status`: one GetItem of its own) through
//!    api-mcp's whole handler: the pipeline (token, rate limit), the envelope
//!    checks, rmcp, the gateway (per-tool rate limit, audit, metrics). Every
//!    AWS call goes through a timing HTTP client; the overhead is the handler's
//!    wall time minus the time AWS calls were in flight (their union, as some
//!    run concurrently; rate-limit writes, which lease refills make in the
//!    background, are not subtracted), i.e. our code and the SDK's, not moto's
//!    service time. Each round also makes the tool's own library call
//!    (`read_own`, what `job_status` and `GET /v1/jobs/{id}` call) directly,
//!    timed the same way; the paired difference is what the gateway adds over
//!    the tool's own storage round trip (issue 13's goal).
//!    The AWS calls are counted by operation.
//! 2. A federated call (`everything__echo` on server-everything from npm)
//!    through the handler, paired with the same call made directly to the
//!    upstream over its session: the difference, with and without the AWS time.
//!
//! AWS is the local moto server provisioned from infra/.

// A bench tool: failing loudly is right.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use clap::Parser;
use harness::mcp::Upstream;
use harness::{issue_token_for, local_aws, start_sim, unique_stack, with_bearer};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sophia_shared::aws::{AwsSettings, configure};
use sophia_shared::config::Env;
use sophia_shared::outbound::{Exchange, OutboundClient, OutboundSettings};

#[derive(Parser)]
struct Args {
    /// Calls measured per case (after a warm-up of 20).
    #[arg(long, default_value_t = 300)]
    calls: usize,
    /// Print the AWS calls' timeline of every built-in round whose overhead
    /// exceeds this many milliseconds (to stderr; for reading a tail).
    #[arg(long)]
    explain_over: Option<f64>,
}

/// In-flight intervals of every AWS call.
#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<(String, Instant, Instant)>>,
}

#[derive(Debug)]
struct TimingClient {
    inner: SharedHttpClient,
    recorder: Arc<Recorder>,
}

#[derive(Debug)]
struct TimingConnector {
    inner: SharedHttpConnector,
    recorder: Arc<Recorder>,
}

impl HttpClient for TimingClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(TimingConnector {
            inner: self.inner.http_connector(settings, components),
            recorder: self.recorder.clone(),
        })
    }
}

impl HttpConnector for TimingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let operation = request
            .headers()
            .get("x-amz-target")
            .map(|t| t.rsplit('.').next().unwrap_or(t).to_owned())
            .unwrap_or_else(|| "other".to_owned());
        let inner = self.inner.call(request);
        let recorder = self.recorder.clone();
        HttpConnectorFuture::new(async move {
            let started = Instant::now();
            let mut response = inner.await?;
            // On the wire until the body's last byte: moto writes the headers
            // and the body apart, and its other threads can hold the GIL for
            // a switch interval (5 ms) in between.
            let body = response
                .take_body()
                .collect()
                .await
                .map_err(ConnectorError::io)?
                .to_bytes();
            *response.body_mut() = SdkBody::from(body);
            recorder
                .calls
                .lock()
                .unwrap()
                .push((operation, started, Instant::now()));
            Ok(response)
        })
    }
}

impl Recorder {
    fn take(&self) -> Vec<(String, Instant, Instant)> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

/// How long at least one of `calls` was in flight.
/// The time AWS calls the handler waits for were on the wire: their union.
/// Rate-limit writes (`UpdateItem`) are left out, counted as our time: a lease
/// refill runs in the background, and subtracting it would credit the handler
/// with time it did not wait; a rate-limit write it did wait for counts against
/// it, so the figure is an upper bound.
fn union(calls: &[(String, Instant, Instant)]) -> Duration {
    let mut spans: Vec<(Instant, Instant)> = calls
        .iter()
        .filter(|(operation, _, _)| operation != "UpdateItem")
        .map(|(_, a, b)| (*a, *b))
        .collect();
    spans.sort();
    let mut total = Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for (start, end) in spans {
        current = match current {
            Some((a, b)) if start <= b => Some((a, b.max(end))),
            Some((a, b)) => {
                total += b - a;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((a, b)) = current {
        total += b - a;
    }
    total
}

/// One slow round: its overhead and when each AWS call was on the wire,
/// in ms from the handler's start.
fn explain(ours: f64, started: Instant, elapsed: Duration, calls: &[(String, Instant, Instant)]) {
    let at = |instant: &Instant| instant.saturating_duration_since(started).as_secs_f64() * 1000.0;
    let timeline: Vec<String> = calls
        .iter()
        .map(|(operation, from, to)| format!("{operation} {:.2}..{:.2}", at(from), at(to)))
        .collect();
    eprintln!(
        "mcp: slow round: overhead {ours:.2} ms of {:.2} ms: {}",
        elapsed.as_secs_f64() * 1000.0,
        timeline.join(", ")
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(label: &str, mut samples: Vec<f64>) {
    samples.sort_by(f64::total_cmp);
    if samples.is_empty() {
        println!("mcp: {label:<58} none");
        return;
    }
    println!(
        "mcp: {label:<58} p50 {:>7.3} ms  p99 {:>7.3} ms  (n={})",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.len()
    );
}

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

fn call_request(token: &str, tool: &str, arguments: Value) -> lambda_http::Request {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": tool, "arguments": arguments, "_meta": meta()}});
    let request = http::Request::builder()
        .method("POST")
        .uri("/mcp")
        .header("host", "127.0.0.1:9000")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(lambda_http::Body::from(body.to_string()))
        .unwrap();
    with_bearer(request, token)
}

async fn run(deps: &api_mcp::handler::Deps, request: lambda_http::Request) -> Value {
    check(api_mcp::handler::handle(deps, request).await)
}

/// The tool call's answer: a 200 with a result that is not an error.
fn check(response: lambda_http::Response<lambda_http::Body>) -> Value {
    assert_eq!(response.status(), 200);
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["result"]["isError"], false, "{body}");
    body
}

/// CPU time this thread has used. The bench runs on one thread, so every task
/// of ours (the handler, the SDK's connections, lease refills) is on it, and
/// moto's and the upstream's CPU (other processes) is not.
fn thread_cpu() -> Duration {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::from(now)
}

// One thread: see `thread_cpu`.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let stack = local_aws().provision(&unique_stack("bench-mcp"), &[]);
    let sim = start_sim().await;
    let recorder = Arc::new(Recorder::default());
    let timing = SharedHttpClient::new(TimingClient {
        inner: aws_smithy_http_client::Builder::new().build_http(),
        recorder: recorder.clone(),
    });
    let settings = AwsSettings::from_env(&Env::new(&[
        ("AWS_ATTEMPT_TIMEOUT_MS", "15000"),
        ("AWS_OPERATION_TIMEOUT_MS", "30000"),
    ]))
    .unwrap();
    let sdk = configure(aws_config::defaults(BehaviorVersion::latest()), settings)
        .endpoint_url(&local_aws().endpoint)
        .region(Region::new(harness::REGION))
        .test_credentials()
        .http_client(timing)
        .load()
        .await;
    let mut env = stack.env_with(&[
        ("FLEET_ENDPOINTS", &format!("primary={}", sim.base_url())),
        ("RATE_LIMIT_PRINCIPAL_BURST", "1000000"),
        ("RATE_LIMIT_IP_BURST", "1000000"),
        ("MCP_TOOL_RATE_BURST", "1000000"),
        ("MCP_ALLOW_PRIVATE_UPSTREAMS", "true"),
    ]);
    env.remove("FLEET_TOKEN_SECRET");
    let deps = api_mcp::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let token = issue_token_for(&stack, "bench", "key:bench", &["tools", "jobs"]).await;

    // 1. A built-in tool.
    let request = json!({"model": "sophia-small", "messages": [{"role": "user", "content": "x"}]});
    let job = run(
        &deps,
        call_request(&token, "job_submit", json!({"request": request})),
    )
    .await;
    let id = job["result"]["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut overhead, mut wall, mut calls_per) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu = Vec::new();
    let mut operations: BTreeMap<String, usize> = BTreeMap::new();
    let (mut with_refill, mut without_refill) = (Vec::new(), Vec::new());
    // The tool's own work without the gateway: the library call job_status
    // (and GET /v1/jobs/{id}) makes, through the same SDK configuration.
    let jobs = sophia_shared::jobs::store::JobStore::from_env(&Env::new(&env), &sdk).unwrap();
    let (mut own, mut added) = (Vec::new(), Vec::new());
    for round in 0..args.calls + 20 {
        recorder.take();
        let started = Instant::now();
        let job = sophia_shared::jobs::submit::read_own(&jobs, "bench", &id)
            .await
            .unwrap()
            .to_public_json();
        let own_elapsed = started.elapsed();
        let own_overhead = own_elapsed.saturating_sub(union(&recorder.take()));
        assert_eq!(job["id"], id.as_str());
        // The client's side (building the request, reading the answer) is
        // outside the clock: only the handler is timed.
        let request = call_request(&token, "job_status", json!({"id": id}));
        recorder.take();
        let started = Instant::now();
        let cpu_before = thread_cpu();
        let response = api_mcp::handler::handle(&deps, request).await;
        let elapsed = started.elapsed();
        let cpu_used = thread_cpu().saturating_sub(cpu_before);
        let calls = recorder.take();
        check(response);
        if round < 20 {
            continue;
        }
        let ours = elapsed.saturating_sub(union(&calls)).as_secs_f64() * 1000.0;
        let own_ms = own_overhead.as_secs_f64() * 1000.0;
        if args.explain_over.is_some_and(|limit| ours > limit) {
            explain(ours, started, elapsed, &calls);
        }
        cpu.push(cpu_used.as_secs_f64() * 1000.0);
        wall.push(elapsed.as_secs_f64() * 1000.0);
        overhead.push(ours);
        own.push(own_ms);
        added.push(ours - own_ms);
        if calls
            .iter()
            .any(|(operation, _, _)| operation == "UpdateItem")
        {
            with_refill.push(ours);
        } else {
            without_refill.push(ours);
        }
        calls_per.push(calls.len() as f64);
        for (operation, _, _) in calls {
            *operations.entry(operation).or_default() += 1;
        }
    }
    report("built-in job_status: wall time (moto included)", wall);
    report(
        "built-in job_status: gateway overhead (wall - AWS in flight)",
        overhead,
    );
    report(
        "built-in job_status: CPU time of ours, the tool's GetItem included",
        cpu,
    );
    // Issue 13's goal excludes the tool's own storage round trip: the same
    // library call made directly (its SDK work included, its wire time not) is
    // subtracted round by round, as the chat bench pairs a direct call.
    report(
        "built-in job_status: the tool's own call alone (wall - AWS in flight)",
        own,
    );
    report(
        "built-in job_status: added over the tool's own call (paired)",
        added,
    );
    // A lease refill (a rate-limit UpdateItem on this thread) in the round made
    // the tail before refills stepped aside for the request; the split keeps
    // that visible.
    report(
        "built-in job_status: overhead, rounds with a lease refill",
        with_refill,
    );
    report(
        "built-in job_status: overhead, rounds without one",
        without_refill,
    );
    calls_per.sort_by(f64::total_cmp);
    let per_call: Vec<String> = operations
        .iter()
        .map(|(op, n)| format!("{op} {:.1}", *n as f64 / args.calls as f64))
        .collect();
    println!(
        "mcp: AWS calls per built-in call: median {} ({})",
        percentile(&calls_per, 0.5),
        per_call.join(", ")
    );

    // 2. A federated tool, paired with the same upstream called directly.
    let everything = Upstream::everything();
    let admin = issue_token_for(&stack, "bench", "key:admin", &["admin"]).await;
    let admin_deps = api_admin::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let registration = json!({"url": everything.url(), "allowed_tools": ["echo"]});
    let put = harness::json_request(
        "PUT",
        "/v1/admin/mcp-servers/everything",
        &registration,
        None,
    );
    let response = api_admin::handler::handle(&admin_deps, with_bearer(put, &admin)).await;
    assert_eq!(response.status(), 200);
    let direct = Direct::connect(&everything.url()).await;
    let (mut gateway, mut upstream, mut difference, mut difference_no_aws) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.calls + 20 {
        recorder.take();
        let started = Instant::now();
        let body = run(
            &deps,
            call_request(&token, "everything__echo", json!({"message": "hi"})),
        )
        .await;
        let through = started.elapsed();
        let aws = union(&recorder.take());
        assert_eq!(body["result"]["content"][0]["text"], "Echo: hi");
        let started = Instant::now();
        direct.echo().await;
        let alone = started.elapsed();
        if round < 20 {
            continue;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        gateway.push(ms(through));
        upstream.push(ms(alone));
        difference.push(ms(through) - ms(alone));
        difference_no_aws.push(ms(through.saturating_sub(aws)) - ms(alone));
    }
    report("federated echo through the gateway", gateway);
    report("the same echo, straight to the upstream", upstream);
    report("federated: paired difference", difference);
    report(
        "federated: paired difference without AWS in flight",
        difference_no_aws,
    );
}

/// The upstream called without the gateway: one session, then tools/call.
struct Direct {
    http: OutboundClient,
    url: String,
    session: String,
}

impl Direct {
    async fn connect(url: &str) -> Self {
        let http = OutboundClient::new(OutboundSettings::default()).unwrap();
        let answer = http
            .exchange(Exchange {
                method: http::Method::POST,
                url,
                headers: &[(
                    "accept".into(),
                    "application/json, text/event-stream".into(),
                )],
                json: Some(
                    &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "1"}}}),
                ),
                timeout: Duration::from_secs(5),
                max_answer_bytes: 1 << 20,
                ctx: None,
            })
            .await
            .unwrap();
        let session = answer.headers["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let direct = Self {
            http,
            url: url.to_owned(),
            session,
        };
        direct
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        direct
    }

    async fn post(&self, body: Value) -> bytes::Bytes {
        let headers = [
            (
                "accept".to_owned(),
                "application/json, text/event-stream".to_owned(),
            ),
            ("mcp-session-id".to_owned(), self.session.clone()),
            ("mcp-protocol-version".to_owned(), "2025-11-25".to_owned()),
        ];
        self.http
            .exchange(Exchange {
                method: http::Method::POST,
                url: &self.url,
                headers: &headers,
                json: Some(&body),
                timeout: Duration::from_secs(5),
                max_answer_bytes: 1 << 20,
                ctx: None,
            })
            .await
            .unwrap()
            .body
    }

    async fn echo(&self) {
        let body = self
            .post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                         "params": {"name": "echo", "arguments": {"message": "hi"}}}))
            .await;
        assert!(String::from_utf8_lossy(&body).contains("Echo: hi"));
    }
}
