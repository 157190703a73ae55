//! Asynchronous jobs: the record in DynamoDB, its status machine, submission and
//! the queue message that carries a job to the worker.
//!
//! A job is one item (`pk = job#<id>`, `sk = job`) in the jobs table. Every
//! transition is one conditional write, so duplicate deliveries and racing
//! workers cannot run a job twice in effect:
//!
//! ```text
//! PENDING ──claim──▶ RUNNING ──complete (one transaction with billing)──▶ DONE
//!                    RUNNING ──release (transient failure)──▶ PENDING
//!                    RUNNING ──fail (permanent failure)─────▶ FAILED
//! RUNNING whose lease expired ──claim──▶ RUNNING   (the previous run died with its invocation)
//! PENDING or expired RUNNING ──dead_letter──▶ FAILED(dead_lettered)
//! FAILED(dead_lettered) ──claim──▶ RUNNING         (its message was redriven)
//! ```
//!
//! The claim's `attempts` counter is the claim token: only the run holding the
//! latest claim can complete, release or fail the job.
//!
//! Submission writes the job first, with an outbox marker, then sends the message,
//! then clears the marker. If sending fails, the job is still accepted: the queue
//! sweeper (`job-queue-sweep`) finds it through the sparse `outbox` index and
//! sends it again. A duplicate message is harmless because of the claim.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem, Update};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, Env};
use crate::dynamo::{error_text, n, s};
use crate::error::ApiError;

/// The sparse index of jobs whose message may not have been sent yet.
pub const OUTBOX_INDEX: &str = "outbox";
/// Outbox entries are spread over this many index partitions, so that a burst of
/// submissions does not make one GSI partition hot.
const OUTBOX_SHARDS: u8 = 8;
/// DynamoDB items are limited to 400 KB; a result above this is refused.
const MAX_RESULT_BYTES: usize = 350_000;
/// Tries of the completing transaction when it collides with concurrent billing.
const COMPLETE_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Done,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Done => "DONE",
            Self::Failed => "FAILED",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "PENDING" => Some(Self::Pending),
            "RUNNING" => Some(Self::Running),
            "DONE" => Some(Self::Done),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// Why a job failed, as the user reads it in `error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The model refused the request itself; retrying cannot help.
    Rejected,
    /// Every delivery failed and the message went to the dead-letter queue; a
    /// redrive runs the job again.
    DeadLettered,
    /// The answer could not be stored (e.g. too large).
    InvalidResult,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::DeadLettered => "dead_lettered",
            Self::InvalidResult => "invalid_result",
        }
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub tenant: String,
    pub status: JobStatus,
    pub model: String,
    /// The validated upstream request (JSON).
    pub request: String,
    pub request_hash: String,
    pub created_at: u64,
    pub updated_at: u64,
    /// How many runs claimed it; the latest is the claim token.
    pub attempts: u32,
    pub lease_until_ms: Option<u64>,
    /// The chat completion (JSON), once DONE.
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The last transient failure, kept for the dead-letter reason.
    pub last_error: Option<String>,
}

impl Job {
    /// What the API shows: no request body, no internal bookkeeping.
    pub fn to_public_json(&self) -> Value {
        let mut body = json!({
            "id": self.id,
            "object": "job",
            "status": self.status,
            "model": self.model,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attempts": self.attempts,
        });
        if let Some(result) = &self.result {
            body["result"] = serde_json::from_str(result).unwrap_or(Value::Null);
        }
        if let (Some(code), Some(message)) = (&self.error_code, &self.error_message) {
            body["error"] = json!({ "code": code, "message": message });
        }
        body
    }

    fn from_item(
        item: &std::collections::HashMap<String, AttributeValue>,
    ) -> Result<Self, JobError> {
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        let number = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let required = |name: &'static str| text(name).ok_or(JobError::Corrupt(name));
        let status = JobStatus::parse(&required("status")?).ok_or(JobError::Corrupt("status"))?;
        Ok(Self {
            id: required("id")?,
            tenant: required("tenant")?,
            status,
            model: required("model")?,
            request: required("request")?,
            request_hash: required("request_hash")?,
            created_at: number("created_at").unwrap_or(0),
            updated_at: number("updated_at").unwrap_or(0),
            attempts: number("attempts").unwrap_or(0) as u32,
            lease_until_ms: number("lease_until"),
            result: text("result"),
            error_code: text("error_code"),
            error_message: text("error_message"),
            last_error: text("last_error"),
        })
    }
}

