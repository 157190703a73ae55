//! Cold start of a Lambda function binary, measured the way Lambda experiences it:
//! from process start to the first invocation answered through the Runtime API.
//!
//! A minimal Runtime API (`/2018-06-01/runtime/invocation/next` and `/response`)
//! serves one event per run; the binary is started fresh for each run, its first
//! response timestamped, its peak RSS (VmHWM) read, and the process killed.
//! Init (process start → the first poll of `/next`, what Lambda reports as
//! Init Duration) is timed apart from the first answer, which includes the
//! event's own work. Prints min, median, p90 and max over `--runs`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // a bench tool: fail loudly

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use clap::Parser;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// The function binary (a host build: the same code as the arm64 zip).
    #[arg(long)]
    binary: PathBuf,
    /// The event to serve (e.g. events/api-health/health.json).
    #[arg(long)]
    event: PathBuf,
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// KEY=VALUE environment for the function (repeatable).
    #[arg(long = "env")]
    env: Vec<String>,
    /// Text the first answer must contain.
    #[arg(long, default_value = "\"statusCode\":200")]
    expect: String,
}

struct Api {
    event: String,
    generation: AtomicU64,
    served: AtomicU64,
    /// When the current process first asked for an event: its init is done.
    initialized: std::sync::Mutex<Option<Instant>>,
    responses: mpsc::UnboundedSender<(Instant, String)>,
}

async fn next(State(api): State<Arc<Api>>) -> impl IntoResponse {
    let generation = api.generation.load(Ordering::SeqCst);
    if api.served.swap(generation, Ordering::SeqCst) == generation {
        // One invocation per process: later polls wait until the process is killed.
        std::future::pending::<()>().await;
    }
    *api.initialized.lock().unwrap() = Some(Instant::now());
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 10_000;
    let mut headers = HeaderMap::new();
    let id = format!("bench-{generation}");
    headers.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_str(&id).unwrap(),
    );
    headers.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_str(&deadline.to_string()).unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:bench"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        ),
    );
    (StatusCode::OK, headers, api.event.clone())
}

async fn response(State(api): State<Arc<Api>>, Path(_id): Path<String>, body: Bytes) -> StatusCode {
    let _ = api
        .responses
        .send((Instant::now(), String::from_utf8_lossy(&body).into_owned()));
    StatusCode::ACCEPTED
}

/// A function error (e.g. a hook refusing a malformed event) is its answer:
/// the body carries the `errorType` the `--expect` text can name.
async fn invocation_error(
    State(api): State<Arc<Api>>,
    Path(_id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let _ = api.responses.send((
        Instant::now(),
        format!("function error: {}", String::from_utf8_lossy(&body)),
    ));
    StatusCode::ACCEPTED
}

/// A failed init never answers: say so at once instead of waiting out the run.
async fn init_error(body: Bytes) -> StatusCode {
    eprintln!("init error: {}", String::from_utf8_lossy(&body));
    std::process::exit(1);
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn summary(name: &str, unit: &str, mut values: Vec<f64>) {
    values.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    println!(
        "  {name:<28} min {:>7.2}  median {:>7.2}  p90 {:>7.2}  max {:>7.2} {unit}",
        pick(0.0),
        pick(0.5),
        pick(0.9),
        pick(1.0)
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let event = std::fs::read_to_string(&args.event).expect("reading the event");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let api = Arc::new(Api {
        event,
        generation: AtomicU64::new(1),
        served: AtomicU64::new(0),
        initialized: std::sync::Mutex::new(None),
        responses: tx,
    });
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(invocation_error),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut init_ms = Vec::new();
    let mut cold_ms = Vec::new();
    let mut rss_mib = Vec::new();
    for run in 1..=args.runs {
        api.generation.store(run as u64, Ordering::SeqCst);
        let mut command = tokio::process::Command::new(&args.binary);
        command
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        for pair in &args.env {
            let (key, value) = pair.split_once('=').expect("--env KEY=VALUE");
            command.env(key, value);
        }
        let started = Instant::now();
        let mut child = command.spawn().expect("starting the function");
        let (answered, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no response within 10 s")
            .expect("channel");
        assert!(body.contains(&args.expect), "unexpected answer: {body}");
        let initialized = api.initialized.lock().unwrap().take().expect("polled");
        init_ms.push(initialized.duration_since(started).as_secs_f64() * 1000.0);
        cold_ms.push(answered.duration_since(started).as_secs_f64() * 1000.0);
        if let Some(kib) = child.id().and_then(peak_rss_kib) {
            rss_mib.push(kib as f64 / 1024.0);
        }
        child.kill().await.ok();
    }
    println!(
        "cold start of {} ({} runs, event {}):",
        args.binary.display(),
        args.runs,
        args.event.display()
    );
    summary("process start -> init done", "ms", init_ms);
    summary("process start -> 1st answer", "ms", cold_ms);
    if !rss_mib.is_empty() {
        summary("peak RSS after 1st answer", "MiB", rss_mib);
    }
}
