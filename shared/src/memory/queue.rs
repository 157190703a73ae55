//! The memory-embed queue: memories whose vector is pending, for
//! worker-memory-embed. Sending is an outbox: the memory is written first with
//! a marker, the message sent, the marker cleared; a memory whose marker stays
//! (the send failed) is sent again by job-queue-sweep.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::now_secs;
use crate::memory::model::Owner;
use crate::memory::store::MemoryStore;

/// Which memory needs its vector. No text: the worker reads the memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedMessage {
    pub tenant: String,
    pub user: String,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct VectorQueue {
    sqs: aws_sdk_sqs::Client,
    url: String,
    store: MemoryStore,
}

impl VectorQueue {
    pub fn new(sqs: aws_sdk_sqs::Client, url: String, store: MemoryStore) -> Self {
        Self { sqs, url, store }
    }

    /// Queues the memory for its vector; a failure is logged and left to the
    /// sweeper (the outbox marker stays).
    pub async fn request(&self, owner: &Owner, id: &str) {
        match self.send(owner, id).await {
            Ok(()) => {
                if let Err(error) = self.store.sent(owner, id).await {
                    tracing::warn!(%error, memory_id = id, "clearing the outbox marker failed");
                }
            }
            Err(error) => tracing::warn!(
                %error,
                memory_id = id,
                "queueing the vector failed; the queue sweeper sends it again"
            ),
        }
    }

    async fn send(&self, owner: &Owner, id: &str) -> Result<(), String> {
        let message = EmbedMessage {
            tenant: owner.tenant.clone(),
            user: owner.user.clone(),
            id: id.to_owned(),
        };
        let body = serde_json::to_string(&message).map_err(|e| e.to_string())?;
        self.sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(crate::aws::error_text)
    }

    /// Sends again the messages of memories marked before `older_than` ago;
    /// returns the memories sent.
    pub async fn resend_stranded(
        &self,
        older_than: Duration,
        limit: i32,
    ) -> Result<Vec<String>, String> {
        let before = now_secs().saturating_sub(older_than.as_secs());
        let stranded = self
            .store
            .stranded(before, limit)
            .await
            .map_err(|e| e.to_string())?;
        let mut sent = Vec::with_capacity(stranded.len());
        for (owner, id) in stranded {
            self.send(&owner, &id).await?;
            if let Err(error) = self.store.sent(&owner, &id).await {
                tracing::warn!(%error, memory_id = %id, "clearing the outbox marker failed");
            }
            sent.push(id);
        }
        Ok(sent)
    }
}
