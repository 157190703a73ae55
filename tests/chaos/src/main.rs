//! `chaos`: steady mixed traffic against a running dev stack while faults come
//! and go on a timeline, then the invariants checked from the stored state.
//! `make chaos` runs it on a dev stack of its own (`tools/chaos.sh`); a short
//! run is part of `make test`.
//!
//! Traffic: chat (whole and streamed), jobs with and without `Idempotency-Key`
//! (and replays), memory stores and recalls, MCP tool calls, each kind from a
//! tenant of its own, from several concurrent clients, for `--seconds`.
//! Faults ([`faults::timeline`]): fleet endpoints black-holed, failing,
//! rate-limited, dropping streams, slow to start, killed and restarted; the
//! jobs queue's consumer killed mid-batch and stopped for a while; the local
//! AWS paused; the fleet token rotated; the probe, the sweep and the SLO check
//! running throughout. Invariants ([`checks`]): every accepted job finished
//! once and was billed once, every stored memory exists with its vector, every
//! whole chat answer billed once and nothing owed, every refusal a problem
//! with `Retry-After` where retryable and no 500 of ours, breakers opened and
//! closed, the SLO alerts match the SLO job's evaluation, the audit chains verify.
//!
//! It prints a report (also written to `--report`) and exits 1 if any
//! invariant fails. Everything it starts (restarted parts) it stops.

mod checks;
mod faults;
mod stack;
mod traffic;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use sophia_shared::clock::now_secs;
use sophia_shared::config::{Env, ProcessEnv};

use crate::faults::Window;
use crate::stack::Stack;
use crate::traffic::{Client, Ledger, Outcome, Record};

