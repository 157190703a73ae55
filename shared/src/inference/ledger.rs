//! Usage that is owed but not yet billed, so billing can leave the caller's
//! critical path without ever being lost.
//!
//! api-chat bills a completion after the caller has the whole answer (after
//! the last byte of the body was handed on), not before it. Between the two a
//! crash (a timeout, an out-of-memory kill, a lost instance) would lose the
//! usage, so while the fleet works on the answer an entry is written for the
//! request (one `PutItem`, concurrent with the fleet call, never before it).
//! Settling the answer deletes the entry in the same transaction that adds the
//! usage and the tokens, so a request is billed exactly once: either by the
//! function or, for entries older than any invocation can live, by
//! job-queue-sweep's recovery ([`crate::inference::usage::Billing::recover`]).
//! An answer whose billing transaction keeps colliding with other writes of the
//! tenant's counters stores its figures on the entry instead, and the recovery
//! bills those; an entry without figures (the crash came before the answer was
//! known) is billed with the prompt's estimated tokens and marked recovered.
//!
//! An entry whose write timed out may still land later (a timeout is not a
//! refusal: the local AWS paused for 3 s, seen by `make chaos`, writes it when
//! it resumes). So a request whose entry could not be confirmed is billed (or
//! closed) with a tombstone put at the entry's key in the same transaction,
//! instead of a delete: the late write's `attribute_not_exists` condition
//! then fails, or the tombstone replaces what it wrote, and the recovery never
//! bills the request a second time ([`Ledger::settle_unconfirmed`]).
//!
//! Entries live in the usage table under `unsettled#<yyyy-mm-dd>#<shard>`, the
//! day they were opened and one of [`SHARDS`] shards (so no single partition
//! key takes every request's write), sorted by request ID; a TTL drops any
//! entry the recovery never reached after [`RETENTION_SECS`].

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};

use crate::aws::dynamo::{
    TransactFailure, collision_backoff, error_text, n, query_all, s, transact_once,
    unless_condition_failed,
};
use crate::clock::{now_secs, utc_date};

/// Partition keys per day; the recovery queries each.
pub const SHARDS: u64 = 8;
/// Unsettled entries are dropped by TTL after two weeks.
pub const RETENTION_SECS: u64 = 14 * 86_400;
/// Tries of a settling transaction that collided with concurrent billing of the same tenant.
const SETTLE_ATTEMPTS: u32 = 3;

/// The tokens of an answer, as the ledger keeps them (billing's own `Usage`
/// converts to and from it; the ledger is below billing and imports nothing of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

/// One request's owed usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    pub tenant: String,
    pub model: String,
    /// The invocation's request ID: unique per request.
    pub request_id: String,
    pub opened_at: u64,
    /// Bytes of the request / 4: what a recovery bills when the answer is unknown.
    pub prompt_tokens_estimate: u64,
    /// The answer's tokens, stored when settling could not bill them.
    pub answered: Option<Tokens>,
}

impl Owed {
    pub fn new(tenant: &str, model: &str, request_id: &str, request_bytes: usize) -> Self {
        Self {
            tenant: tenant.to_owned(),
            model: model.to_owned(),
            request_id: request_id.to_owned(),
            opened_at: now_secs(),
            prompt_tokens_estimate: (request_bytes as u64).div_ceil(4),
            answered: None,
        }
    }

    fn key(&self) -> HashMap<String, AttributeValue> {
        // FNV-1a: a stable spread of request IDs over the shards.
        let hash = self
            .request_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        HashMap::from([
            (
                "pk".to_owned(),
                s(&partition(&utc_date(self.opened_at), hash % SHARDS)),
            ),
            ("sk".to_owned(), s(&self.request_id)),
        ])
    }

    fn from_item(item: &HashMap<String, AttributeValue>) -> Option<Self> {
        let text = |name: &str| item.get(name)?.as_s().ok().cloned();
        let number = |name: &str| item.get(name)?.as_n().ok()?.parse::<u64>().ok();
        let answered = match (number("prompt_tokens"), number("completion_tokens")) {
            (Some(prompt), Some(completion)) => Some(Tokens { prompt, completion }),
            _ => None,
        };
        Some(Self {
            tenant: text("tenant")?,
            model: text("model")?,
            request_id: text("sk")?,
            opened_at: number("opened_at")?,
            prompt_tokens_estimate: number("prompt_tokens_estimate").unwrap_or(0),
            answered,
        })
    }
}

