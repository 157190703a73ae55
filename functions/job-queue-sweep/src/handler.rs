//! Two repairs, both idempotent (running twice changes nothing more):
//!
//! 1. **Stranded jobs.** Submission stores a job, then sends its message. If the
//!    send failed, the job still carries its outbox marker; every job marked for
//!    longer than `SWEEP_STRANDED_AFTER_SECS` (60) is sent again. A job whose
//!    message did go out but whose marker stayed is sent twice, which the worker's
//!    claim makes harmless.
//! 2. **Dead-lettered jobs.** Every message in the jobs dead-letter queue is looked
//!    at (and left there for a redrive); its job, if still PENDING or held by a
//!    run whose lease has passed (a worker that crashed or timed out on every
//!    delivery), becomes FAILED with a reason the user can read. A redrive later
//!    runs it again.
//!
//! 3. **Stranded memory vectors.** The same outbox repair for memories stored
//!    while the fleet could not embed them: their message to worker-memory-embed
//!    is sent again.
//!
//! 4. **Unbilled answers.** api-chat bills a completion after the caller has it,
//!    and keeps a ledger entry for it meanwhile; an entry older than any
//!    invocation can live (`SWEEP_UNBILLED_AFTER_SECS`, 960: Lambda's 900 s
//!    limit and a minute) belongs to an instance that died before billing, and
//!    is billed now, exactly once (see `sophia_shared::inference::ledger`).
//!
//! 5. **Budgets.** Every tenant's cost budget is checked against its spend:
//!    each alert threshold reached alerts once per period, and the hard limit's
//!    block is applied (or lifted) as the budget calls for, should the function
//!    that billed the crossing answer have died before applying it (see
//!    `sophia_shared::inference::budget`).
//!
//! Storage or queue failures are `Retryable` (the schedule retries, then its
//! dead-letter queue keeps the event); bad input is `NonRetryable.Invalid`.

use std::time::Duration;

use lambda_runtime::Diagnostic;
use serde::{Deserialize, Serialize};
use sophia_shared::aws::deadletter::DeadLetterQueue;
use sophia_shared::aws::secrets::SecretToken;
use sophia_shared::clock::{now_ms, now_secs};
use sophia_shared::config::Env;
use sophia_shared::inference::usage::{Billing, Recovery};
use sophia_shared::jobs::JobMessage;
use sophia_shared::jobs::store::JobStore;
use sophia_shared::memory::queue::VectorQueue;
use sophia_shared::memory::store::MemoryStore;
use sophia_shared::observability::MetricSet;
use sophia_shared::ops::alerts::Alerter;
use sophia_shared::outbound::{OutboundClient, OutboundSettings};
use sophia_shared::startup::InitError;

pub const SERVICE: &str = "job-queue-sweep";

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("the event is not a sweep event: {0}")]
    Invalid(String),
    #[error("jobs storage failed: {0}")]
    Storage(String),
    #[error("the dead-letter queue could not be read: {0}")]
    Queue(String),
}