/// The queue message: only the ID; the request stays in DynamoDB (no 256 KB limit,
/// no tenant data in the queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    pub job_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("jobs storage failed: {0}")]
    Storage(String),
    #[error("the Idempotency-Key was used before with a different request")]
    IdempotencyMismatch,
    #[error("a stored job lacks a valid {0}")]
    Corrupt(&'static str),
}

impl JobError {
    pub fn to_api_error(&self) -> ApiError {
        match self {
            Self::Storage(_) => ApiError::DependencyUnavailable {
                dependency: "job storage",
                retry_after_secs: 2,
            },
            Self::IdempotencyMismatch => ApiError::IdempotencyKeyReused,
            Self::Corrupt(_) => ApiError::internal(self.to_string()),
        }
    }
}

/// What a submission produced.
#[derive(Debug, Clone)]
pub struct Submission {
    pub job: Job,
    /// The same `Idempotency-Key` and body were submitted before: this is that job.
    pub replayed: bool,
    /// The message was sent now (false: the sweeper will send it).
    pub enqueued: bool,
}

/// The outcome of trying to claim a job for a run.
#[derive(Debug, Clone)]
pub enum Claim {
    /// This run owns the job; `attempt` is its claim token.
    Claimed { job: Job, attempt: u32 },
    /// Already DONE or FAILED: a duplicate delivery.
    Finished(Job),
    /// Another run holds an unexpired lease.
    Busy { lease_until_ms: u64 },
    /// No such job (expired, or never stored).
    Missing,
}

