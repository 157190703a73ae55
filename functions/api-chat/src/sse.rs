//! Server-sent events from the fleet to the caller: the upstream bytes are
//! re-framed into whole events, the usage chunk the caller did not ask for is
//! stripped, usage is billed after the caller was handed `[DONE]` (the last
//! event), and a broken upstream becomes an explicit `event: error` (never a
//! silent truncation).

use std::collections::VecDeque;
use std::convert::Infallible;

use bytes::Bytes;
use futures_util::Stream;
use http_body::Frame;
use sophia_shared::background::{self, Answering};
use sophia_shared::fleet::sse::SseFramer;
use sophia_shared::fleet::stream::{FleetStream, StreamBreak};
use sophia_shared::inference::usage::{Billing, Settlement, Usage};

pub type SseStream = std::pin::Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;

/// Re-frames the upstream bytes into whole SSE events, collects usage, strips the
/// usage-only chunk the caller did not ask for, settles the request's billing
/// once its last event was handed on, and turns a broken upstream into an error
/// event.
pub struct Pump {
    pub upstream: FleetStream,
    framer: SseFramer,
    pending: VecDeque<Bytes>,
    finished: bool,
    usage: Option<Usage>,
    wants_usage: bool,
    billing: Billing,
    /// Taken when the last event was handed on.
    settlement: Option<Settlement>,
    /// Ends when the last event was handed on, before billing.
    answering: Option<Answering>,
    correlation_id: String,
}

const MAX_EVENT_BYTES: usize = 1024 * 1024;

impl Pump {
    pub fn new(
        upstream: FleetStream,
        wants_usage: bool,
        billing: Billing,
        settlement: Settlement,
        correlation_id: String,
    ) -> Self {
        Self {
            upstream,
            framer: SseFramer::default(),
            pending: VecDeque::new(),
            finished: false,
            usage: None,
            wants_usage,
            billing,
            settlement: Some(settlement),
            answering: Some(Answering::start()),
            correlation_id,
        }
    }

    pub fn into_stream(self) -> SseStream {
        let frames = futures_util::stream::unfold(self, |mut pump| async move {
            let frame = pump.next_frame().await?;
            Some((Ok(Frame::data(frame)), pump))
        });
        Box::pin(frames)
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            if self.finished {
                // The caller has every event: bill now, beside the work the
                // request left (a lease refill); the invocation ends after both.
                self.answering = None;
                let settlement = self.settlement.take();
                let (usage, billing) = (self.usage, &self.billing);
                background::tail_beside_work(async move {
                    if let Some(mut settlement) = settlement {
                        settlement.usage = usage;
                        settlement.settle(billing).await;
                    }
                })
                .await;
                return None;
            }
            match self.upstream.next_chunk().await {
                Some(Ok(chunk)) => {
                    self.framer.push(&chunk);
                    self.drain_events().await;
                    if !self.finished && self.framer.pending_len() > MAX_EVENT_BYTES {
                        self.fail("an upstream event was too large").await;
                    }
                }
                Some(Err(reason)) => self.fail(&reason.to_string()).await,
                None => self.fail(&StreamBreak::Broken.to_string()).await,
            }
        }
    }

    async fn drain_events(&mut self) {
        while let Some(payload) = self.framer.next_data() {
            if payload == "[DONE]" {
                self.finish_ok().await;
                return;
            }
            let Ok(chunk) = serde_json::from_str::<serde_json::Value>(&payload) else {
                self.fail("the model server sent an unreadable event").await;
                return;
            };
            if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                self.usage = serde_json::from_value(usage.clone()).ok();
                let usage_only = chunk["choices"].as_array().is_some_and(Vec::is_empty);
                if usage_only && !self.wants_usage {
                    continue;
                }
            }
            self.pending
                .push_back(Bytes::from(format!("data: {payload}\n\n")));
        }
    }

    async fn finish_ok(&mut self) {
        if self.usage.is_none() {
            tracing::error!("stream ended without usage; nothing billed");
        }
        self.pending
            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.finished = true;
    }

    async fn fail(&mut self, reason: &str) {
        tracing::warn!(reason, endpoint = %self.upstream.endpoint, "chat stream interrupted");
        let event = serde_json::json!({
            "error": {
                "message": format!("the stream was interrupted: {reason}; the answer is incomplete"),
                "type": "stream_interrupted",
                "code": "upstream_stream_broken",
                "correlation_id": self.correlation_id,
            }
        });
        self.pending
            .push_back(Bytes::from(format!("event: error\ndata: {event}\n\n")));
        self.finished = true;
    }
}