impl From<SweepError> for Diagnostic {
    fn from(error: SweepError) -> Self {
        let error_type = match error {
            SweepError::Invalid(_) => "NonRetryable.Invalid",
            SweepError::Storage(_) => "Retryable.Storage",
            SweepError::Queue(_) => "Retryable.Queue",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

pub struct Deps {
    pub jobs: JobStore,
    pub dead_letters: DeadLetterQueue,
    /// Memories whose vector message may not have been sent.
    pub memory_vectors: VectorQueue,
    pub stranded_after: Duration,
    /// Messages looked at per run.
    pub max_messages: usize,
    /// Bills the ledger entries of answers whose function died before billing them.
    pub billing: Billing,
    pub unbilled_after: Duration,
    /// Budget alerts, de-duplicated per threshold and period.
    pub alerts: Alerter,
}

impl Deps {
    /// `JOBS_TABLE`, `JOBS_QUEUE_URL`, `JOBS_DLQ_URL`, `MEMORY_TABLE`,
    /// `MEMORY_EMBED_QUEUE_URL`, `SWEEP_STRANDED_AFTER_SECS` (60), `SWEEP_MAX_MESSAGES` (500),
    /// `SWEEP_UNBILLED_AFTER_SECS` (960), and billing's `USAGE_TABLE`, `PRICE_TABLE`
    /// (for `CHAT_MODELS` and `EMBEDDING_MODELS`) and quota settings; budget
    /// alerts: `STATE_TABLE`, `ALERT_WEBHOOK_SECRET` (optional: logged only).
    pub fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let jobs = JobStore::from_env(env, sdk)?;
        let dead_letters = DeadLetterQueue::new(
            aws_sdk_sqs::Client::new(sdk),
            "jobs",
            env.required("JOBS_DLQ_URL")?,
            jobs.queue_url().to_owned(),
        );
        let memory_store = MemoryStore::new(
            aws_sdk_dynamodb::Client::new(sdk),
            env.required("MEMORY_TABLE")?,
        );
        Ok(Self {
            memory_vectors: VectorQueue::new(
                aws_sdk_sqs::Client::new(sdk),
                env.required("MEMORY_EMBED_QUEUE_URL")?,
                memory_store,
            ),
            jobs,
            dead_letters,
            stranded_after: Duration::from_secs(env.parse_or("SWEEP_STRANDED_AFTER_SECS", 60)?),
            max_messages: env.parse_or("SWEEP_MAX_MESSAGES", 500)?,
            billing: Billing::from_env(
                SERVICE,
                env,
                aws_sdk_dynamodb::Client::new(sdk),
                &[env.list("CHAT_MODELS"), env.list("EMBEDDING_MODELS")].concat(),
            )?,
            unbilled_after: Duration::from_secs(env.parse_or("SWEEP_UNBILLED_AFTER_SECS", 960)?),
            alerts: Alerter::new(
                aws_sdk_dynamodb::Client::new(sdk),
                env.required("STATE_TABLE")?,
                OutboundClient::new(OutboundSettings::from_env(env)?)?,
                env.optional("ALERT_WEBHOOK_SECRET").map(|id| {
                    SecretToken::new(
                        aws_sdk_secretsmanager::Client::new(sdk),
                        id,
                        Duration::from_secs(300),
                    )
                }),
                SERVICE,
            ),
        })
    }
}

/// The scheduler's input: `{"run": "<aws.scheduler.scheduled-time>"}` (logged only).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepEvent {
    #[serde(default)]
    run: Option<String>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    /// Stranded jobs whose message was sent now.
    pub resent: Vec<String>,
    /// Jobs marked FAILED because their message is dead-lettered.
    pub dead_lettered: Vec<String>,
    /// Dead-letter messages looked at.
    pub dead_letter_messages: usize,
    /// Dead-letter messages that are not job messages (left for an operator).
    pub unreadable_messages: usize,
    /// Memories whose vector message was sent again.
    pub resent_vectors: Vec<String>,
    /// Answers billed now because their function died before billing them.
    pub unbilled: Recovery,
    /// Budget alerts sent now (`budget#<tenant>#<period>#<percent>`).
    pub budget_alerts: Vec<String>,
}

pub async fn handle(deps: &Deps, event: serde_json::Value) -> Result<SweepReport, SweepError> {
    let event: SweepEvent =
        serde_json::from_value(event).map_err(|e| SweepError::Invalid(e.to_string()))?;
    tracing::info!(
        run = event.run.as_deref().unwrap_or("manual"),
        "sweeping the jobs queue"
    );
    let mut report = SweepReport {
        resent_vectors: deps
            .memory_vectors
            .resend_stranded(deps.stranded_after, 100)
            .await
            .map_err(SweepError::Queue)?,
        ..SweepReport::default()
    };
    for id in &report.resent_vectors {
        tracing::warn!(memory_id = %id, "stranded memory vector requested again");
    }

    let cutoff = now_ms().saturating_sub(deps.stranded_after.as_millis() as u64);
    let stranded = deps
        .jobs
        .stranded(cutoff, 100)
        .await
        .map_err(|e| SweepError::Storage(e.to_string()))?;
    for id in stranded {
        match deps.jobs.send(&id).await {
            Ok(()) => {
                tracing::warn!(job_id = %id, "stranded job sent again");
                report.resent.push(id);
            }
            Err(error) => tracing::error!(job_id = %id, %error, "re-sending a stranded job failed"),
        }
    }

    let letters = deps
        .dead_letters
        .peek(deps.max_messages)
        .await
        .map_err(SweepError::Queue)?;
    report.dead_letter_messages = letters.len();
    for letter in letters {
        let Ok(message) = serde_json::from_str::<JobMessage>(&letter.body) else {
            report.unreadable_messages += 1;
            continue;
        };
        let job = deps
            .jobs
            .get(&message.job_id)
            .await
            .map_err(|e| SweepError::Storage(e.to_string()))?;
        let Some(job) = job.filter(|job| !job.status.is_terminal()) else {
            continue;
        };
        let reason = match &job.last_error {
            Some(last) => format!(
                "the job's message was dead-lettered after repeated failed deliveries; last error: {last}"
            ),
            None => "the job's message was dead-lettered: every delivery ended without an answer (the worker timed out or stopped)".to_owned(),
        };
        if deps
            .jobs
            .dead_letter(&job.id, &reason)
            .await
            .map_err(|e| SweepError::Storage(e.to_string()))?
        {
            tracing::warn!(job_id = %job.id, "dead-lettered job marked FAILED");
            report.dead_lettered.push(job.id);
        }
    }
    let cutoff = now_secs().saturating_sub(deps.unbilled_after.as_secs());
    report.unbilled = deps
        .billing
        .recover(cutoff, 1)
        .await
        .map_err(SweepError::Storage)?;
    if report.unbilled != Recovery::default() {
        tracing::warn!(unbilled = ?report.unbilled, "answers billed after their function died");
    }
    report.budget_alerts = deps
        .billing
        .budgets
        .check(&deps.alerts, now_secs())
        .await
        .map_err(SweepError::Storage)?;
    MetricSet::new("Sophia")
        .dimension("Service", SERVICE)
        .count("BudgetAlerts", report.budget_alerts.len() as f64)
        .count(
            "UnbilledAnswersRecovered",
            (report.unbilled.billed_exactly + report.unbilled.billed_estimated) as f64,
        )
        .count("StrandedJobsResent", report.resent.len() as f64)
        .count("DeadLetteredJobs", report.dead_lettered.len() as f64)
        .count("DeadLetterMessages", report.dead_letter_messages as f64)
        .emit();
    Ok(report)
}
