//! The fault timeline: what is broken when, applied and healed on schedule,
//! with the scheduled jobs (probe, SLO check, sweep) running throughout as
//! EventBridge Scheduler would run them.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sophia_shared::jobs::JobStatus;
use sophia_shared::jobs::store::JobStore;

use crate::stack::{Launch, Stack, listening, signal};

/// One fault of the timeline, `from`..`to` seconds after the traffic starts.
#[derive(Debug, Clone)]
pub struct Window {
    pub name: &'static str,
    pub from: f64,
    pub to: f64,
    pub fault: Fault,
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// A fleet simulator's fault mode (`/_sim/fault`) on endpoint `0`.
    Sim(&'static str, Value),
    /// The simulator process of an endpoint killed (connections refused), then started again.
    SimDown(&'static str),
    /// The jobs queue's consumer killed with SIGKILL while a batch is running, started again at once.
    ConsumerKilled,
    /// The jobs queue's consumer stopped (SIGSTOP), then continued.
    ConsumerStopped,
    /// The local AWS paused (SIGSTOP: every call hangs), then continued.
    AwsPaused,
    /// The fleet token rotated (the four steps of job-secret-rotate).
    TokenRotated,
}

/// The timeline for a run of `seconds`: every fault in its own slot, some
/// overlapping. Runs shorter than two minutes leave out the consumer kill (its
/// batch comes back only after the queue's 180 s visibility timeout) and the
/// simulator restart.
pub fn timeline(seconds: f64) -> Vec<Window> {
    let at = |share: f64| seconds * share;
    let mut windows = vec![
        Window {
            name: "primary black hole",
            from: at(0.05),
            to: at(0.17),
            fault: Fault::Sim("primary", json!({"mode": "black_hole"})),
        },
        Window {
            name: "secondary 500 burst",
            from: at(0.10),
            to: at(0.16),
            fault: Fault::Sim("secondary", json!({"mode": "error", "status": 500})),
        },
        Window {
            name: "primary 500 burst",
            from: at(0.18),
            to: at(0.25),
            fault: Fault::Sim("primary", json!({"mode": "error", "status": 500})),
        },
        Window {
            name: "primary 429 Retry-After",
            from: at(0.27),
            to: at(0.34),
            fault: Fault::Sim(
                "primary",
                json!({"mode": "rate_limit", "retry_after_secs": 1}),
            ),
        },
        Window {
            name: "primary drops streams",
            from: at(0.36),
            to: at(0.44),
            fault: Fault::Sim("primary", json!({"mode": "drop_stream", "after_chunks": 2})),
        },
        Window {
            name: "primary slow start",
            from: at(0.46),
            to: at(0.52),
            fault: Fault::Sim("primary", json!({"mode": "slow_start", "delay_ms": 800})),
        },
        Window {
            name: "jobs consumer stopped",
            from: at(0.54),
            to: at(0.62),
            fault: Fault::ConsumerStopped,
        },
        Window {
            name: "local AWS paused",
            from: at(0.66),
            to: at(0.66) + 3.0,
            fault: Fault::AwsPaused,
        },
        Window {
            name: "fleet token rotated",
            from: at(0.80),
            to: at(0.80),
            fault: Fault::TokenRotated,
        },
    ];
    if seconds >= 120.0 {
        windows.push(Window {
            name: "jobs consumer killed mid-batch",
            from: at(0.30),
            to: at(0.30),
            fault: Fault::ConsumerKilled,
        });
        windows.push(Window {
            name: "primary process down",
            from: at(0.84),
            to: at(0.92),
            fault: Fault::SimDown("primary"),
        });
    }
    windows.sort_by(|a, b| a.from.total_cmp(&b.from));
    windows
}

/// What the injector did, for the report.
#[derive(Debug, Default)]
pub struct Injected {
    pub events: Vec<String>,
    pub errors: Vec<String>,
    /// Processes started again here, stopped at the end of the run.
    pub restarted: Vec<tokio::process::Child>,
    /// Parts killed and waiting to be started again, with how they were started.
    killed: Vec<(String, Launch)>,
    /// Parts started again here: their pids now (the stack's parts file has the old).
    replaced: Vec<(String, u32)>,
}

impl Injected {
    /// The pid of part `name` now.
    fn pid(&self, stack: &Stack, name: &str) -> Result<u32, String> {
        match self.replaced.iter().rev().find(|(part, _)| part == name) {
            Some((_, pid)) => Ok(*pid),
            None => stack.part(name),
        }
    }

    /// Keeps a part started again here, and its pid under the part's name.
    fn started_again(&mut self, name: &str, child: tokio::process::Child) {
        if let Some(pid) = child.id() {
            self.replaced.push((name.to_owned(), pid));
        }
        self.restarted.push(child);
    }
}

impl Injected {
    fn note(&mut self, started: Instant, what: String) {
        let line = format!("{:6.1} s  {what}", started.elapsed().as_secs_f64());
        println!("  chaos: {line}");
        self.events.push(line);
    }

    fn fail(&mut self, started: Instant, what: String) {
        let line = format!("{:6.1} s  {what}", started.elapsed().as_secs_f64());
        eprintln!("  chaos: FAILED {line}");
        self.errors.push(line);
    }
}

fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// Applies the timeline from `started` until `until` while the scheduled jobs
/// run every `every` beside it (a slow run never delays a fault); heals
/// everything before returning.
pub async fn run(
    stack: &Stack,
    windows: &[Window],
    started: Instant,
    until: Instant,
    every: Duration,
) -> Injected {
    let (mut injected, scheduled) = tokio::join!(
        timeline_until(stack, windows, started, until),
        scheduler(stack, started, until, every)
    );
    injected.events.extend(scheduled.events);
    injected.events.sort();
    injected
}

async fn scheduler(stack: &Stack, started: Instant, until: Instant, every: Duration) -> Injected {
    let mut notes = Injected::default();
    let mut runs = 0u64;
    while Instant::now() < until {
        let next = Instant::now() + every;
        runs += 1;
        scheduled_jobs(stack, runs, started, &mut notes).await;
        tokio::time::sleep_until(next.into()).await;
    }
    notes
}

async fn timeline_until(
    stack: &Stack,
    windows: &[Window],
    started: Instant,
    until: Instant,
) -> Injected {
    let mut injected = Injected::default();
    let mut applied = vec![false; windows.len()];
    let mut healed = vec![false; windows.len()];
    let mut paused_consumer: Option<u32> = None;
    while Instant::now() < until {
        let now = started.elapsed().as_secs_f64();
        for (i, window) in windows.iter().enumerate() {
            if !applied[i] && now >= window.from {
                applied[i] = true;
                apply(stack, window, started, &mut injected, &mut paused_consumer).await;
            }
            if applied[i] && !healed[i] && now >= window.to {
                healed[i] = true;
                heal(stack, window, started, &mut injected, &mut paused_consumer).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, window) in windows.iter().enumerate() {
        if applied[i] && !healed[i] {
            heal(stack, window, started, &mut injected, &mut paused_consumer).await;
        }
    }
    injected
}

/// The probe every run, the sweep every run, the SLO check every other run.
pub async fn scheduled_jobs(stack: &Stack, run: u64, started: Instant, injected: &mut Injected) {
    let event = json!({"run": format!("chaos-{run}")});
    let mut functions = vec!["job-fleet-probe", "job-queue-sweep"];
    if run.is_multiple_of(2) {
        functions.push("job-slo-check");
    }
    for function in functions {
        if let Err(error) = stack.invoke(function, &event).await {
            // A scheduled run that fails is retried by its schedule; during
            // faults that is expected, and the report lists it.
            injected.note(
                started,
                format!("{function} run failed (its schedule retries): {error}"),
            );
        }
    }
}

async fn apply(
    stack: &Stack,
    window: &Window,
    started: Instant,
    injected: &mut Injected,
    paused_consumer: &mut Option<u32>,
) {
    let outcome: Result<String, String> = match &window.fault {
        Fault::Sim(endpoint, fault) => stack
            .fault(endpoint, fault)
            .await
            .map(|()| format!("{}: on", window.name)),
        Fault::SimDown(endpoint) => sim_down(stack, injected, endpoint).map(|launch| {
            injected.killed.push(((*endpoint).to_owned(), launch));
            format!("{}: killed", window.name)
        }),
        Fault::ConsumerKilled => consumer_killed(stack, injected).await,
        Fault::ConsumerStopped => injected.pid(stack, "jobs-event-source").and_then(|pid| {
            signal(pid, "STOP")?;
            *paused_consumer = Some(pid);
            Ok(format!("{}: SIGSTOP", window.name))
        }),
        Fault::AwsPaused => stack
            .part("local-aws")
            .and_then(|pid| signal(pid, "STOP"))
            .map(|()| format!("{}: SIGSTOP", window.name)),
        Fault::TokenRotated => rotate(stack)
            .await
            .map(|()| format!("{}: the four steps done", window.name)),
    };
    match outcome {
        Ok(what) => injected.note(started, what),
        Err(error) => injected.fail(started, format!("{}: {error}", window.name)),
    }
}

async fn heal(
    stack: &Stack,
    window: &Window,
    started: Instant,
    injected: &mut Injected,
    paused_consumer: &mut Option<u32>,
) {
    let outcome: Result<Option<String>, String> = match &window.fault {
        Fault::Sim(endpoint, _) => stack
            .fault(endpoint, &json!({}))
            .await
            .map(|()| Some(format!("{}: healed", window.name))),
        Fault::SimDown(endpoint) => sim_up(stack, endpoint, injected)
            .await
            .map(|()| Some(format!("{}: started again", window.name))),
        Fault::ConsumerStopped => match paused_consumer.take() {
            Some(pid) => signal(pid, "CONT").map(|()| Some(format!("{}: SIGCONT", window.name))),
            None => Ok(None),
        },
        Fault::AwsPaused => stack
            .part("local-aws")
            .and_then(|pid| signal(pid, "CONT"))
            .map(|()| Some(format!("{}: SIGCONT", window.name))),
        Fault::ConsumerKilled | Fault::TokenRotated => Ok(None),
    };
    match outcome {
        Ok(Some(what)) => injected.note(started, what),
        Ok(None) => {}
        Err(error) => injected.fail(started, format!("{}: healing: {error}", window.name)),
    }
}

/// Kills an endpoint's simulator; how it was started, read before it is gone.
fn sim_down(stack: &Stack, injected: &Injected, endpoint: &str) -> Result<Launch, String> {
    let pid = injected.pid(stack, &format!("fleet-sim:{endpoint}"))?;
    let launch = Launch::of(pid)?;
    signal(pid, "KILL")?;
    Ok(launch)
}

async fn sim_up(stack: &Stack, endpoint: &str, injected: &mut Injected) -> Result<(), String> {
    let index = injected
        .killed
        .iter()
        .position(|(e, _)| e == endpoint)
        .ok_or("no launch recorded")?;
    let (_, launch) = injected.killed.remove(index);
    // It must accept the fleet token as it is now (a rotation may have run).
    let token = current_token(stack).await?;
    let log = stack
        .state_dir
        .join(format!("fleet-sim-{endpoint}-restarted.log"));
    let child = launch.start(&[("FLEET_SIM_TOKEN", token)], &log)?;
    injected.started_again(&format!("fleet-sim:{endpoint}"), child);
    let url = stack
        .fleet
        .iter()
        .find(|(n, _)| n == endpoint)
        .map(|(_, u)| u.clone())
        .unwrap_or_default();
    let port = port_of(&url).ok_or("no port in the endpoint URL")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !listening(port) {
        if Instant::now() > deadline {
            return Err(format!("{endpoint} did not listen again within 15 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn current_token(stack: &Stack) -> Result<String, String> {
    stack
        .secrets
        .get_secret_value()
        .secret_id(stack.var("FLEET_TOKEN_SECRET")?)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .map_err(sophia_shared::aws::error_text)?
        .secret_string()
        .map(str::to_owned)
        .ok_or_else(|| "the fleet token has no string".to_owned())
}

/// Kills the jobs queue's consumer while the worker runs a batch, and starts
/// it again at once: the batch's messages come back after their visibility
/// timeout, and its jobs must still run once in effect.
async fn consumer_killed(stack: &Stack, injected: &mut Injected) -> Result<String, String> {
    let pid = injected.pid(stack, "jobs-event-source")?;
    let launch = Launch::of(pid)?;
    // Wait (at most 10 s) for a batch in flight: a job RUNNING.
    // Retention only matters to writes; this store only counts.
    let jobs = JobStore::new(
        stack.dynamodb.clone(),
        stack.sqs.clone(),
        stack.var("JOBS_TABLE")?.to_owned(),
        stack.var("JOBS_QUEUE_URL")?.to_owned(),
        86_400,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut running = 0;
    while Instant::now() < deadline {
        running = jobs
            .count("chaos-jobs", JobStatus::Running)
            .await
            .unwrap_or(0);
        if running > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, "KILL")?;
    let log = stack.state_dir.join("event-source-restarted.log");
    injected.started_again("jobs-event-source", launch.start(&[], &log)?);
    Ok(format!(
        "jobs consumer killed mid-batch ({running} job(s) running) and started again"
    ))
}

/// The fleet token's four rotation steps (what Secrets Manager invokes).
async fn rotate(stack: &Stack) -> Result<(), String> {
    let secret = stack.var("FLEET_TOKEN_SECRET")?.to_owned();
    let token = uuid::Uuid::new_v4().to_string();
    for step in ["createSecret", "setSecret", "testSecret", "finishSecret"] {
        let event = json!({"SecretId": secret, "ClientRequestToken": token, "Step": step});
        stack.invoke("job-secret-rotate", &event).await?;
    }
    Ok(())
}
