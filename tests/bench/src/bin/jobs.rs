//! worker-inference throughput and CPU time per job.
//!
//! One worker "instance" (one invocation at a time, as Lambda runs one batch per
//! instance) drains a queue of jobs: receive up to 10 messages, run the handler,
//! delete what succeeded. The fleet is a simulator process with a fixed latency;
//! AWS is the local moto server (provisioned from infra/), whose service times
//! (several ms per call, single-threaded Python) stand in for DynamoDB's and SQS's.
//! CPU time is this process's user + system time while draining (the handler, the
//! SDK, logging; also the bench's own receive/delete calls, which Lambda's event
//! source makes outside the function), divided by the number of jobs.

// A bench tool: failing loudly is right, and it drives the simulator directly.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use harness::{lambda_context, local_aws, receive_batch, settle, unique_stack};
use serde_json::json;
use sophia_shared::config::Env;
use sophia_shared::jobs::NewJob;
use sophia_shared::jobs::store::JobStore;

#[derive(Parser)]
struct Args {
    /// Jobs to drain.
    #[arg(long, default_value_t = 300)]
    jobs: usize,
    /// The simulator's fixed latency per completion.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Records run at the same time within one invocation (WORKER_CONCURRENCY).
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    #[arg(long, default_value = "target/release/fleet-sim")]
    sim_binary: String,
}

/// User + system CPU time of this process, from /proc (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat(5); index 11 and 12 after the command name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // Logs (JSON, stdout; RUST_LOG, default info) show why a record was retried.
    sophia_shared::observability::init_logging();
    let port = free_port();
    let mut sim = tokio::process::Command::new(&args.sim_binary)
        .args(["--port", &port.to_string(), "--name", "bench"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the fleet simulator (cargo build --release -p fleet-sim)");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get(format!("{base}/_sim/state")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the simulator did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    http.put(format!("{base}/_sim/behaviour"))
        .json(&json!({"latency_ms": args.latency_ms}))
        .send()
        .await
        .unwrap();

    let stack = local_aws().provision(&unique_stack("bench-jobs"), &[]);
    let mut env = stack.env_with(&[
        ("FLEET_ENDPOINTS", &format!("primary={base}")),
        ("WORKER_CONCURRENCY", &args.concurrency.to_string()),
    ]);
    env.remove("FLEET_TOKEN_SECRET");
    let sdk = local_aws().sdk_config().await;
    let worker = worker_inference::handler::Deps::from_env(&Env::new(&env), &sdk).unwrap();
    let store = JobStore::from_env(&Env::new(&env), &sdk).unwrap();
    let request = json!({"model": "sophia-small", "messages": [{"role": "user", "content": "bench"}], "max_tokens": 8}).to_string();
    eprintln!("submitting {} jobs", args.jobs);
    for chunk in (0..args.jobs).collect::<Vec<_>>().chunks(20) {
        futures_util::future::join_all(chunk.iter().map(|i| {
            let (store, request) = (&store, &request);
            async move {
                // One tenant per job: moto serializes badly on one hot counter item.
                let tenant = format!("bench-{i}");
                store
                    .submit(NewJob {
                        tenant: &tenant,
                        model: "sophia-small",
                        request,
                        idempotency_key: None,
                    })
                    .await
                    .unwrap()
            }
        }))
        .await;
    }
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = stack.env("JOBS_QUEUE_URL").to_owned();
    let (cpu_before, started) = (cpu_time(), Instant::now());
    let mut done = 0;
    let mut batches = Vec::new();
    let mut empty = 0;
    while done < args.jobs && empty < 20 {
        let event = receive_batch(&sqs, &queue, 10).await;
        if event.records.is_empty() {
            empty += 1;
            continue;
        }
        let batch_started = Instant::now();
        let response = worker_inference::handler::handle(
            &worker,
            event.clone(),
            &lambda_context(Duration::from_secs(150)),
        )
        .await;
        batches.push(batch_started.elapsed());
        done += event.records.len() - response.batch_item_failures.len();
        settle(&sqs, &queue, &event, &response, true).await;
    }
    let (elapsed, cpu) = (started.elapsed(), cpu_time() - cpu_before);
    batches.sort();
    let median = batches[batches.len() / 2];
    println!(
        "worker-inference: {done} jobs in {:.2} s = {:.1} jobs/s per instance \
         (batches of 10, {} at a time, fleet latency {} ms, moto as AWS); \
         batch median {:.0} ms; CPU {:.2} ms per job ({} ms total)",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        args.concurrency,
        args.latency_ms,
        median.as_secs_f64() * 1000.0,
        cpu.as_secs_f64() * 1000.0 / done.max(1) as f64,
        cpu.as_millis()
    );
    let _ = sim.kill().await;
}
