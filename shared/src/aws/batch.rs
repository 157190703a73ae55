//! SQS partial batch failures (`ReportBatchItemFailures`), for every queue consumer.
//!
//! Records run concurrently (at most `concurrency` at a time), each in its own
//! span named by its message ID; the answer lists only the records to retry, so
//! one failing record does not make SQS deliver the whole batch again.

use std::future::Future;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsMessage};
use futures_util::StreamExt;
use tracing::Instrument;

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done with (including "nothing to do"): SQS deletes the message.
    Acknowledged(&'static str),
    /// Deliver again after the visibility timeout (and, after `maxReceiveCount`
    /// deliveries, to the dead-letter queue).
    Retry(String),
}

/// Runs each record's work (`(message ID, future)`) and reports the ones to retry.
pub async fn process_batch<Fut>(
    work: impl IntoIterator<Item = (String, Fut)>,
    concurrency: usize,
) -> SqsBatchResponse
where
    Fut: Future<Output = Outcome>,
{
    // Built eagerly (nothing runs until polled): a closure over the futures inside
    // the stream would trip rustc's `Send` inference for spawned callers
    // (rust-lang/rust#96865).
    let mut instrumented = Vec::new();
    for (id, outcome) in work {
        let span = tracing::info_span!("record", message_id = %id);
        instrumented.push(
            async move {
                let outcome = outcome.await;
                match &outcome {
                    Outcome::Acknowledged(what) => tracing::info!(outcome = what, "record done"),
                    Outcome::Retry(reason) => tracing::warn!(reason, "record will be retried"),
                }
                (id, outcome)
            }
            .instrument(span),
        );
    }
    let outcomes: Vec<(String, Outcome)> = futures_util::stream::iter(instrumented)
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut response = SqsBatchResponse::default();
    for (id, outcome) in outcomes {
        if let Outcome::Retry(_) = outcome {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}

/// When a record to retry comes back: `base_secs` doubled with each delivery,
/// at most `cap_secs`, with up to a quarter of jitter off (so the records of
/// one outage do not all come back at once). A consumer sets this on the
/// record (see [`show_again_in`]) rather than waiting out the queue's
/// visibility timeout (minutes): a fleet outage is often over in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryDelay {
    pub base_secs: i32,
    pub cap_secs: i32,
}

impl RetryDelay {
    /// Seconds until delivery number `receive_count` + 1.
    pub fn after(&self, receive_count: u32) -> i32 {
        let doubled =
            i64::from(self.base_secs).saturating_mul(1 << receive_count.saturating_sub(1).min(16));
        let capped = doubled.min(i64::from(self.cap_secs)).max(0);
        let jitter = fastrand::i64(0..=capped / 4);
        i32::try_from(capped - jitter).unwrap_or(self.cap_secs)
    }
}

/// How many times SQS delivered `record` (its `ApproximateReceiveCount`; 1 if absent).
pub fn receive_count(record: &SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

/// Makes a received message visible again in `secs` seconds (a retry's delay,
/// or a long run's heartbeat when larger than what is left).
pub async fn show_again_in(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipt: &str,
    secs: i32,
) -> Result<(), String> {
    sqs.change_message_visibility()
        .queue_url(queue_url)
        .receipt_handle(receipt)
        .visibility_timeout(secs)
        .send()
        .await
        .map(|_| ())
        .map_err(crate::aws::error_text)
}

/// A record's message ID, the key SQS expects in `batchItemFailures`.
pub fn message_id(record: &SqsMessage) -> String {
    record.message_id.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SqsMessage {
        let mut record = SqsMessage::default();
        record.message_id = Some(id.to_owned());
        record
    }

    #[tokio::test]
    async fn only_the_records_to_retry_are_reported() {
        let records = [record("a"), record("b"), record("c")];
        let work = records.iter().map(|record| {
            let outcome = if record.message_id.as_deref() == Some("b") {
                Outcome::Retry("no".into())
            } else {
                Outcome::Acknowledged("yes")
            };
            (message_id(record), async move { outcome })
        });
        let response = process_batch(work, 2).await;
        let failed: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(failed, ["b"]);
    }

    #[test]
    fn retries_come_back_sooner_first_and_never_later_than_the_cap() {
        let delay = RetryDelay {
            base_secs: 15,
            cap_secs: 180,
        };
        for (count, low, high) in [
            (1, 12, 15),
            (2, 23, 30),
            (3, 45, 60),
            (5, 135, 180),
            (30, 135, 180),
        ] {
            let after = delay.after(count);
            assert!((low..=high).contains(&after), "delivery {count}: {after}");
        }
        let mut record = record("a");
        assert_eq!(receive_count(&record), 1);
        record
            .attributes
            .insert("ApproximateReceiveCount".into(), "4".into());
        assert_eq!(receive_count(&record), 4);
    }
}
