//! The append-only, tamper-evident audit log.
//!
//! One hash chain per tenant: entry `n` stores `hash = SHA-256(prev_hash ‖ n ‖
//! time ‖ actor ‖ action ‖ target ‖ correlation_id ‖ details)` and the previous
//! entry's hash. Each append writes the entry and moves the tenant's head item
//! (last sequence and hash) in one transaction, conditional on the head not
//! having moved, so concurrent appends serialize and no sequence number is used
//! twice. [`AuditLog::verify`] recomputes the chain: an altered entry, a removed
//! one (gap), a reordered pair (broken link) or a cut-off tail (head mismatch)
//! is reported with the sequence number where the chain breaks.
//!
//! An instance remembers the head it last wrote per tenant and appends after it
//! without reading it first: the head's condition fails if another writer moved
//! it, and the append then reads the head and tries again. A steady writer pays
//! one round trip per entry, not two.
//!
//! Append-only is also an IAM matter: functions get `PutItem`, `GetItem` and
//! `Query` on the audit table, never `UpdateItem` or `DeleteItem` (see infra/).

use std::collections::HashMap;

use crate::aws::dynamo::{n, query_all, s};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use serde::Serialize;
use sha2::{Digest, Sha256};

const GENESIS: &str = "genesis";
const MAX_APPEND_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit table: {0}")]
    Aws(String),
    #[error("the audit head kept moving; append abandoned")]
    Contention,
}

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub seq: u64,
    pub time: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub correlation_id: String,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// What to record; sequence, time and hashes are added by the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub correlation_id: &'a str,
    pub details: serde_json::Value,
}

/// Where the chain breaks, if it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Tamper {
    /// The entry's content does not match its hash.
    Altered { seq: u64 },
    /// The entry does not link to the previous one (reordered or replaced).
    BrokenLink { seq: u64 },
    /// Sequence numbers skip: entries were removed.
    Missing { seq: u64 },
    /// Entries after `last_present` were removed (the head says there were more).
    Truncated { last_present: u64, head: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub tenant: String,
    pub entries: u64,
    pub intact: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tamper: Option<Tamper>,
}

/// `fields`: actor, action, target, correlation ID, details.
fn chain_hash(prev_hash: &str, seq: u64, time: u64, fields: [&str; 5]) -> String {
    let mut hasher = Sha256::new();
    let (seq, time) = (seq.to_string(), time.to_string());
    // Length-prefixed fields: no two different entries share an encoding.
    for field in [prev_hash, &seq, &time].into_iter().chain(fields) {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            use std::fmt::Write as _;
            let _ = write!(out, "{b:02x}");
            out
        })
}

impl Entry {
    fn expected_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            self.seq,
            self.time,
            [
                &self.actor,
                &self.action,
                &self.target,
                &self.correlation_id,
                &self.details,
            ],
        )
    }
}

fn aws<E: std::error::Error + 'static, R: std::fmt::Debug>(
    error: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> AuditError {
    AuditError::Aws(crate::aws::dynamo::error_text(error))
}

fn seq_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// Heads remembered at most; beyond it they are forgotten (which only costs a
/// read each).
const MAX_CACHED_HEADS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct AuditLog {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    /// The head this instance last wrote (or read) per tenant: (seq, hash).
    heads: std::sync::Arc<std::sync::Mutex<HashMap<String, (u64, String)>>>,
}

