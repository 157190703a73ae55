//! A dead-letter queue and its source queue: look at the messages without losing
//! them, and move them back.
//!
//! Peeking receives messages (which hides them briefly) and at once makes them
//! visible again. Redrive uses SQS's `StartMessageMoveTask` where the service
//! offers it; where it does not (the local AWS), a receive–send–delete loop that
//! deletes a message from the dead-letter queue only after the source queue has
//! accepted its copy, so a failure at any step leaves the message where it was
//! (at worst it is in both queues, which the idempotent worker tolerates).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName};
use serde::Serialize;

use crate::aws::error_text;

/// How long a peeked message is hidden at most (it is made visible again at once).
const PEEK_VISIBILITY_SECS: i32 = 10;
/// How long a message being moved is hidden; a failed move makes it visible after this.
const MOVE_VISIBILITY_SECS: i32 = 30;

/// A message seen in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: String,
    /// Deliveries before it was dead-lettered, plus peeks since.
    pub receive_count: u32,
    /// When it was first sent (epoch ms).
    pub sent_at_ms: u64,
}

/// What a redrive did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// `move-task` (SQS moves the messages asynchronously) or `receive-send-delete`.
    pub method: &'static str,
    /// Messages moved (for `move-task`: the task's handle is in `task`).
    pub moved: usize,
    /// Messages that could not be moved and stay in the dead-letter queue.
    pub failed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    sqs: aws_sdk_sqs::Client,
    pub name: String,
    pub dlq_url: String,
    pub source_url: String,
}

impl DeadLetterQueue {
    pub fn new(sqs: aws_sdk_sqs::Client, name: &str, dlq_url: String, source_url: String) -> Self {
        Self {
            sqs,
            name: name.to_owned(),
            dlq_url,
            source_url,
        }
    }

    /// Messages currently waiting, approximately (SQS's own count).
    pub async fn depth(&self) -> Result<u64, String> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.dlq_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(error_text)?;
        Ok(attributes
            .attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Up to `max` messages, left in the queue and visible again afterwards.
    pub async fn peek(&self, max: usize) -> Result<Vec<DeadLetter>, String> {
        let mut seen = HashSet::new();
        let mut letters = Vec::new();
        let mut receipts = Vec::new();
        let result = async {
            while letters.len() < max {
                let batch = self
                    .sqs
                    .receive_message()
                    .queue_url(&self.dlq_url)
                    .max_number_of_messages(10.min((max - letters.len()) as i32).max(1))
                    .visibility_timeout(PEEK_VISIBILITY_SECS)
                    .wait_time_seconds(0)
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .send()
                    .await
                    .map_err(error_text)?;
                let messages = batch.messages();
                if messages.is_empty() {
                    break;
                }
                let mut fresh = 0;
                for message in messages {
                    let id = message.message_id().unwrap_or_default().to_owned();
                    if let Some(receipt) = message.receipt_handle() {
                        receipts.push(receipt.to_owned());
                    }
                    if !seen.insert(id.clone()) {
                        continue;
                    }
                    fresh += 1;
                    let attribute = |name: MessageSystemAttributeName| {
                        message
                            .attributes()
                            .and_then(|a| a.get(&name))
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    letters.push(DeadLetter {
                        message_id: id,
                        body: message.body().unwrap_or_default().to_owned(),
                        receive_count: attribute(
                            MessageSystemAttributeName::ApproximateReceiveCount,
                        ) as u32,
                        sent_at_ms: attribute(MessageSystemAttributeName::SentTimestamp),
                    });
                }
                if fresh == 0 {
                    break;
                }
            }
            Ok::<_, String>(())
        }
        .await;
        // Visible again whatever happened above: a peek never hides messages for long.
        self.release(&receipts).await;
        result.map(|()| letters)
    }

    async fn release(&self, receipts: &[String]) {
        for chunk in receipts.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, receipt)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(0)
                        .build()
                        .ok()
                })
                .collect();
            if let Err(error) = self
                .sqs
                .change_message_visibility_batch()
                .queue_url(&self.dlq_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                tracing::warn!(error = %error_text(error), "making peeked messages visible failed; they reappear within seconds");
            }
        }
    }

    /// Moves the dead-letter queue's messages back to the source queue.
    pub async fn redrive(&self, max: usize, budget: Duration) -> Result<RedriveReport, String> {
        match self.start_move_task().await {
            Ok(task) => {
                return Ok(RedriveReport {
                    method: "move-task",
                    moved: 0,
                    failed: 0,
                    task: Some(task),
                });
            }
            Err(error) => {
                tracing::info!(%error, "StartMessageMoveTask unavailable; moving messages one by one");
            }
        }
        self.move_one_by_one(max, budget).await
    }

    async fn arn(&self, url: &str) -> Result<String, String> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(error_text)?;
        attributes
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| format!("{url} has no ARN"))
    }

    async fn start_move_task(&self) -> Result<String, String> {
        let source = self.arn(&self.dlq_url).await?;
        let destination = self.arn(&self.source_url).await?;
        let task = self
            .sqs
            .start_message_move_task()
            .source_arn(source)
            .destination_arn(destination)
            .send()
            .await
            .map_err(error_text)?;
        Ok(task.task_handle().unwrap_or_default().to_owned())
    }

    /// Receive, send to the source, and only then delete; bounded by `max` and `budget`.
    pub async fn move_one_by_one(
        &self,
        max: usize,
        budget: Duration,
    ) -> Result<RedriveReport, String> {
        let started = Instant::now();
        let mut report = RedriveReport {
            method: "receive-send-delete",
            moved: 0,
            failed: 0,
            task: None,
        };
        while report.moved + report.failed < max && started.elapsed() < budget {
            let batch = self
                .sqs
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .visibility_timeout(MOVE_VISIBILITY_SECS)
                .wait_time_seconds(0)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(error_text)?;
            if batch.messages().is_empty() {
                break;
            }
            for message in batch.messages() {
                let sent = self
                    .sqs
                    .send_message()
                    .queue_url(&self.source_url)
                    .message_body(message.body().unwrap_or_default())
                    .set_message_attributes(message.message_attributes().cloned())
                    .send()
                    .await;
                if let Err(error) = sent {
                    tracing::warn!(error = %error_text(error), message_id = message.message_id(), "re-sending failed; the message stays dead-lettered");
                    report.failed += 1;
                    continue;
                }
                let deleted = self
                    .sqs
                    .delete_message()
                    .queue_url(&self.dlq_url)
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .send()
                    .await;
                if let Err(error) = deleted {
                    // The copy is in the source queue; this one reappears and may be
                    // moved again, which the idempotent worker tolerates.
                    tracing::warn!(error = %error_text(error), message_id = message.message_id(), "deleting a moved message failed");
                }
                report.moved += 1;
            }
        }
        Ok(report)
    }
}
