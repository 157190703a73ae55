//! The jobs queue's consumer: runs each chat-completion job once in effect.
//!
//! Per record (concurrently, each in its own span):
//! 1. claim the job (a conditional PENDING → RUNNING write with a lease that ends at
//!    this invocation's deadline, so a run killed by a timeout can be retried);
//!    a job already DONE or FAILED is a duplicate delivery and is acknowledged, one
//!    held by another live run is retried later;
//! 2. call the fleet through the resilient client, extending the message's
//!    visibility while the call runs;
//! 3. on an answer: DONE with the result and the usage billing in one transaction
//!    (billed exactly when it completes); on a permanent failure: FAILED with the
//!    reason at once; on a transient failure: back to PENDING and a batch item
//!    failure, so SQS redelivers after the visibility timeout. On the last delivery
//!    before the dead-letter queue, the job is marked FAILED (`dead_lettered`) with
//!    the last reason; a redrive runs it again.
//!
//! The answer lists only the failed records (`ReportBatchItemFailures`), so one
//! bad record does not make the whole batch run again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use sophia_shared::aws::batch::{Outcome, RetryDelay, message_id, process_batch, receive_count};
use sophia_shared::clock::now_ms;
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::fleet::client::FleetClient;
use sophia_shared::guard::quota::Quotas;
use sophia_shared::inference::budget::Budgets;
use sophia_shared::inference::usage::{PriceTable, Usage, UsageRecorder};
use sophia_shared::jobs::store::{JobStore, TRACEPARENT_ATTRIBUTE};
use sophia_shared::jobs::{Claim, FailureKind, Job, JobMessage};
use sophia_shared::observability::{MetricSet, RequestContext, TraceContext, otel};
use sophia_shared::problem::ApiError;
use sophia_shared::startup::InitError;
use tracing::Instrument;

pub const SERVICE: &str = "worker-inference";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Records of one batch run at the same time.
    pub concurrency: usize,
    /// How often a running job's message visibility is extended.
    pub heartbeat: Duration,
    /// By how much (seconds) each extension pushes the visibility timeout.
    pub visibility_extension_secs: i32,
    /// The queue's `maxReceiveCount`: the delivery after which SQS dead-letters.
    pub max_receive_count: u32,
    /// A job the fleet failed is delivered again after this many seconds,
    /// doubled with each delivery (at most the visibility extension), not
    /// after the queue's whole visibility timeout.
    pub retry_delay_secs: i32,
}

impl WorkerSettings {
    /// `WORKER_CONCURRENCY` (10), `JOB_HEARTBEAT_SECS` (30),
    /// `JOB_VISIBILITY_EXTENSION_SECS` (180), `JOBS_MAX_RECEIVE_COUNT` (5, as in infra),
    /// `JOB_RETRY_DELAY_SECS` (15).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let settings = Self {
            concurrency: env.parse_or("WORKER_CONCURRENCY", 10)?,
            heartbeat: Duration::from_secs(env.parse_or("JOB_HEARTBEAT_SECS", 30)?),
            visibility_extension_secs: env.parse_or("JOB_VISIBILITY_EXTENSION_SECS", 180)?,
            max_receive_count: env.parse_or("JOBS_MAX_RECEIVE_COUNT", 5)?,
            retry_delay_secs: env.parse_or("JOB_RETRY_DELAY_SECS", 15)?,
        };
        if !(0..=43_200).contains(&settings.retry_delay_secs) {
            return Err(ConfigError::new(
                "JOB_RETRY_DELAY_SECS",
                "must be 0 to 43200 (SQS's limit)",
            ));
        }
        if settings.concurrency == 0 {
            return Err(ConfigError::new("WORKER_CONCURRENCY", "must be at least 1"));
        }
        if settings.heartbeat.is_zero() {
            return Err(ConfigError::new("JOB_HEARTBEAT_SECS", "must be at least 1"));
        }
        if !(1..=43_200).contains(&settings.visibility_extension_secs) {
            return Err(ConfigError::new(
                "JOB_VISIBILITY_EXTENSION_SECS",
                "must be 1 to 43200 (SQS's limit)",
            ));
        }
        if settings.max_receive_count == 0 {
            return Err(ConfigError::new(
                "JOBS_MAX_RECEIVE_COUNT",
                "must be at least 1",
            ));
        }
        Ok(settings)
    }
}

