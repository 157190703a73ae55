//! The memory table: one partition per user (`mem#<tenant>#<user>`).
//!
//! | sort key | item |
//! |---|---|
//! | `meta` | `gen` (changes when the user is forgotten), `version` (bumped by every write: the cache's validator), `count` (memories) |
//! | `m#<id>` | a memory: text, namespace, tags, metadata (JSON), times, `version`, the vector (int8, see [`super::vector`]) with its model |
//! | `h#<id>#<version>` | an earlier version of a memory |
//! | `d#<namespace>#<hash>` | the exact-duplicate index: normalized text → memory ID |
//! | `i#<hash>` | an `Idempotency-Key` seen: the memory it made, the request's hash |
//!
//! Every write to a memory is one transaction with the `meta` update, so the
//! version a recall reads says whether its cached copy is current. A memory
//! whose vector is pending carries an outbox marker in a sparse, sharded index
//! (`embed_outbox`) until its queue message is sent; the queue sweeper re-sends
//! markers that stay.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use serde_json::{Map, Value};

use crate::aws::dynamo::{cancellation_codes, error_text, is_condition_failure, n, s};
use crate::clock::now_secs;
use crate::memory::model::{Memory, Owner, VectorState};
use crate::memory::vector::Quantized;

mod bulk;
mod vectors;

pub const OUTBOX_INDEX: &str = "embed_outbox";
const OUTBOX_SHARDS: u8 = 8;
const META: &str = "meta";
/// Idempotency records are kept a day.
const IDEMPOTENCY_SECS: u64 = 86_400;
/// DynamoDB grace after `expires_at`: TTL deletes later; recall hides at once.
const EXPIRED_KEEP_SECS: u64 = 0;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("memory storage failed: {0}")]
    Storage(String),
    #[error("a stored memory is unreadable: {0}")]
    Corrupt(&'static str),
}

/// What an insert ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    Done,
    /// Another memory with the same normalized text in the namespace won a race.
    Duplicate,
    /// The user holds as many memories as allowed.
    LimitReached,
}

/// A memory's vector as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVector {
    pub model: String,
    pub vector: Quantized,
}

/// How a write treats the vector.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorWrite<'a> {
    Keep,
    Set(&'a StoredVector),
    /// No vector yet: the outbox marker says a message must be sent.
    Pending,
}

/// The user's `meta` item.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    pub generation: String,
    pub version: u64,
    pub count: u64,
}

#[derive(Debug, Clone)]
pub struct MemoryStore {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
}

fn storage<E: std::error::Error + 'static, R: std::fmt::Debug>(
    error: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> StoreError {
    StoreError::Storage(error_text(error))
}

fn text(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn outbox_shard() -> AttributeValue {
    s(&format!("embed#{}", fastrand::u8(0..OUTBOX_SHARDS)))
}

/// The memory and its vector from an `m#` item.
pub fn from_item(
    item: &HashMap<String, AttributeValue>,
) -> Result<(Memory, Option<StoredVector>), StoreError> {
    let required = |name: &'static str| text(item, name).ok_or(StoreError::Corrupt(name));
    let metadata: Map<String, Value> = match text(item, "metadata") {
        Some(raw) => serde_json::from_str(&raw).map_err(|_| StoreError::Corrupt("metadata"))?,
        None => Map::new(),
    };
    let tags = item
        .get("tags")
        .and_then(|v| v.as_l().ok())
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_s().ok().cloned())
                .collect()
        })
        .unwrap_or_default();
    let vector = match (
        item.get("vector").and_then(|v| v.as_b().ok()),
        text(item, "vector_model"),
    ) {
        (Some(bytes), Some(model)) => {
            Quantized::from_bytes(bytes.as_ref()).map(|vector| StoredVector { model, vector })
        }
        _ => None,
    };
    let memory = Memory {
        id: required("id")?,
        text: required("text")?,
        namespace: required("namespace")?,
        tags,
        metadata,
        created_at: number(item, "created_at").unwrap_or(0),
        updated_at: number(item, "updated_at").unwrap_or(0),
        expires_at: number(item, "expires_at"),
        version: number(item, "version").unwrap_or(1),
        vector: if vector.is_some() {
            VectorState::Ready
        } else {
            VectorState::Pending
        },
    };
    Ok((memory, vector))
}

