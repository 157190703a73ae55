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
}
