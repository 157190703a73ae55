//! The jobs table and queue: submission with an outbox, claims with a lease,
//! completion with billing in one transaction, release, failure, dead letters.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem, Update};

use crate::aws::dynamo::{
    TransactFailure, collision_backoff, error_text, is_condition_failure, n, s, transact_once,
};
use crate::clock::now_ms;
use crate::config::{ConfigError, Env};
use crate::jobs::{
    Claim, FailureKind, Job, JobError, JobMessage, JobStatus, NewJob, Submission, hex_sha256,
    job_id,
};

/// The sparse index of jobs whose message may not have been sent yet.
pub const OUTBOX_INDEX: &str = "outbox";
/// Outbox entries are spread over this many index partitions, so that a burst of
/// submissions does not make one GSI partition hot.
const OUTBOX_SHARDS: u8 = 8;
/// The message attribute carrying the sender's W3C trace context.
pub const TRACEPARENT_ATTRIBUTE: &str = "traceparent";
/// The jobs table's index by tenant and status (counts for the dashboard).
const STATUS_INDEX: &str = "by_tenant_status";
/// DynamoDB items are limited to 400 KB; a result above this is refused.
const MAX_RESULT_BYTES: usize = 350_000;
/// Tries of the completing transaction when it collides with concurrent billing.
const COMPLETE_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone)]
pub struct JobStore {
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    table: String,
    queue_url: String,
    retention_secs: u64,
}

fn key(id: &str) -> [(String, AttributeValue); 2] {
    [
        ("pk".to_owned(), AttributeValue::S(format!("job#{id}"))),
        ("sk".to_owned(), s("job")),
    ]
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

    /// How many of `tenant`'s jobs are in each status now, over the jobs kept
    /// (`JOB_RETENTION_DAYS`), as (status, count) in the order of [`JobStatus::ALL`].
    pub async fn counts(&self, tenant: &str) -> Result<Vec<(JobStatus, u64)>, JobError> {
        let counts = JobStatus::ALL.map(|status| async move {
            Ok::<_, JobError>((status, self.count(tenant, status).await?))
        });
        futures_util::future::try_join_all(counts).await
    }

    /// How many of `tenant`'s jobs are in `status` now: one `COUNT` query on the
    /// `by_tenant_status` index, which DynamoDB keeps in step with every write
    /// of a job's status.
    pub async fn count(&self, tenant: &str, status: JobStatus) -> Result<u64, JobError> {
        let now_s = now_ms() / 1000;
        let mut pages = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .index_name(STATUS_INDEX)
            .key_condition_expression("tenant = :tenant AND #s = :status")
            // TTL deletes expired jobs up to days late.
            .filter_expression("expires_at > :now")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":tenant", s(tenant))
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":now", n(now_s))
            .select(aws_sdk_dynamodb::types::Select::Count)
            .into_paginator()
            .send();
        let mut total = 0u64;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| JobError::Storage(error_text(e)))?;
            total += u64::try_from(page.count()).unwrap_or(0);
        }
        Ok(total)
    }

    /// Sends the job's message, then clears its outbox marker. Sending twice is harmless.
    pub async fn send(&self, id: &str) -> Result<(), String> {
        let body = serde_json::to_string(&JobMessage {
            job_id: id.to_owned(),
        })
        .map_err(|e| e.to_string())?;
        // The trace travels with the message: the worker's run of the job is a
        // child of the span that sent it (the submitting request, when traced).
        let trace = crate::observability::otel::current_traceparent().map(|traceparent| {
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(traceparent)
                .build()
        });
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .set_message_attributes(match trace {
                Some(Ok(value)) => Some([(TRACEPARENT_ATTRIBUTE.to_owned(), value)].into()),
                _ => None,
            })
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
        crate::aws::batch::show_again_in(&self.sqs, &self.queue_url, receipt, secs).await
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
        for attempt_no in 1..=COMPLETE_ATTEMPTS {
            let codes = match transact_once(&self.dynamodb, &items).await {
                Ok(()) => return Ok(true),
                Err(TransactFailure::Failed(error)) => return Err(JobError::Storage(error)),
                Err(TransactFailure::Cancelled(codes)) => codes,
            };
            // A canceled transaction wrote nothing. If the claim moved on, this run
            // lost the job. Otherwise it collided with a concurrent write of the
            // same usage counter (a busy tenant's jobs all bill one item): try again
            // soon rather than after a visibility timeout.
            match self.get(id).await? {
                Some(job) if job.status == JobStatus::Running && job.attempts == attempt => {}
                _ => return Ok(false),
            }
            if attempt_no == COMPLETE_ATTEMPTS {
                return Err(JobError::Storage(format!(
                    "completing the job collided {COMPLETE_ATTEMPTS} times: {codes:?}"
                )));
            }
            collision_backoff(attempt_no).await;
        }
        Ok(false)
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
    fn truncation_respects_characters() {
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