fn partition(day: &str, shard: u64) -> String {
    format!("unsettled#{day}#{shard}")
}

/// How a settlement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Billed now, the entry gone.
    Billed,
    /// Someone else (the recovery, or an earlier try) already settled it: nothing written.
    AlreadySettled,
    /// Billing kept colliding; the figures are stored on the entry for the recovery.
    Deferred,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
}

impl Ledger {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { dynamodb, table }
    }

    /// Writes the entry (idempotent: a second open of the same request changes nothing).
    pub async fn open(&self, owed: &Owed) -> Result<(), String> {
        let written = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(owed.key()))
            .item("tenant", s(&owed.tenant))
            .item("model", s(&owed.model))
            .item("opened_at", n(owed.opened_at))
            .item("prompt_tokens_estimate", n(owed.prompt_tokens_estimate))
            .item("expires_at", n(owed.opened_at + RETENTION_SECS))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        unless_condition_failed(written)
    }

    /// Deletes the entry of a request that got no answer (nothing to bill).
    pub async fn close_unbilled(&self, owed: &Owed) -> Result<(), String> {
        self.dynamodb
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(owed.key()))
            .send()
            .await
            .map(|_| ())
            .map_err(error_text)
    }

    /// The tombstone at `owed`'s key: no entry can be written there any more,
    /// and the recovery skips it. It replaces an entry, but not another
    /// tombstone: a billing transaction applied twice (an SDK retry of one
    /// whose answer was lost) is cancelled the second time.
    fn tombstone(&self, owed: &Owed) -> Result<Put, String> {
        let mut item = owed.key();
        item.insert("settled".to_owned(), AttributeValue::Bool(true));
        item.insert("expires_at".to_owned(), n(owed.opened_at + RETENTION_SECS));
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(settled)")
            .build()
            .map_err(|error| error.to_string())
    }

    /// Closes a request whose entry may or may not have been written (its
    /// write failed, perhaps only on our side) and that got no answer.
    pub async fn close_unconfirmed(&self, owed: &Owed) -> Result<(), String> {
        let put = self.tombstone(owed)?;
        let written = self
            .dynamodb
            .put_item()
            .table_name(put.table_name())
            .set_item(Some(put.item().clone()))
            .set_condition_expression(put.condition_expression().map(str::to_owned))
            .send()
            .await;
        unless_condition_failed(written)
    }

    /// Applies `billing` for a request whose entry may or may not have been
    /// written, with a tombstone at its key in the same transaction: billed
    /// exactly once whether the entry landed before, lands later, or never.
    pub async fn settle_unconfirmed(
        &self,
        owed: &Owed,
        billing: Vec<Update>,
    ) -> Result<Settled, String> {
        let close = TransactWriteItem::builder()
            .put(self.tombstone(owed)?)
            .build();
        self.bill(owed, close, billing, None).await
    }

    /// Deletes the entry and applies `billing` in one transaction, exactly once.
    /// `tokens` are stored on the entry if the transaction keeps colliding.
    pub async fn settle(
        &self,
        owed: &Owed,
        billing: Vec<Update>,
        tokens: Tokens,
    ) -> Result<Settled, String> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(owed.key()))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(|error| error.to_string())?;
        let close = TransactWriteItem::builder().delete(delete).build();
        self.bill(owed, close, billing, Some(tokens)).await
    }

    /// `close` (the entry's delete or tombstone) and `billing` in one
    /// transaction, tried again when it collides; `tokens` are stored on the
    /// entry if it keeps colliding (none: the recovery will find nothing).
    async fn bill(
        &self,
        owed: &Owed,
        close: TransactWriteItem,
        billing: Vec<Update>,
        tokens: Option<Tokens>,
    ) -> Result<Settled, String> {
        let items: Vec<TransactWriteItem> = std::iter::once(close)
            .chain(
                billing
                    .into_iter()
                    .map(|update| TransactWriteItem::builder().update(update).build()),
            )
            .collect();
        for attempt in 1..=SETTLE_ATTEMPTS {
            let codes = match transact_once(&self.dynamodb, &items).await {
                Ok(()) => return Ok(Settled::Billed),
                Err(TransactFailure::Failed(error)) => return Err(error),
                Err(TransactFailure::Cancelled(codes)) => codes,
            };
            if codes
                .first()
                .is_some_and(|code| code == "ConditionalCheckFailed")
            {
                return Ok(Settled::AlreadySettled);
            }
            // A canceled transaction wrote nothing: it collided with a concurrent
            // write of the same counters (a busy tenant bills one item per day).
            tracing::info!(?codes, attempt, "settling usage collided; trying again");
            collision_backoff(attempt).await;
        }
        match tokens {
            Some(tokens) => {
                self.store_figures(owed, tokens).await?;
                Ok(Settled::Deferred)
            }
            None => Err(format!(
                "billing request {} kept colliding with other writes of its tenant",
                owed.request_id
            )),
        }
    }

    /// Keeps the answer's usage on the entry, so the recovery bills the real figures.
    async fn store_figures(&self, owed: &Owed, tokens: Tokens) -> Result<(), String> {
        let stored = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(owed.key()))
            .update_expression("SET prompt_tokens = :p, completion_tokens = :c")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":p", n(tokens.prompt))
            .expression_attribute_values(":c", n(tokens.completion))
            .send()
            .await;
        // Gone: the sweep billed the estimate meanwhile, and must not bill twice.
        unless_condition_failed(stored)
    }

    /// Entries of today and the `days_back` days before, opened at or before
    /// `cutoff` (Unix seconds): requests no invocation can still be settling.
    pub async fn unsettled(&self, cutoff: u64, days_back: u64) -> Result<Vec<Owed>, String> {
        let mut found = Vec::new();
        let today = now_secs();
        for day in 0..=days_back {
            let date = utc_date(today.saturating_sub(day * 86_400));
            for shard in 0..SHARDS {
                let query = self
                    .dynamodb
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk")
                    .filter_expression("opened_at <= :cutoff AND attribute_not_exists(settled)")
                    .expression_attribute_values(":pk", s(&partition(&date, shard)))
                    .expression_attribute_values(":cutoff", n(cutoff));
                let items = query_all(query).await.map_err(error_text)?;
                found.extend(items.iter().filter_map(Owed::from_item));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_keyed_by_its_day_and_a_stable_shard() {
        let mut owed = Owed::new("t", "m", "request-1", 10);
        owed.opened_at = 1_767_225_600; // 2026-01-01
        let key = owed.key();
        let pk = key["pk"].as_s().unwrap();
        assert!(pk.starts_with("unsettled#2026-01-01#"), "{pk}");
        assert_eq!(key, owed.clone().key());
        assert_eq!(key["sk"].as_s().unwrap(), "request-1");
        assert_eq!(owed.prompt_tokens_estimate, 3);
        let shards: std::collections::HashSet<String> = (0..200)
            .map(|i| {
                let mut other = owed.clone();
                other.request_id = format!("request-{i}");
                other.key()["pk"].as_s().unwrap().clone()
            })
            .collect();
        assert_eq!(shards.len() as u64, SHARDS);
    }

    #[test]
    fn an_entry_reads_back_with_or_without_figures() {
        let owed = Owed::new("t", "m", "r", 40);
        let mut item = owed.key();
        item.insert("tenant".into(), s("t"));
        item.insert("model".into(), s("m"));
        item.insert("opened_at".into(), n(owed.opened_at));
        item.insert("prompt_tokens_estimate".into(), n(10));
        assert_eq!(Owed::from_item(&item), Some(owed.clone()));
        item.insert("prompt_tokens".into(), n(7));
        item.insert("completion_tokens".into(), n(5));
        let read = Owed::from_item(&item).unwrap();
        assert_eq!(
            read.answered,
            Some(Tokens {
                prompt: 7,
                completion: 5
            })
        );
    }
}
