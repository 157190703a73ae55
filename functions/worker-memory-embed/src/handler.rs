//! Fills memory vectors: each message names a memory (tenant, user, ID) whose
//! vector is pending because the fleet could not embed it when it was stored.
//!
//! Idempotent: a memory that is gone or already has its vector is acknowledged;
//! one whose text changed meanwhile is acknowledged too (the change queued its
//! own message). While the fleet is down the record is retried, after
//! `MEMORY_EMBED_RETRY_DELAY_SECS` (15) doubled with each delivery rather than
//! the queue's whole visibility timeout (after the queue's `maxReceiveCount`,
//! 5, it goes to the dead-letter queue, which an operator redrives). A message that is not a memory message is retried to the
//! dead-letter queue as well, without holding up the other records of its batch.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use sophia_shared::aws::batch::{
    Outcome, RetryDelay, message_id, process_batch, receive_count, show_again_in,
};
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::inference::Inference;
use sophia_shared::memory::model::MemorySettings;
use sophia_shared::memory::queue::EmbedMessage;
use sophia_shared::memory::service::{Filled, MemoryService};
use sophia_shared::observability::{MetricSet, RequestContext, TraceContext};
use sophia_shared::ops::audit::AuditLog;
use sophia_shared::startup::InitError;

pub const SERVICE: &str = "worker-memory-embed";

pub struct Deps {
    pub memory: Arc<MemoryService>,
    /// Records of one batch embedded at the same time.
    pub concurrency: usize,
    pub sqs: aws_sdk_sqs::Client,
    /// The queue this function consumes (`MEMORY_EMBED_QUEUE_URL`).
    pub queue_url: String,
    /// When a record the fleet could not embed comes back.
    pub retry: RetryDelay,
}

impl Deps {
    /// The memory settings (`MEMORY_*`), inference (`FLEET_*`, `EMBEDDING_MODELS`,
    /// `PRICE_TABLE`, …), `AUDIT_TABLE`; `WORKER_CONCURRENCY` (10),
    /// `MEMORY_EMBED_RETRY_DELAY_SECS` (15, doubled per delivery up to 180).
    pub fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let memory = MemoryService::new(
            MemorySettings::from_env(env)?,
            dynamodb.clone(),
            aws_sdk_sqs::Client::new(sdk),
            Arc::new(Inference::from_env(SERVICE, env, sdk)?),
            AuditLog::new(dynamodb, env.required("AUDIT_TABLE")?),
        );
        let base_secs: i32 = env.parse_or("MEMORY_EMBED_RETRY_DELAY_SECS", 15)?;
        if !(0..=43_200).contains(&base_secs) {
            return Err(ConfigError::new(
                "MEMORY_EMBED_RETRY_DELAY_SECS",
                "must be 0 to 43200 (SQS's limit)",
            )
            .into());
        }
        Ok(Self {
            memory: Arc::new(memory),
            concurrency: env.parse_or("WORKER_CONCURRENCY", 10)?.max(1),
            sqs: aws_sdk_sqs::Client::new(sdk),
            queue_url: env.required("MEMORY_EMBED_QUEUE_URL")?,
            retry: RetryDelay {
                base_secs,
                cap_secs: 180,
            },
        })
    }
}

pub async fn handle(
    deps: &Deps,
    event: SqsEvent,
    context: &lambda_runtime::Context,
) -> SqsBatchResponse {
    let deadline = sophia_shared::observability::deadline_from_epoch_ms(
        context.deadline,
        Duration::from_secs(60),
    );
    let work: Vec<_> = event
        .records
        .iter()
        .map(|record| (message_id(record), run_record(deps, record, deadline)))
        .collect();
    process_batch(work, deps.concurrency).await
}

async fn run_record(deps: &Deps, record: &SqsMessage, deadline: std::time::Instant) -> Outcome {
    let body = record.body.as_deref().unwrap_or_default();
    let message: EmbedMessage = match serde_json::from_str(body) {
        Ok(message) => message,
        Err(error) => {
            // Kept for the dead-letter queue, where a person can look at it.
            return Outcome::Retry(format!("not a memory message: {error}"));
        }
    };
    let id = message_id(record);
    let ctx = RequestContext {
        request_id: id.clone(),
        correlation_id: id,
        trace: TraceContext::of_current_span(),
        deadline,
    };
    let outcome = match deps.memory.fill_vector(&message, &ctx).await {
        Ok(Filled::Done) => Outcome::Acknowledged("vector filled"),
        Ok(Filled::NotNeeded) => Outcome::Acknowledged("nothing to do"),
        Ok(Filled::Changed) => {
            Outcome::Acknowledged("the memory changed; its new version has its own message")
        }
        Err(reason) => {
            // Back soon: the fleet is often up again within seconds.
            let delay = deps.retry.after(receive_count(record));
            let receipt = record.receipt_handle.as_deref().unwrap_or_default();
            if let Err(error) = show_again_in(&deps.sqs, &deps.queue_url, receipt, delay).await {
                tracing::warn!(%error, "shortening the retry's wait failed; the visibility timeout applies");
            }
            Outcome::Retry(reason)
        }
    };
    MetricSet::new("Sophia")
        .dimension("Service", SERVICE)
        .count(
            "MemoryVectorsFilled",
            f64::from(u8::from(outcome == Outcome::Acknowledged("vector filled"))),
        )
        .count(
            "MemoryVectorRetries",
            f64::from(u8::from(matches!(outcome, Outcome::Retry(_)))),
        )
        .emit();
    outcome
}
