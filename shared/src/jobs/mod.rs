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
//!
//! This module holds the record and its identity; [`store`] holds the writes.

pub mod store;
pub mod submit;

use std::fmt::Write as _;

use aws_sdk_dynamodb::types::AttributeValue;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Done,
    Failed,
}

impl JobStatus {
    pub const ALL: [Self; 4] = [Self::Pending, Self::Running, Self::Done, Self::Failed];

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

pub(crate) fn hex_sha256(parts: &[&str]) -> String {
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
    if !valid_idempotency_key(key) {
        return Err(ApiError::invalid(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// 1 to 255 visible ASCII characters (the header's rule, for the job tools too).
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
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
}
