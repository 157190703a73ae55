//! A stream from one endpoint, after its first chunk: idle timeout, deadline,
//! and a break recorded against the endpoint's breaker.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;

use crate::fleet::endpoint::{EndpointState, lock, report_transition};
use crate::fleet::settings::UpstreamKind;
use crate::guard::bulkhead::BulkheadPermit;

pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Why a stream ended before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamBreak {
    #[error("the model server went silent")]
    Idle,
    #[error("the connection to the model server broke")]
    Broken,
    #[error("the invocation deadline was reached")]
    Deadline,
}

/// A stream from one endpoint whose first chunk has arrived.
pub struct FleetStream {
    pub endpoint: String,
    pub kind: UpstreamKind,
    pub(crate) first: Option<Bytes>,
    pub(crate) rest: ByteStream,
    pub(crate) idle_timeout: Duration,
    pub(crate) deadline: Instant,
    pub(crate) state: Arc<EndpointState>,
    pub(crate) finished: bool,
    /// The overall and endpoint bulkhead slots, freed when the stream ends.
    pub(crate) slots: Option<(BulkheadPermit, OwnedSemaphorePermit)>,
}

impl std::fmt::Debug for FleetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStream")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl FleetStream {
    /// The next chunk of bytes; `None` at a clean end. After an error, `None`.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, StreamBreak>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        if self.finished {
            return None;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let (wait, on_timeout) = if left < self.idle_timeout {
            (left, StreamBreak::Deadline)
        } else {
            (self.idle_timeout, StreamBreak::Idle)
        };
        let outcome = match tokio::time::timeout(wait, self.rest.next()).await {
            Ok(Some(Ok(chunk))) => return Some(Ok(chunk)),
            Ok(None) => {
                self.finished = true;
                self.slots = None;
                return None;
            }
            Ok(Some(Err(_))) => StreamBreak::Broken,
            Err(_) => on_timeout,
        };
        self.finished = true;
        self.slots = None;
        if outcome != StreamBreak::Deadline {
            let transition = lock(&self.state.breaker).record(false, Instant::now());
            report_transition(&self.endpoint, transition);
        }
        tracing::warn!(endpoint = %self.endpoint, reason = %outcome, "fleet stream broke");
        Some(Err(outcome))
    }
}