pub struct Deps {
    pub fleet: Arc<FleetClient>,
    pub jobs: JobStore,
    pub prices: PriceTable,
    pub usage: UsageRecorder,
    pub quotas: Arc<Quotas>,
    /// Checked after each job is billed: a spent budget blocks the tenant.
    pub budgets: Budgets,
    pub settings: WorkerSettings,
}

impl Deps {
    /// The fleet variables, `JOBS_TABLE`, `JOBS_QUEUE_URL`, `CHAT_MODELS`,
    /// `PRICE_TABLE`, `USAGE_TABLE`, `AUTH_TABLE`, `STATE_TABLE` and [`WorkerSettings`].
    pub fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let models = env.list("CHAT_MODELS");
        let usage_table = env.required("USAGE_TABLE")?;
        let quotas = Arc::new(Quotas::from_env(env, dynamodb.clone())?);
        Ok(Self {
            fleet: Arc::new(FleetClient::from_env(env, sdk)?),
            jobs: JobStore::from_env(env, sdk)?,
            prices: PriceTable::parse(&env.required("PRICE_TABLE")?, &models)?,
            usage: UsageRecorder::new(dynamodb.clone(), usage_table.clone()),
            budgets: Budgets::new(
                dynamodb,
                env.required("AUTH_TABLE")?,
                usage_table,
                quotas.clone(),
            ),
            quotas,
            settings: WorkerSettings::from_env(env)?,
        })
    }
}

pub async fn handle(
    deps: &Deps,
    event: SqsEvent,
    context: &lambda_runtime::Context,
) -> SqsBatchResponse {
    // The lease ends with this invocation: if it is killed, the job becomes
    // claimable again once the lease has passed.
    let deadline_ms = if context.deadline > 0 {
        context.deadline
    } else {
        now_ms() + 15 * 60 * 1000
    };
    let invocation = context.request_id.as_str();
    let work: Vec<_> = event
        .records
        .iter()
        .map(|record| {
            (
                message_id(record),
                run_record(deps, record, invocation, deadline_ms),
            )
        })
        .collect();
    process_batch(work, deps.settings.concurrency).await
}

/// One record, start to end. Never panics; every path ends in an [`Outcome`].
async fn run_record(
    deps: &Deps,
    record: &SqsMessage,
    invocation: &str,
    deadline_ms: u64,
) -> Outcome {
    let body = record.body.as_deref().unwrap_or_default();
    let Ok(message) = serde_json::from_str::<JobMessage>(body) else {
        // No job to fail: leave the message to the dead-letter queue, where an
        // operator can see it, rather than deleting it.
        tracing::error!(body_bytes = body.len(), "poison message: not a job message");
        return Outcome::Retry("not a job message".to_owned());
    };
    let span = tracing::info_span!("job", otel.kind = "consumer", job_id = %message.job_id);
    // The trace of the request that submitted the job, when it came with one.
    if let Some(traceparent) = record
        .message_attributes
        .get(TRACEPARENT_ATTRIBUTE)
        .and_then(|attribute| attribute.string_value.as_deref())
    {
        otel::continue_from_traceparent(&span, traceparent);
    }
    run_job(deps, record, &message, invocation, deadline_ms)
        .instrument(span)
        .await
}

