//! Cold start of every function: `coldstart` run on each release binary with a
//! sample event from `events/`, against a local AWS provisioned from `infra/`
//! and a fleet simulator, so init does what it does in Lambda (configuration,
//! SDK clients, the signing keys and fleet token read from Secrets Manager).
//!
//! Init (process start → first poll for an event) is the figure to compare:
//! the first answer adds the event's own work, which for the scheduled jobs is
//! their whole run against moto. API events carry no token: the answer is the
//! pipeline's 401 (or a public route's 200), after the full init.
//! Prints one line per function with its ratio to api-health's init median
//! and flags those above the goals (1.5× api-health, 24 MiB peak RSS).

// A bench tool: failing loudly is right.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use clap::Parser;
use harness::{local_aws, start_sim, unique_stack, workspace_root};

#[derive(Parser)]
struct Args {
    /// Runs per function.
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

/// (function, sample event, text its first answer contains)
const FUNCTIONS: [(&str, &str, &str); 17] = [
    ("api-health", "health.json", "\"statusCode\":200"),
    ("api-auth", "token-bad-key.json", "\"statusCode\":401"),
    ("api-admin", "list-keys.json", "\"statusCode\":401"),
    ("api-chat", "models.json", "\"statusCode\":401"),
    ("api-jobs", "read-unknown.json", "\"statusCode\":401"),
    ("api-dashboard", "document.json", "\"statusCode\":401"),
    ("api-memory", "get-unknown.json", "\"statusCode\":401"),
    ("api-mcp", "resource-metadata.json", "\"statusCode\":200"),
    ("worker-inference", "batch.json", "batchItemFailures"),
    ("worker-memory-embed", "batch.json", "batchItemFailures"),
    ("job-fleet-probe", "scheduled.json", ""),
    ("job-queue-sweep", "scheduled.json", ""),
    ("job-slo-check", "scheduled.json", ""),
    ("job-drift-detect", "scheduled.json", ""),
    ("job-secret-rotate", "secret-age-audit.json", ""),
    // The hooks refuse a malformed event before any CodeDeploy call.
    ("deploy-pre-traffic", "bad.json", "NonRetryable.Invalid"),
    ("deploy-post-traffic", "bad.json", "NonRetryable.Invalid"),
];

/// `median` of a `coldstart` summary line, e.g. "process start -> init done".
fn median(output: &str, label: &str) -> f64 {
    let line = output
        .lines()
        .find(|line| line.contains(label))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{output}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "median").expect("median");
    words[at + 1].parse().expect("a number")
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let root = workspace_root();
    let release = root.join("target/release");
    let coldstart = release.join("coldstart");
    for (function, _, _) in FUNCTIONS {
        assert!(
            release.join(function).exists(),
            "target/release/{function} is missing: cargo build --release -p {function}"
        );
    }
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("bench-cold"), &[]);
    let sim = start_sim().await;
    let mut env = stack.env_with(&[
        ("FLEET_ENDPOINTS", &format!("primary={}", sim.base_url())),
        ("AWS_ENDPOINT_URL", &aws.endpoint),
    ]);
    // Scheduled jobs read their stack's resources by name; CloudFormation and
    // the rotation Lambdas do not exist locally (what `make dev` skips too).
    env.insert("STACK_NAME".into(), stack.stack.clone());
    env.insert(
        "DRIFT_SKIP".into(),
        "functions,rotation,cloudformation".into(),
    );

    println!(
        "{:<20} {:>10} {:>8} {:>13} {:>10}  (medians of {} runs, interleaved)",
        "function", "init ms", "× health", "1st answer ms", "RSS MiB", args.runs
    );
    // Round-robin, one cold start of each function per round: whatever drifts
    // on the machine meanwhile (its page cache, a neighbour) touches every
    // function alike, and the ratios to api-health stay comparable.
    let mut samples: Vec<[Vec<f64>; 3]> = FUNCTIONS.iter().map(|_| Default::default()).collect();
    let mut commands = commands(&root, &release, &coldstart, &env, &stack);
    for _ in 0..args.runs {
        for (at, command) in commands.iter_mut().enumerate() {
            let (function, _, _) = FUNCTIONS[at];
            let output = command.output().expect("running coldstart");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "{function}: coldstart failed\n{text}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            for (k, label) in ["init done", "1st answer", "peak RSS"].iter().enumerate() {
                samples[at][k].push(median(&text, label));
            }
        }
    }
    let middle = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut health_init = None;
    let mut misses = Vec::new();
    for ((function, _, _), [init, answer, rss]) in FUNCTIONS.iter().zip(samples.iter_mut()) {
        let (init, answer, rss) = (middle(init), middle(answer), middle(rss));
        let base = *health_init.get_or_insert(init);
        let ratio = init / base;
        if ratio > 1.5 {
            misses.push(format!("{function}: init {ratio:.2}× api-health's"));
        }
        if rss > 24.0 {
            misses.push(format!("{function}: peak RSS {rss:.1} MiB"));
        }
        println!("{function:<20} {init:>10.2} {ratio:>8.2} {answer:>13.2} {rss:>10.2}");
    }
    if misses.is_empty() {
        println!("every function within the goals (init ≤ 1.5× api-health, RSS ≤ 24 MiB)");
    } else {
        println!("above the goals: {}", misses.join("; "));
    }
}

/// One `coldstart --runs 1` command per function, in [`FUNCTIONS`]' order.
fn commands(
    root: &Path,
    release: &Path,
    coldstart: &Path,
    env: &std::collections::HashMap<String, String>,
    stack: &harness::Provisioned,
) -> Vec<Command> {
    let mut commands = Vec::new();
    for (function, event, expect) in FUNCTIONS {
        // The function's own template variables (e.g. the hooks' NEW_VERSIONS)
        // under the stack-wide ones.
        let own = stack.report["functions"][function]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut env = env.clone();
        for (key, value) in own {
            env.entry(key)
                .or_insert_with(|| value.as_str().unwrap_or_default().to_owned());
        }
        let event = Path::new("events").join(function).join(event);
        let mut command = Command::new(coldstart);
        command
            .current_dir(root)
            .arg("--binary")
            .arg(release.join(function))
            .arg("--event")
            .arg(&event)
            .args(["--runs", "1", "--expect", expect]);
        for (key, value) in &env {
            command.arg("--env").arg(format!("{key}={value}"));
        }
        commands.push(command);
    }
    commands
}