fn memory_item(
    owner: &Owner,
    memory: &Memory,
    duplicate_key: &str,
) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(&owner.partition())),
        ("sk".to_owned(), s(&format!("m#{}", memory.id))),
        ("id".to_owned(), s(&memory.id)),
        ("text".to_owned(), s(&memory.text)),
        ("namespace".to_owned(), s(&memory.namespace)),
        (
            "tags".to_owned(),
            AttributeValue::L(memory.tags.iter().map(|t| s(t)).collect()),
        ),
        (
            "metadata".to_owned(),
            s(&Value::Object(memory.metadata.clone()).to_string()),
        ),
        ("created_at".to_owned(), n(memory.created_at)),
        ("updated_at".to_owned(), n(memory.updated_at)),
        ("version".to_owned(), n(memory.version)),
        ("duplicate_key".to_owned(), s(duplicate_key)),
    ]);
    if let Some(at) = memory.expires_at {
        item.insert("expires_at".to_owned(), n(at + EXPIRED_KEEP_SECS));
    }
    item
}

fn key(owner: &Owner, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), s(&owner.partition())),
        ("sk".to_owned(), s(sk)),
    ])
}

impl MemoryStore {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { dynamodb, table }
    }

    /// The `meta` update of a write: the version bumped, the count moved by
    /// `count`, and with `max_count`, only while the count is under it.
    fn meta_update(
        &self,
        owner: &Owner,
        count: i64,
        max_count: Option<u64>,
    ) -> Result<Update, StoreError> {
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(owner, META)))
            .expression_attribute_values(":gen", s(&uuid::Uuid::new_v4().simple().to_string()))
            .expression_attribute_values(":one", n(1));
        update = if count == 0 {
            update.update_expression("SET gen = if_not_exists(gen, :gen) ADD version :one")
        } else {
            update
                .update_expression(
                    "SET gen = if_not_exists(gen, :gen) ADD version :one, #count :delta",
                )
                .expression_attribute_names("#count", "count")
                .expression_attribute_values(":delta", AttributeValue::N(count.to_string()))
        };
        if let Some(max) = max_count {
            update = update
                .condition_expression("attribute_not_exists(#count) OR #count < :max")
                .expression_attribute_names("#count", "count")
                .expression_attribute_values(":max", n(max));
        }
        update
            .build()
            .map_err(|e| StoreError::Storage(e.to_string()))
    }

    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<Option<Vec<String>>, StoreError> {
        match self
            .dynamodb
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(None),
            Err(error) => match cancellation_codes(&error) {
                Some(codes) => Ok(Some(codes)),
                None => Err(storage(error)),
            },
        }
    }

    /// The user's `meta` item (strongly consistent: it validates caches).
    pub async fn meta(&self, owner: &Owner) -> Result<Option<Meta>, StoreError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, META)))
            .consistent_read(true)
            .send()
            .await
            .map_err(storage)?;
        Ok(output.item().map(|item| Meta {
            generation: text(item, "gen").unwrap_or_default(),
            version: number(item, "version").unwrap_or(0),
            count: number(item, "count").unwrap_or(0),
        }))
    }

    /// Every memory of the user with its vector, and the round trips it took.
    pub async fn load_all(
        &self,
        owner: &Owner,
    ) -> Result<(Vec<(Memory, Option<StoredVector>)>, usize), StoreError> {
        let mut memories = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        let mut pages = 0usize;
        loop {
            let output = self
                .dynamodb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :m)")
                .expression_attribute_values(":pk", s(&owner.partition()))
                .expression_attribute_values(":m", s("m#"))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(storage)?;
            pages += 1;
            for item in output.items() {
                memories.push(from_item(item)?);
            }
            match output.last_evaluated_key() {
                Some(last) => start = Some(last.clone()),
                None => return Ok((memories, pages)),
            }
        }
    }

    pub async fn get(
        &self,
        owner: &Owner,
        id: &str,
    ) -> Result<Option<(Memory, Option<StoredVector>)>, StoreError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, &format!("m#{id}"))))
            .consistent_read(true)
            .send()
            .await
            .map_err(storage)?;
        output.item().map(from_item).transpose()
    }

    /// The ID of the memory with this exact-duplicate key, if any.
    pub async fn duplicate_of(
        &self,
        owner: &Owner,
        duplicate_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, duplicate_key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(storage)?;
        Ok(output.item().and_then(|item| text(item, "id")))
    }

    fn put(&self, item: HashMap<String, AttributeValue>) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(|e| StoreError::Storage(e.to_string()))?,
            )
            .build())
    }

    fn with_vector(item: &mut HashMap<String, AttributeValue>, vector: &VectorWrite<'_>) {
        match vector {
            VectorWrite::Set(stored) => {
                item.insert(
                    "vector".to_owned(),
                    AttributeValue::B(Blob::new(stored.vector.to_bytes())),
                );
                item.insert("vector_model".to_owned(), s(&stored.model));
                item.insert("vector_dims".to_owned(), n(stored.vector.dims() as u64));
            }
            VectorWrite::Pending => {
                item.insert("embed_outbox".to_owned(), outbox_shard());
                item.insert("embed_since".to_owned(), n(now_secs()));
            }
            VectorWrite::Keep => {}
        }
    }

    /// A new memory, its duplicate index entry and the count, in one transaction.
    pub async fn insert(
        &self,
        owner: &Owner,
        memory: &Memory,
        duplicate_key: &str,
        vector: VectorWrite<'_>,
        max_count: u64,
    ) -> Result<Inserted, StoreError> {
        let mut item = memory_item(owner, memory, duplicate_key);
        Self::with_vector(&mut item, &vector);
        let mut index = key(owner, duplicate_key);
        index.insert("id".to_owned(), s(&memory.id));
        if let Some(at) = memory.expires_at {
            // The index entry goes with the memory when TTL deletes it.
            index.insert("expires_at".to_owned(), n(at));
        }
        let meta = self.meta_update(owner, 1, Some(max_count))?;
        let items = vec![
            self.put(item)?,
            self.put(index)?,
            TransactWriteItem::builder().update(meta).build(),
        ];
        match self.transact(items).await? {
            None => Ok(Inserted::Done),
            Some(codes) if codes.get(1).is_some_and(|c| c == "ConditionalCheckFailed") => {
                Ok(Inserted::Duplicate)
            }
            Some(codes) if codes.get(2).is_some_and(|c| c == "ConditionalCheckFailed") => {
                Ok(Inserted::LimitReached)
            }
            Some(codes) => Err(StoreError::Storage(format!(
                "inserting a memory was cancelled: {codes:?}"
            ))),
        }
    }

    /// `after` replaces `before` (same ID): `before` goes to the history, the
    /// duplicate index follows the text. False if `before` is no longer current
    /// (a concurrent write won) or the new text duplicates another memory.
    pub async fn replace(
        &self,
        owner: &Owner,
        before: &Memory,
        after: &Memory,
        duplicate_keys: (&str, &str),
        vector: VectorWrite<'_>,
    ) -> Result<bool, StoreError> {
        let (before_key, after_key) = duplicate_keys;
        let mut item = memory_item(owner, after, after_key);
        Self::with_vector(&mut item, &vector);
        if vector == VectorWrite::Keep {
            // A Put replaces the whole item: carry the stored vector over.
            if let Some((_, Some(stored))) = self.get(owner, &before.id).await? {
                Self::with_vector(&mut item, &VectorWrite::Set(&stored));
            }
        }
        let history = HashMap::from([
            ("pk".to_owned(), s(&owner.partition())),
            (
                "sk".to_owned(),
                s(&format!("h#{}#{:010}", before.id, before.version)),
            ),
            ("version".to_owned(), n(before.version)),
            ("text".to_owned(), s(&before.text)),
            (
                "tags".to_owned(),
                AttributeValue::L(before.tags.iter().map(|t| s(t)).collect()),
            ),
            (
                "metadata".to_owned(),
                s(&Value::Object(before.metadata.clone()).to_string()),
            ),
            ("replaced_at".to_owned(), n(now_secs())),
        ]);
        let mut history = history;
        if let Some(at) = after.expires_at {
            history.insert("expires_at".to_owned(), n(at));
        }
        let mut items = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression("version = :version")
                        .expression_attribute_values(":version", n(before.version))
                        .build()
                        .map_err(|e| StoreError::Storage(e.to_string()))?,
                )
                .build(),
            self.put(history)?,
            TransactWriteItem::builder()
                .update(self.meta_update(owner, 0, None)?)
                .build(),
        ];
        if before_key != after_key {
            let mut index = key(owner, after_key);
            index.insert("id".to_owned(), s(&after.id));
            if let Some(at) = after.expires_at {
                index.insert("expires_at".to_owned(), n(at));
            }
            items.push(self.put(index)?);
            items.push(
                TransactWriteItem::builder()
                    .delete(
                        Delete::builder()
                            .table_name(&self.table)
                            .set_key(Some(key(owner, before_key)))
                            .build()
                            .map_err(|e| StoreError::Storage(e.to_string()))?,
                    )
                    .build(),
            );
        }
        Ok(self.transact(items).await?.is_none())
    }

    /// Deletes a memory, its index entry and its history. False if it is gone.
    pub async fn delete(
        &self,
        owner: &Owner,
        memory: &Memory,
        duplicate_key: &str,
    ) -> Result<bool, StoreError> {
        // History first: a crash in between leaves a memory without its past,
        // never a past without its memory.
        self.delete_keys(
            owner,
            &self
                .keys_with_prefix(owner, &format!("h#{}#", memory.id))
                .await?,
        )
        .await?;
        let delete = |sk: &str, condition: bool| -> Result<TransactWriteItem, StoreError> {
            let mut builder = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key(owner, sk)));
            if condition {
                builder = builder.condition_expression("attribute_exists(pk)");
            }
            Ok(TransactWriteItem::builder()
                .delete(
                    builder
                        .build()
                        .map_err(|e| StoreError::Storage(e.to_string()))?,
                )
                .build())
        };
        let items = vec![
            delete(&format!("m#{}", memory.id), true)?,
            delete(duplicate_key, false)?,
            TransactWriteItem::builder()
                .update(self.meta_update(owner, -1, None)?)
                .build(),
        ];
        Ok(self.transact(items).await?.is_none())
    }

    /// The memory an `Idempotency-Key` made, and the hash of its request.
    pub async fn idempotent(
        &self,
        owner: &Owner,
        key_hash: &str,
    ) -> Result<Option<(String, String, u16)>, StoreError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, &format!("i#{key_hash}"))))
            .consistent_read(true)
            .send()
            .await
            .map_err(storage)?;
        Ok(output.item().and_then(|item| {
            Some((
                text(item, "memory_id")?,
                text(item, "request_hash")?,
                number(item, "status").unwrap_or(201) as u16,
            ))
        }))
    }

    /// Records what an `Idempotency-Key` made (first writer wins).
    pub async fn remember_key(
        &self,
        owner: &Owner,
        key_hash: &str,
        memory_id: &str,
        request_hash: &str,
        status: u16,
    ) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(HashMap::from([
                ("pk".to_owned(), s(&owner.partition())),
                ("sk".to_owned(), s(&format!("i#{key_hash}"))),
                ("memory_id".to_owned(), s(memory_id)),
                ("request_hash".to_owned(), s(request_hash)),
                ("status".to_owned(), n(u64::from(status))),
                ("expires_at".to_owned(), n(now_secs() + IDEMPOTENCY_SECS)),
            ])))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Ok(()),
            Err(error) => Err(storage(error)),
        }
    }
}