async fn run_job(
    deps: &Deps,
    record: &SqsMessage,
    message: &JobMessage,
    invocation: &str,
    deadline_ms: u64,
) -> Outcome {
    let receive_count = receive_count(record);
    let owner = format!(
        "{invocation}/{}",
        record.message_id.as_deref().unwrap_or_default()
    );
    let claim = match deps
        .jobs
        .claim(&message.job_id, &owner, deadline_ms + 1000)
        .await
    {
        Ok(claim) => claim,
        Err(error) => return Outcome::Retry(format!("claiming failed: {error}")),
    };
    let (job, attempt) = match claim {
        Claim::Claimed { job, attempt } => (job, attempt),
        Claim::Finished(_) => return Outcome::Acknowledged("duplicate delivery of a finished job"),
        Claim::Missing => return Outcome::Acknowledged("no such job (expired or never stored)"),
        Claim::Busy { lease_until_ms } => {
            return Outcome::Retry(format!(
                "another run holds the job for {} ms more",
                lease_until_ms.saturating_sub(now_ms())
            ));
        }
    };
    let receipt = record.receipt_handle.clone().unwrap_or_default();
    let started = Instant::now();
    let answer = tokio::select! {
        answer = call_fleet(deps, &job, deadline_ms) => answer,
        never = keep_visible(deps, &receipt) => match never {},
    };
    let metrics = MetricSet::new("Sophia")
        .dimension("Service", SERVICE)
        .millis("JobDuration", started.elapsed().as_secs_f64() * 1000.0)
        .property("job_id", job.id.as_str())
        .property("attempt", attempt);
    match answer {
        Ok(reply) => finish(deps, &job, attempt, reply, metrics).await,
        Err(error) if !is_permanent(&error) => {
            metrics.count("JobRetries", 1.0).emit();
            let reason = error.to_string();
            if receive_count >= deps.settings.max_receive_count {
                // This was the last delivery: SQS dead-letters the message next.
                let message = format!(
                    "the job failed on each of its {receive_count} deliveries; last error: {reason}"
                );
                if let Err(error) = deps
                    .jobs
                    .fail(&job.id, attempt, FailureKind::DeadLettered, &message)
                    .await
                {
                    tracing::error!(%error, "marking the job dead-lettered failed");
                }
            } else {
                if let Err(error) = deps.jobs.release(&job.id, attempt, &reason).await {
                    // The lease expires on its own; the retry can claim it then.
                    tracing::warn!(%error, "releasing the job failed");
                }
                // Back soon rather than after the queue's visibility timeout
                // (minutes): a fleet outage is often over in seconds.
                let delay = RetryDelay {
                    base_secs: deps.settings.retry_delay_secs,
                    cap_secs: deps.settings.visibility_extension_secs,
                }
                .after(receive_count);
                if let Err(error) = deps.jobs.extend_visibility(&receipt, delay).await {
                    tracing::warn!(%error, "shortening the retry's wait failed; the visibility timeout applies");
                }
            }
            Outcome::Retry(reason)
        }
        Err(error) => {
            metrics.count("JobsFailed", 1.0).emit();
            match deps
                .jobs
                .fail(&job.id, attempt, FailureKind::Rejected, &error.to_string())
                .await
            {
                Ok(_) => Outcome::Acknowledged("failed permanently"),
                Err(error) => Outcome::Retry(format!("recording the failure failed: {error}")),
            }
        }
    }
}

/// Whether a job's failure is its own (retrying cannot help) rather than the
/// fleet's. Stricter than HTTP retryability: for a caller waiting on a socket a
/// 502 is final, but a queued job can wait for the fleet to recover, so only the
/// request itself being refused fails a job at once.
pub fn is_permanent(error: &ApiError) -> bool {
    match error {
        ApiError::UpstreamRejected { .. }
        | ApiError::InvalidRequest { .. }
        | ApiError::MalformedJson { .. }
        | ApiError::TooDeep { .. }
        | ApiError::PayloadTooLarge { .. }
        | ApiError::UnsupportedMediaType
        | ApiError::NotAcceptable { .. } => true,
        ApiError::BadGateway
        | ApiError::DependencyUnavailable { .. }
        | ApiError::DeadlineExceeded
        | ApiError::NotReady { .. }
        | ApiError::RateLimited { .. }
        | ApiError::QuotaExceeded { .. }
        | ApiError::BudgetExceeded { .. }
        | ApiError::Internal { .. }
        | ApiError::RouteNotFound { .. }
        | ApiError::NotFound { .. }
        | ApiError::IdempotencyKeyReused
        | ApiError::Conflict { .. }
        | ApiError::MethodNotAllowed { .. }
        | ApiError::OriginNotAllowed { .. }
        | ApiError::Unauthorized { .. }
        | ApiError::Forbidden { .. } => false,
    }
}