/// A new job, already validated by the caller.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub tenant: &'a str,
    pub model: &'a str,
    pub request: &'a str,
    pub idempotency_key: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct JobStore {
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    table: String,
    queue_url: String,
    retention_secs: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex_sha256(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let mut out = String::with_capacity(64);
    for byte in hasher.finalize() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The job ID: derived from tenant and `Idempotency-Key` when there is one (so the
/// conditional put itself detects a replay, with no second item), random otherwise.
pub fn job_id(tenant: &str, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => format!("job_{}", &hex_sha256(&["idempotency", tenant, key])[..32]),
        None => format!("job_{}", uuid::Uuid::new_v4().simple()),
    }
}

/// Whether `id` has the shape of a job ID (anything else is a 404 without a lookup).
pub fn valid_job_id(id: &str) -> bool {
    id.strip_prefix("job_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, or absent.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    let valid = (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(ApiError::invalid(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

fn key(id: &str) -> [(String, AttributeValue); 2] {
    [
        ("pk".to_owned(), AttributeValue::S(format!("job#{id}"))),
        ("sk".to_owned(), s("job")),
    ]
}

fn is_condition_failure<E, R>(error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    error
        .as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "ConditionalCheckFailedException")
}

impl JobStore {
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        sqs: aws_sdk_sqs::Client,
        table: String,
        queue_url: String,
        retention_secs: u64,
    ) -> Self {
        Self {
            dynamodb,
            sqs,
            table,
            queue_url,
            retention_secs,
        }
    }

    /// `JOBS_TABLE`, `JOBS_QUEUE_URL`, `JOB_RETENTION_DAYS` (7: how long a job and its
    /// result stay readable, and how long an `Idempotency-Key` is remembered).
    pub fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, ConfigError> {
        let days: u64 = env.parse_or("JOB_RETENTION_DAYS", 7)?;
        if !(1..=365).contains(&days) {
            return Err(ConfigError::new("JOB_RETENTION_DAYS", "must be 1 to 365"));
        }
        Ok(Self::new(
            aws_sdk_dynamodb::Client::new(sdk),
            aws_sdk_sqs::Client::new(sdk),
            env.required("JOBS_TABLE")?,
            env.required("JOBS_QUEUE_URL")?,
            days * 86_400,
        ))
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Stores a PENDING job and sends its message. A replay of the same
    /// `Idempotency-Key` with the same body returns the original job; with another
    /// body, [`JobError::IdempotencyMismatch`].
    pub async fn submit(&self, new: NewJob<'_>) -> Result<Submission, JobError> {
        let id = job_id(new.tenant, new.idempotency_key);
        let request_hash = hex_sha256(&[new.request]);
        let now = now_ms();
        let shard = format!(
            "shard#{}",
            u8::from_str_radix(&id[4..5], 16).unwrap_or(0) % OUTBOX_SHARDS
        );
        let put = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(key(&id).into_iter().collect()))
            .item("id", s(&id))
            .item("tenant", s(new.tenant))
            .item("status", s(JobStatus::Pending.as_str()))
            .item("model", s(new.model))
            .item("request", s(new.request))
            .item("request_hash", s(&request_hash))
            .item("created_at", n(now / 1000))
            .item("updated_at", n(now / 1000))
            .item("attempts", n(0))
            .item("expires_at", n(now / 1000 + self.retention_secs))
            .item("outbox", s(&shard))
            .item("outbox_since", n(now))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(error) if is_condition_failure(&error) => {
                let existing = self.get(&id).await?.ok_or_else(|| {
                    JobError::Storage(format!("job {id} vanished after a conflict"))
                })?;
                if existing.tenant != new.tenant || existing.request_hash != request_hash {
                    return Err(JobError::IdempotencyMismatch);
                }
                return Ok(Submission {
                    job: existing,
                    replayed: true,
                    enqueued: false,
                });
            }
            Err(error) => return Err(JobError::Storage(error_text(error))),
        }
        let enqueued = match self.send(&id).await {
            Ok(()) => true,
            Err(error) => {
                // Accepted all the same: the job is durable and the sweeper re-sends it.
                tracing::warn!(job_id = %id, %error, "sending the job message failed; the sweeper will send it");
                false
            }
        };
        let job = Job {
            id,
            tenant: new.tenant.to_owned(),
            status: JobStatus::Pending,
            model: new.model.to_owned(),
            request: new.request.to_owned(),
            request_hash,
            created_at: now / 1000,
            updated_at: now / 1000,
            attempts: 0,
            lease_until_ms: None,
            result: None,
            error_code: None,
            error_message: None,
            last_error: None,
        };
        Ok(Submission {
            job,
            replayed: false,
            enqueued,
        })
    }

    /// Sends the job's message, then clears its outbox marker. Sending twice is harmless.
    pub async fn send(&self, id: &str) -> Result<(), String> {
        let body = serde_json::to_string(&JobMessage {
            job_id: id.to_owned(),
        })
        .map_err(|e| e.to_string())?;
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(crate::aws::error_text)?;
        let cleared = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(id).into_iter().collect()))
            .update_expression("REMOVE outbox, outbox_since")
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        if let Err(error) = cleared
            && !is_condition_failure(&error)
        {
            // The message is out; at worst the sweeper sends it once more.
            tracing::warn!(job_id = id, error = %error_text(error), "clearing the outbox marker failed");
        }
        Ok(())
    }

    /// Keeps a received job message hidden for `secs` more seconds (a long run's heartbeat).
    pub async fn extend_visibility(&self, receipt: &str, secs: i32) -> Result<(), String> {
        self.sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .send()
            .await
            .map(|_| ())
            .map_err(crate::aws::error_text)
    }

    /// Jobs whose message may not have been sent, marked before `before_ms`.
    pub async fn stranded(&self, before_ms: u64, limit: i32) -> Result<Vec<String>, JobError> {
        let mut ids = Vec::new();
        for shard in 0..OUTBOX_SHARDS {
            let page = self
                .dynamodb
                .query()
                .table_name(&self.table)
                .index_name(OUTBOX_INDEX)
                .key_condition_expression("outbox = :shard AND outbox_since < :before")
                .expression_attribute_values(":shard", s(&format!("shard#{shard}")))
                .expression_attribute_values(":before", n(before_ms))
                .limit(limit)
                .send()
                .await
                .map_err(|e| JobError::Storage(error_text(e)))?;
            for item in page.items() {
                // The index projects keys only.
                if let Some(id) = item
                    .get("pk")
                    .and_then(|v| v.as_s().ok())
                    .and_then(|pk| pk.strip_prefix("job#"))
                {
                    ids.push(id.to_owned());
                }
            }
        }
        Ok(ids)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>, JobError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(id).into_iter().collect()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| JobError::Storage(error_text(e)))?;
        output.item().map(Job::from_item).transpose()
    }

    /// Claims the job for one run until `lease_until_ms` (the invocation's deadline):
    /// if the run dies, the job can be claimed again once the lease has passed.
    pub async fn claim(
        &self,
        id: &str,
        owner: &str,
        lease_until_ms: u64,
    ) -> Result<Claim, JobError> {
        let now = now_ms();
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(id).into_iter().collect()))
            .update_expression(
                "SET #s = :running, lease_until = :lease, run_owner = :owner, updated_at = :now_s \
                 ADD attempts :one REMOVE error_code, error_message",
            )
            .condition_expression(
                "attribute_exists(pk) AND (#s = :pending OR (#s = :running AND lease_until < :now) \
                 OR (#s = :failed AND error_code = :dead_lettered))",
            )
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":pending", s(JobStatus::Pending.as_str()))
            .expression_attribute_values(":failed", s(JobStatus::Failed.as_str()))
            .expression_attribute_values(":dead_lettered", s(FailureKind::DeadLettered.as_str()))
            .expression_attribute_values(":lease", n(lease_until_ms))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":now_s", n(now / 1000))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => {
                let item = output
                    .attributes()
                    .ok_or(JobError::Corrupt("claimed item"))?;
                let job = Job::from_item(item)?;
                Ok(Claim::Claimed {
                    attempt: job.attempts,
                    job,
                })
            }
            Err(error) if is_condition_failure(&error) => match self.get(id).await? {
                None => Ok(Claim::Missing),
                Some(job) if job.status.is_terminal() => Ok(Claim::Finished(job)),
                Some(job) => Ok(Claim::Busy {
                    lease_until_ms: job.lease_until_ms.unwrap_or(0),
                }),
            },
            Err(error) => Err(JobError::Storage(error_text(error))),
        }
    }

    /// A transient failure: back to PENDING (the redelivered message retries it),
    /// keeping the reason for the dead-letter message. False if the claim was lost.
    pub async fn release(&self, id: &str, attempt: u32, error: &str) -> Result<bool, JobError> {
        self.transition(
            id,
            attempt,
            "SET #s = :pending, last_error = :error, updated_at = :now_s REMOVE lease_until",
            &[
                (":pending", s(JobStatus::Pending.as_str())),
                (":error", s(&truncate(error, 1000))),
            ],
        )
        .await
    }

    /// A permanent failure of the run holding claim `attempt`.
    pub async fn fail(
        &self,
        id: &str,
        attempt: u32,
        kind: FailureKind,
        reason: &str,
    ) -> Result<bool, JobError> {
        self.transition(
            id,
            attempt,
            "SET #s = :failed, error_code = :code, error_message = :message, updated_at = :now_s \
             REMOVE lease_until",
            &[
                (":failed", s(JobStatus::Failed.as_str())),
                (":code", s(kind.as_str())),
                (":message", s(&truncate(reason, 1000))),
            ],
        )
        .await
    }

    async fn transition(
        &self,
        id: &str,
        attempt: u32,
        update: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<bool, JobError> {
        let mut request = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(id).into_iter().collect()))
            .update_expression(update)
            .condition_expression("#s = :running AND attempts = :attempt")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":attempt", n(u64::from(attempt)))
            .expression_attribute_values(":now_s", n(now_ms() / 1000));
        for (name, value) in values {
            request = request.expression_attribute_values(*name, value.clone());
        }
        conditional(request).await
    }

    /// Marks a job whose message was dead-lettered as FAILED, unless it finished
    /// or a live run holds it. True if this call changed it.
    pub async fn dead_letter(&self, id: &str, reason: &str) -> Result<bool, JobError> {
        let now = now_ms();
        let request = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(id).into_iter().collect()))
            .update_expression(
                "SET #s = :failed, error_code = :code, error_message = :message, updated_at = :now_s \
                 REMOVE lease_until",
            )
            .condition_expression(
                "attribute_exists(pk) AND (#s = :pending OR (#s = :running AND lease_until < :now))",
            )
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":failed", s(JobStatus::Failed.as_str()))
            .expression_attribute_values(":pending", s(JobStatus::Pending.as_str()))
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":code", s(FailureKind::DeadLettered.as_str()))
            .expression_attribute_values(":message", s(&truncate(reason, 1000)))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":now_s", n(now / 1000));
        conditional(request).await
    }

    /// DONE with its result, together with the billing updates, in one transaction:
    /// a job is billed exactly when it completes, once. False if the claim was lost
    /// (another run owns the job now; nothing was written or billed).
    pub async fn complete(
        &self,
        id: &str,
        attempt: u32,
        result: &str,
        billing: Vec<Update>,
    ) -> Result<bool, JobError> {
        if result.len() > MAX_RESULT_BYTES {
            let reason = format!(
                "the answer has {} bytes; at most {MAX_RESULT_BYTES} can be stored",
                result.len()
            );
            return self
                .fail(id, attempt, FailureKind::InvalidResult, &reason)
                .await;
        }
        let done = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(id).into_iter().collect()))
            .update_expression(
                "SET #s = :done, #r = :result, updated_at = :now_s REMOVE lease_until, last_error",
            )
            .condition_expression("#s = :running AND attempts = :attempt")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#r", "result")
            .expression_attribute_values(":done", s(JobStatus::Done.as_str()))
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":result", s(result))
            .expression_attribute_values(":attempt", n(u64::from(attempt)))
            .expression_attribute_values(":now_s", n(now_ms() / 1000))
            .build()
            .map_err(|e| JobError::Storage(e.to_string()))?;
        let items: Vec<TransactWriteItem> = std::iter::once(done)
            .chain(billing)
            .map(|update| TransactWriteItem::builder().update(update).build())
            .collect();
        let mut attempt_no = 0;
        loop {
            attempt_no += 1;
            let error = match self
                .dynamodb
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await
            {
                Ok(_) => return Ok(true),
                Err(error) => error,
            };
            let canceled = error
                .as_service_error()
                .is_some_and(|e| e.is_transaction_canceled_exception());
            if !canceled {
                return Err(JobError::Storage(error_text(error)));
            }
            // A canceled transaction wrote nothing. If the claim moved on, this run
            // lost the job. Otherwise it collided with a concurrent write of the
            // same usage counter (a busy tenant's jobs all bill one item): try again
            // soon rather than after a visibility timeout.
            match self.get(id).await? {
                Some(job) if job.status == JobStatus::Running && job.attempts == attempt => {}
                _ => return Ok(false),
            }
            if attempt_no >= COMPLETE_ATTEMPTS {
                return Err(JobError::Storage(error_text(error)));
            }
            let backoff = 10 * (1u64 << attempt_no);
            tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(
                backoff..backoff * 2,
            )))
            .await;
        }
    }
}