#[derive(Parser)]
struct Args {
    /// How long the traffic runs (the faults are spread over it).
    #[arg(long, env = "CHAOS_SECONDS", default_value_t = 180)]
    seconds: u64,
    /// The dev stack's state directory (`stack.json`, `dev.env`, `parts`).
    #[arg(long, env = "SOPHIA_STATE_DIR")]
    state_dir: PathBuf,
    /// Concurrent chat clients (one client each for jobs, memory and tools).
    #[arg(long, default_value_t = 2)]
    chat_clients: usize,
    /// Where the report is written too.
    #[arg(long, default_value = "target/chaos-report.txt")]
    report: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("chaos: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<bool, String> {
    let env = Env::new(&ProcessEnv);
    let stack = Stack::open(&env, &args.state_dir).await?;
    let chat = stack.tenant("chaos-chat", &["chat", "admin"]).await?;
    let jobs = stack.tenant("chaos-jobs", &["jobs", "admin"]).await?;
    let memory = stack.tenant("chaos-memory", &["memory", "admin"]).await?;
    let tools = stack
        .tenant("chaos-tools", &["tools", "memory", "chat", "jobs", "admin"])
        .await?;
    let operator = stack
        .tenant("chaos-operator", &["admin", "platform"])
        .await?;

    let seconds = args.seconds.max(10) as f64;
    let windows = faults::timeline(seconds);
    println!(
        "==> chaos: {seconds:.0} s of traffic ({} chat clients, jobs, memory, tools), {} faults",
        args.chat_clients,
        windows.len()
    );
    let since = now_secs();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let shared = Arc::new(Mutex::new(Ledger::default()));
    let client = |tenant| Client::new(&stack, tenant, started, until, shared.clone());
    let mut clients: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>> =
        Vec::new();
    for id in 0..args.chat_clients {
        clients.push(Box::pin(traffic::chat(client(&chat), id)));
    }
    clients.push(Box::pin(traffic::jobs(client(&jobs))));
    clients.push(Box::pin(traffic::memory(client(&memory))));
    clients.push(Box::pin(traffic::tools(client(&tools))));
    let (mut injected, ()) = tokio::join!(
        faults::run(&stack, &windows, started, until, Duration::from_secs(10)),
        async {
            futures_util::future::join_all(clients).await;
        }
    );
    recover_breakers(&stack, &chat, shared.clone(), started, since).await?;
    let ledger = std::mem::take(&mut *shared.lock().unwrap_or_else(|e| e.into_inner()));
    println!(
        "==> chaos: traffic done ({} requests); draining (jobs, queue, owed answers)",
        ledger.records.len()
    );

    // Settle: every fault healed; the jobs queue drains (a killed batch comes
    // back after its 180 s visibility timeout), the sweep bills owed answers.
    // A record the fleet failed comes back after 15 s doubling up to 180 s
    // (JOB_RETRY_DELAY_SECS, MEMORY_EMBED_RETRY_DELAY_SECS): a short run's
    // unlucky record may need most of that; the waits end as soon as all settled.
    let drain_limit = Duration::from_secs(if seconds >= 120.0 { 300 } else { 240 });
    let drained = checks::drain(&stack, &ledger, drain_limit).await?;
    let operator_token = stack.token(&operator).await?;
    let memory_token = stack.token(&memory).await?;
    let mut verdicts = Vec::new();
    verdicts.extend(checks::jobs(&stack, &ledger, &operator_token).await?);
    verdicts
        .push(checks::memories(&stack, &ledger, &memory_token, Duration::from_secs(240)).await?);
    // The last sweep bills answers owed longer than SWEEP_UNBILLED_AFTER_SECS.
    let _ = stack
        .invoke(
            "job-queue-sweep",
            &serde_json::json!({"run": "chaos-final"}),
        )
        .await;
    verdicts.extend(checks::billing(&stack, &ledger).await?);
    verdicts.extend(checks::answers(&ledger));
    verdicts.push(checks::breakers(&stack, since).await?);
    let _ = stack
        .invoke("job-slo-check", &serde_json::json!({"run": "chaos-final"}))
        .await;
    verdicts.push(checks::slo_alerts(&stack).await?);
    verdicts.push(checks::audit(&stack, &[&chat, &jobs, &memory, &tools]).await?);
    if !injected.errors.is_empty() {
        verdicts.push(checks::Verdict {
            name: "every fault was injected",
            held: false,
            detail: injected.errors.join("; "),
        });
    }

    // Stop what was started here.
    for child in &mut injected.restarted {
        if let Some(pid) = child.id() {
            let _ = stack::signal(pid, "TERM");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        let _ = child.kill().await;
    }

    let report = report(&windows, &injected.events, &ledger, &verdicts, drained);
    println!("{report}");
    if let Some(dir) = args.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(error) = std::fs::write(&args.report, &report) {
        eprintln!("chaos: writing {}: {error}", args.report.display());
    }
    Ok(verdicts.iter().all(|v| v.held))
}

/// After the faults: an endpoint's breaker that opened closes on the calls
/// that follow once the probe sees the endpoint up again (two agreeing
/// probes). A short run may end before that; so, for at most a minute, the
/// probe runs and a chat client keeps calling, until a breaker closed.
async fn recover_breakers(
    stack: &Stack,
    tenant: &stack::Tenant,
    shared: Arc<Mutex<Ledger>>,
    started: Instant,
    since: u64,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (opened, closed) = checks::breaker_transitions(stack, since).await?;
        if opened == 0.0 || closed > 0.0 {
            return Ok(());
        }
        let _ = stack
            .invoke(
                "job-fleet-probe",
                &serde_json::json!({"run": "chaos-recovery"}),
            )
            .await;
        let until = Instant::now() + Duration::from_secs(5);
        traffic::chat(
            Client::new(stack, tenant, started, until, shared.clone()),
            99,
        )
        .await;
    }
    println!("  chaos: no breaker closed within a minute after the faults");
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Which fault windows were on at `at` (or `baseline`).
fn during(windows: &[Window], at: f64) -> String {
    let on: Vec<&str> = windows
        .iter()
        .filter(|w| w.from <= at && at < w.to.max(w.from + 1.0))
        .map(|w| w.name)
        .collect();
    if on.is_empty() {
        "no fault".to_owned()
    } else {
        on.join(" + ")
    }
}

fn report(
    windows: &[Window],
    events: &[String],
    ledger: &Ledger,
    verdicts: &[checks::Verdict],
    drained: bool,
) -> String {
    let mut out =
        String::from("\n== chaos report ==\n\nFaults (seconds from the start of the traffic):\n");
    for window in windows {
        out.push_str(&format!(
            "  {:6.1} – {:6.1}  {}\n",
            window.from, window.to, window.name
        ));
    }
    out.push_str("\nWhat happened:\n");
    for event in events {
        out.push_str(&format!("  {event}\n"));
    }
    out.push_str("\nRequests by route and outcome:\n");
    let mut by_route: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for r in &ledger.records {
        let outcome = match r.outcome {
            Outcome::Complete => "complete".to_owned(),
            Outcome::Broken => "stream broken".to_owned(),
            Outcome::Ok => format!("{}", r.status),
            Outcome::Refused => match &r.problem {
                Some(p) => format!(
                    "{} {}",
                    r.status,
                    p.trim_start_matches("urn:sophia:problem:")
                ),
                None if r.status == 200 => "200 tool isError".to_owned(),
                None => format!("{}", r.status),
            },
            Outcome::NoAnswer => "no answer".to_owned(),
        };
        *by_route
            .entry(r.route)
            .or_default()
            .entry(outcome)
            .or_default() += 1;
    }
    for (route, outcomes) in &by_route {
        let parts: Vec<String> = outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
        out.push_str(&format!("  {route:20} {}\n", parts.join(", ")));
    }
    out.push_str("\nLatency per route during each fault (ms, p50 / p99, requests):\n");
    let mut groups: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    for r in ledger
        .records
        .iter()
        .filter(|r: &&Record| r.outcome != Outcome::NoAnswer)
    {
        groups
            .entry((during(windows, r.at), r.route))
            .or_default()
            .push(r.latency_ms);
    }
    let mut last = String::new();
    for ((fault, route), mut latencies) in groups {
        if fault != last {
            out.push_str(&format!("  {fault}\n"));
            last = fault.clone();
        }
        latencies.sort_by(f64::total_cmp);
        out.push_str(&format!(
            "    {route:20} {:8.1} / {:8.1}  ({})\n",
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            latencies.len()
        ));
    }
    out.push_str(&format!(
        "\nDrained: {}\n\nInvariants:\n",
        if drained {
            "yes"
        } else {
            "NO (see the jobs invariant)"
        }
    ));
    for v in verdicts {
        out.push_str(&format!(
            "  [{}] {}: {}\n",
            if v.held { "ok" } else { "FAILED" },
            v.name,
            v.detail
        ));
    }
    let failed = verdicts.iter().filter(|v| !v.held).count();
    out.push_str(&format!(
        "\n{}\n",
        if failed == 0 {
            "every invariant held".to_owned()
        } else {
            format!("{failed} invariant(s) FAILED")
        }
    ));
    out
}