impl AuditLog {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self {
            dynamodb,
            table,
            heads: std::sync::Arc::default(),
        }
    }

    fn heads(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, String)>> {
        self.heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember_head(&self, tenant: &str, head: Option<(u64, String)>) {
        let mut heads = self.heads();
        match head {
            None => {
                heads.remove(tenant);
            }
            Some(head) => {
                if heads.len() >= MAX_CACHED_HEADS && !heads.contains_key(tenant) {
                    heads.clear();
                }
                heads.insert(tenant.to_owned(), head);
            }
        }
    }

    async fn head(&self, tenant: &str) -> Result<(u64, String), AuditError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&format!("audit-head#{tenant}")))
            .key("sk", s("head"))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws)?;
        Ok(match output.item() {
            None => (0, GENESIS.to_owned()),
            Some(item) => (
                item.get("seq")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                item.get("hash")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_else(|| GENESIS.to_owned()),
            ),
        })
    }

    /// Appends one event to `tenant`'s chain and returns the stored entry.
    pub async fn append(&self, tenant: &str, event: &Event<'_>) -> Result<Entry, AuditError> {
        let details = event.details.to_string();
        for _ in 0..MAX_APPEND_ATTEMPTS {
            let cached = self.heads().get(tenant).cloned();
            let (last, prev_hash) = match cached {
                Some(head) => head,
                None => self.head(tenant).await?,
            };
            let seq = last + 1;
            let time = crate::clock::now_secs();
            let fields = [
                event.actor,
                event.action,
                event.target,
                event.correlation_id,
                details.as_str(),
            ];
            let hash = chain_hash(&prev_hash, seq, time, fields);
            let entry = Entry {
                seq,
                time,
                actor: event.actor.to_owned(),
                action: event.action.to_owned(),
                target: event.target.to_owned(),
                correlation_id: event.correlation_id.to_owned(),
                details: details.clone(),
                prev_hash,
                hash,
            };
            let put = Put::builder()
                .table_name(&self.table)
                .item("pk", s(&format!("audit#{tenant}")))
                .item("sk", s(&seq_key(seq)))
                .item("seq", n(seq))
                .item("time", n(time))
                .item("actor", s(&entry.actor))
                .item("action", s(&entry.action))
                .item("target", s(&entry.target))
                .item("correlation_id", s(&entry.correlation_id))
                .item("details", s(&entry.details))
                .item("prev_hash", s(&entry.prev_hash))
                .item("hash", s(&entry.hash))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(|e| AuditError::Aws(e.to_string()))?;
            // The head is replaced, not updated: the table needs no UpdateItem.
            let head_condition = if last == 0 {
                "attribute_not_exists(pk)"
            } else {
                "seq = :last"
            };
            let mut head = Put::builder()
                .table_name(&self.table)
                .item("pk", s(&format!("audit-head#{tenant}")))
                .item("sk", s("head"))
                .item("seq", n(seq))
                .item("hash", s(&entry.hash))
                .condition_expression(head_condition);
            if last > 0 {
                head = head.expression_attribute_values(":last", n(last));
            }
            let head = head.build().map_err(|e| AuditError::Aws(e.to_string()))?;
            let result = self
                .dynamodb
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put).build())
                .transact_items(TransactWriteItem::builder().put(head).build())
                .send()
                .await;
            match result {
                Ok(_) => {
                    self.remember_head(tenant, Some((seq, entry.hash.clone())));
                    return Ok(entry);
                }
                Err(error)
                    if error
                        .as_service_error()
                        .is_some_and(|e| e.is_transaction_canceled_exception()) =>
                {
                    // Another writer moved the head: read it on the next attempt.
                    self.remember_head(tenant, None);
                    continue;
                }
                Err(error) => {
                    // The outcome is unknown (the write may have landed).
                    self.remember_head(tenant, None);
                    return Err(aws(error));
                }
            }
        }
        Err(AuditError::Contention)
    }

    /// Every entry of `tenant`, oldest first.
    pub async fn entries(&self, tenant: &str) -> Result<Vec<Entry>, AuditError> {
        let query = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(&format!("audit#{tenant}")))
            .consistent_read(true);
        let items = query_all(query).await.map_err(aws)?;
        Ok(items.iter().map(entry_from).collect())
    }

    /// Up to `limit` entries of `tenant` after sequence number `after` (0: from
    /// the start), oldest first, and the sequence number to continue after when
    /// there are more. The log grows without bound; a page keeps an answer
    /// within Lambda's payload limit.
    pub async fn page(
        &self,
        tenant: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<u64>), AuditError> {
        let limit = limit.clamp(1, 1000);
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk > :after")
            .expression_attribute_values(":pk", s(&format!("audit#{tenant}")))
            .expression_attribute_values(":after", s(&seq_key(after)))
            .consistent_read(true)
            // One more than asked for says whether there is a next page.
            .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(aws)?;
        let mut entries: Vec<Entry> = output.items().iter().map(entry_from).collect();
        let next = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|entry| entry.seq)
        } else {
            None
        };
        Ok((entries, next))
    }

    /// Recomputes `tenant`'s chain and names the first place it breaks.
    pub async fn verify(&self, tenant: &str) -> Result<Verification, AuditError> {
        let entries = self.entries(tenant).await?;
        let (head, _) = self.head(tenant).await?;
        let tamper = find_tamper(&entries, head);
        Ok(Verification {
            tenant: tenant.to_owned(),
            entries: entries.len() as u64,
            intact: tamper.is_none(),
            tamper,
        })
    }
}

