//! The invariants, checked from the stored state after the traffic has
//! stopped and the faults are healed: the tables, queues and metrics the
//! functions wrote, never their logs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use sophia_shared::clock::{now_secs, utc_date};

use crate::stack::{Stack, Tenant};
use crate::traffic::{Ledger, Outcome};

/// One invariant's verdict.
#[derive(Debug)]
pub struct Verdict {
    pub name: &'static str,
    pub held: bool,
    pub detail: String,
}

fn verdict(name: &'static str, held: bool, detail: String) -> Verdict {
    Verdict { name, held, detail }
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

/// Chat completions billed to `tenant` today and yesterday (UTC), from the
/// usage rows (embeddings, billed for memory recalls, are rows of their own
/// model): (billed, of them billed by the sweep's recovery for an instance
/// that died before billing, with the prompt's estimate).
async fn billed_requests(stack: &Stack, tenant: &str) -> Result<(f64, f64), String> {
    let today = now_secs();
    let first = utc_date(today.saturating_sub(86_400));
    let rows = sophia_shared::inference::usage_rows::read(
        &stack.dynamodb,
        stack.var("USAGE_TABLE")?,
        tenant,
        &first,
        &utc_date(today),
    )
    .await?;
    let chat_models = stack.var("CHAT_MODELS")?;
    let chat = rows
        .iter()
        .filter(|r| chat_models.split(',').any(|m| m == r.model));
    let billed = chat.clone().map(|r| r.requests - r.cached_requests).sum();
    let recovered = chat.map(|r| r.recovered_requests).sum();
    Ok((billed, recovered))
}

async fn job_states(
    stack: &Stack,
    ids: &[String],
) -> Result<HashMap<String, (String, bool)>, String> {
    let table = stack.var("JOBS_TABLE")?;
    let mut states = HashMap::new();
    for id in ids {
        let item = stack
            .dynamodb
            .get_item()
            .table_name(table)
            .key("pk", s(&format!("job#{id}")))
            .key("sk", s("job"))
            .consistent_read(true)
            .send()
            .await
            .map_err(sophia_shared::aws::error_text)?
            .item;
        let text = |name: &str| {
            item.as_ref()
                .and_then(|i| i.get(name))
                .and_then(|v| v.as_s().ok())
                .cloned()
        };
        let status = text("status").unwrap_or_else(|| "MISSING".to_owned());
        let explained = text("error_code").is_some() && text("error_message").is_some();
        states.insert(id.clone(), (status, explained));
    }
    Ok(states)
}

/// Waits (at most `limit`) until every accepted job is DONE or FAILED and the
/// jobs queue is empty, running the sweep meanwhile (it bills stranded answers
/// and fails dead-lettered jobs). True when everything settled in time.
pub async fn drain(stack: &Stack, ledger: &Ledger, limit: Duration) -> Result<bool, String> {
    let deadline = Instant::now() + limit;
    let queue = stack.var("JOBS_QUEUE_URL")?.to_owned();
    let mut settled_at: Option<Instant> = None;
    loop {
        let _ = stack
            .invoke(
                "job-queue-sweep",
                &serde_json::json!({"run": "chaos-drain"}),
            )
            .await;
        let states = job_states(stack, &ledger.jobs).await?;
        let open = states
            .values()
            .filter(|(status, _)| status != "DONE" && status != "FAILED")
            .count();
        let attributes = stack
            .sqs
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .map_err(sophia_shared::aws::error_text)?;
        let count = |name: aws_sdk_sqs::types::QueueAttributeName| {
            attributes
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let queued = count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            + count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
        // Finished jobs may leave duplicate deliveries queued for a while (a
        // stranded job's message sent twice); they are acknowledged as such.
        let waited = settled_at.is_some_and(|at: Instant| at.elapsed() > Duration::from_secs(30));
        if open == 0 && (queued == 0 || waited) {
            return Ok(true);
        }
        if open == 0 && settled_at.is_none() {
            settled_at = Some(Instant::now());
        }
        if Instant::now() > deadline {
            println!(
                "  chaos: drain gave up: {open} job(s) not finished, {queued} message(s) queued"
            );
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Every job answered 202 ran once in effect: DONE, or FAILED with a reason;
/// the tenant was billed exactly once per DONE job; the dead letters are
/// jobs that ended FAILED.
pub async fn jobs(
    stack: &Stack,
    ledger: &Ledger,
    admin_token: &str,
) -> Result<Vec<Verdict>, String> {
    let states = job_states(stack, &ledger.jobs).await?;
    let done = states.values().filter(|(s, _)| s == "DONE").count();
    let failed: Vec<_> = states.iter().filter(|(_, (s, _))| s == "FAILED").collect();
    let unexplained = failed.iter().filter(|(_, (_, e))| !e).count();
    let open: Vec<String> = states
        .iter()
        .filter(|(_, (s, _))| s != "DONE" && s != "FAILED")
        .map(|(id, (s, _))| format!("{id} {s}"))
        .collect();
    let (billed, _) = billed_requests(stack, "chaos-jobs").await?;
    let (_, letters) = stack
        .get_json(
            "/v1/admin/queues/jobs/dead-letters",
            admin_token,
            Duration::from_secs(30),
        )
        .await?;
    let dead_ids: Vec<String> = letters["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let body: Value = serde_json::from_str(m["body"].as_str()?).ok()?;
            body["job_id"].as_str().map(str::to_owned)
        })
        .collect();
    let unexplained_letters: Vec<&String> = dead_ids
        .iter()
        .filter(|id| {
            states
                .get(*id)
                .is_some_and(|(s, _)| s != "FAILED" && s != "DONE")
        })
        .collect();
    Ok(vec![
        verdict(
            "every accepted job finished once",
            open.is_empty() && unexplained == 0 && ledger.replay_mismatches.is_empty(),
            format!(
                "{} accepted: {done} done, {} failed ({unexplained} without a reason), {} not finished {:?}; {} Idempotency-Key replay mismatches {:?}",
                states.len(),
                failed.len(),
                open.len(),
                open.iter().take(5).collect::<Vec<_>>(),
                ledger.replay_mismatches.len(),
                ledger.replay_mismatches.iter().take(3).collect::<Vec<_>>()
            ),
        ),
        verdict(
            "no job billed twice or lost",
            billed == done as f64,
            format!("{billed} requests billed to chaos-jobs for {done} done jobs"),
        ),
        verdict(
            "the dead letters are explained",
            unexplained_letters.is_empty(),
            format!(
                "{} job message(s) in the dead-letter queue, {} of them for jobs not FAILED or DONE",
                dead_ids.len(),
                unexplained_letters.len()
            ),
        ),
    ])
}

/// Every 201 memory exists, with its vector filled once the fleet came back.
pub async fn memories(
    stack: &Stack,
    ledger: &Ledger,
    token: &str,
    limit: Duration,
) -> Result<Verdict, String> {
    let deadline = Instant::now() + limit;
    let mut missing = Vec::new();
    let mut pending = Vec::new();
    loop {
        missing.clear();
        pending.clear();
        for id in &ledger.memories {
            let (status, memory) = stack
                .get_json(&format!("/v1/memory/{id}"), token, Duration::from_secs(30))
                .await?;
            if status != 200 {
                missing.push(format!("{id}: {status}"));
                continue;
            }
            if memory["vector"] != "ready" {
                pending.push(id.clone());
            }
        }
        if !missing.is_empty() || pending.is_empty() || Instant::now() > deadline {
            break;
        }
        // The sweep re-sends stranded vectors; the embed worker fills them.
        let _ = stack
            .invoke(
                "job-queue-sweep",
                &serde_json::json!({"run": "chaos-vectors"}),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(verdict(
        "every stored memory exists with its vector",
        missing.is_empty() && pending.is_empty(),
        format!(
            "{} stored: {} missing {:?}, {} without a vector {:?}",
            ledger.memories.len(),
            missing.len(),
            missing.iter().take(3).collect::<Vec<_>>(),
            pending.len(),
            pending.iter().take(3).collect::<Vec<_>>()
        ),
    ))
}

/// Every whole chat answer billed exactly once, nothing billed without one,
/// and no request still owed in the ledger.
pub async fn billing(stack: &Stack, ledger: &Ledger) -> Result<Vec<Verdict>, String> {
    let complete = ledger
        .records
        .iter()
        .filter(|r| r.route.starts_with("chat") && r.outcome == Outcome::Complete)
        .count() as f64;
    let broken = ledger
        .records
        .iter()
        .filter(|r| r.route.starts_with("chat") && r.outcome == Outcome::Broken)
        .count();
    let (chat, chat_recovered) = billed_requests(stack, "chaos-chat").await?;
    let (tools, tools_recovered) = billed_requests(stack, "chaos-tools").await?;
    // A recovered bill is an answer whose instance died before billing it: the
    // fleet did the work, the caller may have had none of it (documented).
    let lost = ledger
        .records
        .iter()
        .filter(|r| r.route.starts_with("chat") && r.outcome == Outcome::NoAnswer)
        .count() as f64;
    let owed = sophia_shared::inference::ledger::Ledger::new(
        stack.dynamodb.clone(),
        stack.var("USAGE_TABLE")?.to_owned(),
    )
    .unsettled(u64::MAX, 1)
    .await?;
    let owed: Vec<String> = owed
        .iter()
        .filter(|o| o.tenant.starts_with("chaos-"))
        .map(|o| format!("{} {}", o.tenant, o.request_id))
        .collect();
    Ok(vec![
        verdict(
            "every whole chat answer billed exactly once",
            chat - chat_recovered == complete && chat_recovered <= lost,
            format!(
                "{chat} requests billed to chaos-chat for {complete} whole answers, {chat_recovered} of them by the recovery for {lost} requests without an answer ({broken} streams broken off by the fleet, not billed)"
            ),
        ),
        verdict(
            "every completed chat_complete tool call billed exactly once",
            tools == ledger.tool_completions as f64 && tools_recovered == 0.0,
            format!(
                "{tools} requests billed to chaos-tools for {} completions",
                ledger.tool_completions
            ),
        ),
        verdict(
            "no answer still owed",
            owed.is_empty(),
            format!(
                "{} ledger entries of chaos tenants left {:?}",
                owed.len(),
                owed.iter().take(3).collect::<Vec<_>>()
            ),
        ),
    ])
}

/// Every refusal was a problem+json with `Retry-After` where retrying helps;
/// no 500 of ours; every request got an answer.
pub fn answers(ledger: &Ledger) -> Vec<Verdict> {
    let refusals: Vec<_> = ledger.records.iter().filter(|r| r.status >= 400).collect();
    let not_problem: Vec<String> = refusals
        .iter()
        .filter(|r| r.problem.is_none() && !r.emulator)
        .map(|r| format!("{} {} at {:.0} s", r.route, r.status, r.at))
        .collect();
    let no_retry_after: Vec<String> = refusals
        .iter()
        .filter(|r| matches!(r.status, 429 | 503) && !r.retry_after)
        .map(|r| format!("{} {} at {:.0} s", r.route, r.status, r.at))
        .collect();
    let ours_500: Vec<String> = refusals
        .iter()
        .filter(|r| r.status == 500 && !r.emulator)
        .map(|r| format!("{} at {:.0} s: {:?}", r.route, r.at, r.problem))
        .collect();
    let emulator = refusals.iter().filter(|r| r.emulator).count();
    let unanswered = ledger
        .records
        .iter()
        .filter(|r| r.outcome == Outcome::NoAnswer)
        .count();
    vec![
        verdict(
            "every refusal is a problem, retryable ones say when",
            not_problem.is_empty() && no_retry_after.is_empty(),
            format!(
                "{} refusals; {} not problem+json {:?}; {} 429/503 without Retry-After {:?}",
                refusals.len(),
                not_problem.len(),
                not_problem.iter().take(3).collect::<Vec<_>>(),
                no_retry_after.len(),
                no_retry_after.iter().take(3).collect::<Vec<_>>()
            ),
        ),
        verdict(
            "no 500 of ours, every request answered",
            ours_500.is_empty() && unanswered == 0,
            format!(
                "{} 500s of ours {:?}; {emulator} of cargo lambda watch's own 500 (the emulator, not a function: counted, not ours); {unanswered} without an answer",
                ours_500.len(),
                ours_500.iter().take(3).collect::<Vec<_>>()
            ),
        ),
    ]
}

/// The breakers opened during the faults and closed again: the fleet
/// client's `BreakerTransitions` metric (EMF, shipped to the local CloudWatch).
pub async fn breakers(stack: &Stack, since: u64) -> Result<Verdict, String> {
    let (opened, closed) = breaker_transitions(stack, since).await?;
    Ok(verdict(
        "breakers opened and closed again",
        opened > 0.0 && closed > 0.0,
        format!("{opened} transitions to open, {closed} to closed"),
    ))
}

/// (transitions to open, transitions to closed) since `since`, every endpoint.
pub async fn breaker_transitions(stack: &Stack, since: u64) -> Result<(f64, f64), String> {
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
    let mut queries = Vec::new();
    for (i, (endpoint, _)) in stack.fleet.iter().enumerate() {
        for to in ["open", "closed"] {
            queries.push(
                MetricDataQuery::builder()
                    .id(format!("m{i}{to}"))
                    .metric_stat(
                        MetricStat::builder()
                            .metric(
                                Metric::builder()
                                    .namespace("Sophia")
                                    .metric_name("BreakerTransitions")
                                    .dimensions(
                                        Dimension::builder()
                                            .name("Endpoint")
                                            .value(endpoint)
                                            .build(),
                                    )
                                    .dimensions(Dimension::builder().name("To").value(to).build())
                                    .build(),
                            )
                            .period(60)
                            .stat("Sum")
                            .build(),
                    )
                    .build(),
            );
        }
    }
    let end = (now_secs() / 60 + 2) * 60;
    let data = stack
        .cloudwatch
        .get_metric_data()
        .set_metric_data_queries(Some(queries))
        .start_time(aws_smithy_types::DateTime::from_secs(since as i64 - 120))
        .end_time(aws_smithy_types::DateTime::from_secs(end as i64))
        .send()
        .await
        .map_err(sophia_shared::aws::error_text)?;
    let sum = |suffix: &str| -> f64 {
        data.metric_data_results()
            .iter()
            .filter(|r| r.id().is_some_and(|id| id.ends_with(suffix)))
            .flat_map(|r| r.values().iter().copied())
            .sum()
    };
    Ok((sum("open"), sum("closed")))
}

/// The SLO job's alerts match its own evaluation: every row its stored
/// status says is firing has a firing alert, and no other row does.
pub async fn slo_alerts(stack: &Stack) -> Result<Verdict, String> {
    let table = stack.var("STATE_TABLE")?;
    // Every SLO the job evaluated (a scan is fine on the local state table).
    let statuses = stack
        .dynamodb
        .scan()
        .table_name(table)
        .filter_expression("begins_with(pk, :slo) AND sk = :status")
        .expression_attribute_values(":slo", s("slo#"))
        .expression_attribute_values(":status", s("status"))
        .send()
        .await
        .map_err(sophia_shared::aws::error_text)?;
    let mut mismatched = Vec::new();
    let mut firing = Vec::new();
    for status in statuses.items() {
        let Some(name) = status
            .get("pk")
            .and_then(|v| v.as_s().ok())
            .and_then(|pk| pk.strip_prefix("slo#"))
        else {
            continue;
        };
        let body: Value = status
            .get("status")
            .and_then(|v| v.as_s().ok())
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null);
        let rows: Vec<String> = body["firing"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        for row in ["page-fast", "page-slow", "ticket"] {
            let alert = stack
                .dynamodb
                .get_item()
                .table_name(table)
                .key("pk", s(&format!("alert#slo#{name}#{row}")))
                .key("sk", s("state"))
                .send()
                .await
                .map_err(sophia_shared::aws::error_text)?
                .item;
            let alerting = alert
                .as_ref()
                .and_then(|a| a.get("firing"))
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false);
            let evaluated = rows.iter().any(|r| r == row);
            if alerting {
                firing.push(format!("{name} {row}"));
            }
            if alerting != evaluated {
                mismatched.push(format!(
                    "{name} {row}: alert {alerting}, evaluation {evaluated}"
                ));
            }
        }
    }
    Ok(verdict(
        "the SLO alerts are the SLO job's evaluation",
        mismatched.is_empty(),
        format!(
            "firing now: {firing:?}; mismatches: {mismatched:?} (a burn of the 5 m/1 h row resolves 5 minutes after the faults; the longer rows need their long window to pass)"
        ),
    ))
}

/// Each chaos tenant's audit chain still verifies.
pub async fn audit(stack: &Stack, tenants: &[&Tenant]) -> Result<Verdict, String> {
    let mut broken = Vec::new();
    let mut entries = 0;
    for tenant in tenants {
        let token = stack.token(tenant).await?;
        let (status, body) = stack
            .get_json("/v1/admin/audit/verify", &token, Duration::from_secs(60))
            .await?;
        entries += body["entries"].as_u64().unwrap_or(0);
        if body["intact"] != true {
            broken.push(format!("{}: {status} {body}", tenant.name));
        }
    }
    Ok(verdict(
        "the audit chains verify",
        broken.is_empty(),
        format!(
            "{entries} entries over {} tenants; broken: {broken:?}",
            tenants.len()
        ),
    ))
}