async fn call_fleet(
    deps: &Deps,
    job: &Job,
    deadline_ms: u64,
) -> Result<sophia_shared::fleet::client::FleetReply, ApiError> {
    let body: serde_json::Value = serde_json::from_str(&job.request)
        .map_err(|error| ApiError::invalid(format!("the stored request is unreadable: {error}")))?;
    let ctx = RequestContext {
        request_id: job.id.clone(),
        correlation_id: job.id.clone(),
        trace: TraceContext::of_current_span(),
        deadline: sophia_shared::observability::deadline_from_epoch_ms(
            deadline_ms,
            Duration::from_secs(900),
        ),
    };
    let permit = deps.fleet.admit().map_err(|error| error.to_api_error())?;
    deps.fleet.chat(permit, &body, &ctx).await.map_err(|error| {
        tracing::warn!(%error, "the fleet did not answer the job");
        error.to_api_error()
    })
}

/// Pushes the message's visibility timeout forward while the job runs, so that a
/// long job is not delivered to a second worker meanwhile. Never returns.
async fn keep_visible(deps: &Deps, receipt: &str) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(deps.settings.heartbeat).await;
        let extended = deps
            .jobs
            .extend_visibility(receipt, deps.settings.visibility_extension_secs)
            .await;
        match extended {
            Ok(()) => tracing::debug!("message visibility extended"),
            Err(error) => tracing::warn!(%error, "extending the message visibility failed"),
        }
    }
}

async fn finish(
    deps: &Deps,
    job: &Job,
    attempt: u32,
    reply: sophia_shared::fleet::client::FleetReply,
    metrics: MetricSet,
) -> Outcome {
    let usage: Usage = serde_json::from_value(reply.body["usage"].clone()).unwrap_or_default();
    let cost = deps.prices.cost_micro_usd(&job.model, &usage);
    let billing = match (
        deps.usage.update(&job.tenant, &job.model, &usage, cost),
        deps.quotas
            .add_tokens_update(&job.tenant, usage.prompt_tokens + usage.completion_tokens),
    ) {
        (Ok(usage), Ok(tokens)) => vec![usage, tokens],
        (Err(error), _) | (_, Err(error)) => {
            return Outcome::Retry(format!("building the billing update failed: {error}"));
        }
    };
    match deps
        .jobs
        .complete(&job.id, attempt, &reply.body.to_string(), billing)
        .await
    {
        Ok(true) => {
            metrics
                .count("JobsCompleted", 1.0)
                .count("PromptTokens", usage.prompt_tokens as f64)
                .count("CompletionTokens", usage.completion_tokens as f64)
                .count("CostMicroUsd", cost)
                .property("tenant", job.tenant.as_str())
                .emit();
            tracing::info!(endpoint = %reply.endpoint, attempts = reply.attempts, "job done");
            deps.budgets.enforce(&job.tenant).await;
            Outcome::Acknowledged("done")
        }
        Ok(false) => {
            // Another run claimed the job after this one's lease passed; that run
            // completes and bills it.
            tracing::warn!("the claim was lost before completing; nothing written or billed");
            Outcome::Acknowledged("claim lost")
        }
        Err(error) => {
            // Nothing was written or billed. Give the job back so the redelivery
            // can run it at once instead of waiting for this run's lease.
            let reason = format!("storing the result failed: {error}");
            if let Err(error) = deps.jobs.release(&job.id, attempt, &reason).await {
                tracing::warn!(%error, "releasing the job failed; its lease expires on its own");
            }
            Outcome::Retry(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_have_defaults_and_bounds() {
        let settings = WorkerSettings::from_env(&Env::new(&[("_", "")])).unwrap();
        assert_eq!(settings.concurrency, 10);
        assert_eq!(settings.max_receive_count, 5);
        assert_eq!(settings.retry_delay_secs, 15);
        for (name, bad) in [
            ("WORKER_CONCURRENCY", "0"),
            ("JOB_HEARTBEAT_SECS", "0"),
            ("JOB_VISIBILITY_EXTENSION_SECS", "50000"),
            ("JOBS_MAX_RECEIVE_COUNT", "0"),
            ("JOB_RETRY_DELAY_SECS", "-1"),
        ] {
            let error = WorkerSettings::from_env(&Env::new(&[(name, bad)])).unwrap_err();
            assert_eq!(error.variable, name);
        }
    }
}