fn entry_from(item: &HashMap<String, AttributeValue>) -> Entry {
    let text = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    let number = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Entry {
        seq: number("seq"),
        time: number("time"),
        actor: text("actor"),
        action: text("action"),
        target: text("target"),
        correlation_id: text("correlation_id"),
        details: text("details"),
        prev_hash: text("prev_hash"),
        hash: text("hash"),
    }
}

/// The chain check on entries in sort-key order.
pub fn find_tamper(entries: &[Entry], head: u64) -> Option<Tamper> {
    let mut prev_hash = GENESIS.to_owned();
    for (index, entry) in entries.iter().enumerate() {
        let expected_seq = index as u64 + 1;
        if entry.seq != expected_seq {
            return Some(Tamper::Missing { seq: expected_seq });
        }
        if entry.expected_hash() != entry.hash {
            return Some(Tamper::Altered { seq: entry.seq });
        }
        if entry.prev_hash != prev_hash {
            return Some(Tamper::BrokenLink { seq: entry.seq });
        }
        prev_hash = entry.hash.clone();
    }
    let last = entries.len() as u64;
    (head != last).then_some(Tamper::Truncated {
        last_present: last,
        head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(count: u64) -> Vec<Entry> {
        let mut prev = GENESIS.to_owned();
        (1..=count)
            .map(|seq| {
                let hash = chain_hash(
                    &prev,
                    seq,
                    100 + seq,
                    ["actor", "act", "target", "cid", "{}"],
                );
                let entry = Entry {
                    seq,
                    time: 100 + seq,
                    actor: "actor".into(),
                    action: "act".into(),
                    target: "target".into(),
                    correlation_id: "cid".into(),
                    details: "{}".into(),
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                entry
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(find_tamper(&chain(5), 5), None);
        assert_eq!(find_tamper(&[], 0), None);
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let mut altered = chain(5);
        altered[2].target = "someone else".into();
        assert_eq!(find_tamper(&altered, 5), Some(Tamper::Altered { seq: 3 }));

        let mut removed = chain(5);
        removed.remove(1);
        assert_eq!(find_tamper(&removed, 5), Some(Tamper::Missing { seq: 2 }));

        let mut reordered = chain(5);
        reordered.swap(1, 2);
        let (a, b) = (reordered[1].seq, reordered[2].seq);
        reordered[1].seq = b;
        reordered[2].seq = a;
        assert!(matches!(
            find_tamper(&reordered, 5),
            Some(Tamper::Altered { seq: 2 })
        ));

        let mut rehashed = chain(5);
        rehashed[3].prev_hash = "forged".into();
        rehashed[3].hash = rehashed[3].expected_hash();
        assert_eq!(
            find_tamper(&rehashed, 5),
            Some(Tamper::BrokenLink { seq: 4 })
        );

        assert_eq!(
            find_tamper(&chain(3), 5),
            Some(Tamper::Truncated {
                last_present: 3,
                head: 5
            })
        );
    }
}