/// Sends a conditional update: true if it applied, false if its condition did not hold.
async fn conditional(
    request: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
) -> Result<bool, JobError> {
    match request.send().await {
        Ok(_) => Ok(true),
        Err(error) if is_condition_failure(&error) => Ok(false),
        Err(error) => Err(JobError::Storage(error_text(error))),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_ids_are_per_tenant_and_key() {
        let a = job_id("tenant-a", Some("k1"));
        assert_eq!(a, job_id("tenant-a", Some("k1")));
        assert_ne!(a, job_id("tenant-b", Some("k1")));
        assert_ne!(a, job_id("tenant-a", Some("k2")));
        assert_ne!(job_id("t", None), job_id("t", None));
        assert!(valid_job_id(&a));
        assert!(valid_job_id(&job_id("t", None)));
        for bad in ["", "job_", "job_xyz", "../job", &format!("{a}0")] {
            assert!(!valid_job_id(bad), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert("idempotency-key", "order-42".parse().unwrap());
        assert_eq!(
            idempotency_key(&headers).unwrap().as_deref(),
            Some("order-42")
        );
        for bad in ["", "has space", &"x".repeat(256)] {
            headers.insert("idempotency-key", bad.parse().unwrap());
            assert!(idempotency_key(&headers).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_public_view_hides_the_request_and_shows_result_or_error() {
        let mut job = Job {
            id: "job_1".into(),
            tenant: "t".into(),
            status: JobStatus::Done,
            model: "m".into(),
            request: r#"{"secret":"prompt"}"#.into(),
            request_hash: "h".into(),
            created_at: 1,
            updated_at: 2,
            attempts: 1,
            lease_until_ms: None,
            result: Some(r#"{"choices":[]}"#.into()),
            error_code: None,
            error_message: None,
            last_error: Some("x".into()),
        };
        let view = job.to_public_json();
        assert_eq!(view["status"], "done");
        assert_eq!(view["result"]["choices"], json!([]));
        assert!(!view.to_string().contains("prompt"));
        job.status = JobStatus::Failed;
        job.result = None;
        job.error_code = Some("rejected".into());
        job.error_message = Some("no".into());
        assert_eq!(job.to_public_json()["error"]["code"], "rejected");
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
