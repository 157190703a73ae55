//! Whole-user operations: forget everything, export a page, a memory's history, import.

use std::collections::HashMap;

use super::{
    META, MemoryStore, StoreError, StoredVector, VectorWrite, from_item, key, memory_item, number,
    storage, text,
};
use crate::aws::dynamo::{n, query_all, s};
use crate::memory::model::{HistoryEntry, Memory, Owner};
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};

impl MemoryStore {
    pub(super) async fn keys_with_prefix(
        &self,
        owner: &Owner,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        let query = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(&owner.partition()))
            .projection_expression("sk")
            .consistent_read(true);
        // DynamoDB refuses an empty prefix: no prefix is the whole partition.
        let query = if prefix.is_empty() {
            query.key_condition_expression("pk = :pk")
        } else {
            query
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":prefix", s(prefix))
        };
        let items = query_all(query).await.map_err(storage)?;
        Ok(items.iter().filter_map(|item| text(item, "sk")).collect())
    }

    pub(super) async fn delete_keys(
        &self,
        owner: &Owner,
        keys: &[String],
    ) -> Result<(), StoreError> {
        for chunk in keys.chunks(25) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|sk| {
                    DeleteRequest::builder()
                        .set_key(Some(key(owner, sk)))
                        .build()
                        .map(|delete| WriteRequest::builder().delete_request(delete).build())
                        .map_err(|e| StoreError::Storage(e.to_string()))
                })
                .collect::<Result<_, _>>()?;
            for _ in 0..8 {
                let output = self
                    .dynamodb
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(storage)?;
                requests = output
                    .unprocessed_items()
                    .and_then(|items| items.get(&self.table))
                    .cloned()
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            if !requests.is_empty() {
                return Err(StoreError::Storage(format!(
                    "{} deletions were not processed",
                    requests.len()
                )));
            }
        }
        Ok(())
    }

    /// Writes many new memories of one user at once (bench and migration
    /// tooling: no duplicate check, no limit), with their index entries, and
    /// moves the user's version and count once.
    pub async fn import(
        &self,
        owner: &Owner,
        memories: &[(Memory, Option<StoredVector>)],
    ) -> Result<(), StoreError> {
        let mut requests = Vec::with_capacity(memories.len() * 2);
        for (memory, vector) in memories {
            let key_text = crate::memory::model::duplicate_key(&memory.namespace, &memory.text);
            let mut item = memory_item(owner, memory, &key_text);
            match vector {
                Some(vector) => Self::with_vector(&mut item, &VectorWrite::Set(vector)),
                None => Self::with_vector(&mut item, &VectorWrite::Pending),
            }
            let mut index = key(owner, &key_text);
            index.insert("id".to_owned(), s(&memory.id));
            requests.push(item);
            requests.push(index);
        }
        for chunk in requests.chunks(25) {
            let mut writes: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    aws_sdk_dynamodb::types::PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map(|put| WriteRequest::builder().put_request(put).build())
                        .map_err(|e| StoreError::Storage(e.to_string()))
                })
                .collect::<Result<_, _>>()?;
            while !writes.is_empty() {
                let output = self
                    .dynamodb
                    .batch_write_item()
                    .request_items(&self.table, writes)
                    .send()
                    .await
                    .map_err(storage)?;
                writes = output
                    .unprocessed_items()
                    .and_then(|items| items.get(&self.table))
                    .cloned()
                    .unwrap_or_default();
            }
        }
        self.dynamodb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, META)))
            .update_expression("SET gen = if_not_exists(gen, :gen) ADD version :one, #count :count")
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":gen", s(&uuid::Uuid::new_v4().simple().to_string()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":count", n(memories.len() as u64))
            .send()
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// Deletes every item of the user: memories, vectors, history, indexes,
    /// idempotency records and the meta item. Returns the memories deleted.
    pub async fn forget_all(&self, owner: &Owner) -> Result<usize, StoreError> {
        let keys = self.keys_with_prefix(owner, "").await?;
        let memories = keys.iter().filter(|sk| sk.starts_with("m#")).count();
        self.delete_keys(owner, &keys).await?;
        Ok(memories)
    }

    /// Up to `limit` memories after `cursor` (an ID), in ID order, and the next cursor.
    pub async fn page(
        &self,
        owner: &Owner,
        cursor: Option<&str>,
        limit: i32,
    ) -> Result<(Vec<Memory>, Option<String>), StoreError> {
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :m)")
            .expression_attribute_values(":pk", s(&owner.partition()))
            .expression_attribute_values(":m", s("m#"))
            .set_exclusive_start_key(cursor.map(|id| key(owner, &format!("m#{id}"))))
            .limit(limit)
            .consistent_read(true)
            .send()
            .await
            .map_err(storage)?;
        let memories = output
            .items()
            .iter()
            .map(|item| from_item(item).map(|(memory, _)| memory))
            .collect::<Result<Vec<_>, _>>()?;
        let next = output
            .last_evaluated_key()
            .and_then(|last| text(last, "sk"))
            .and_then(|sk| sk.strip_prefix("m#").map(str::to_owned));
        Ok((memories, next))
    }

    /// A memory's latest `limit` earlier versions, oldest first, and whether
    /// there are older ones (answers stay within Lambda's payload limit).
    pub async fn history(
        &self,
        owner: &Owner,
        id: &str,
        limit: i32,
    ) -> Result<(Vec<HistoryEntry>, bool), StoreError> {
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :h)")
            .expression_attribute_values(":pk", s(&owner.partition()))
            .expression_attribute_values(":h", s(&format!("h#{id}#")))
            .scan_index_forward(false)
            .limit(limit.saturating_add(1))
            .consistent_read(true)
            .send()
            .await
            .map_err(storage)?;
        let mut items: Vec<&HashMap<String, AttributeValue>> = output.items().iter().collect();
        let truncated = items.len() > limit as usize;
        items.truncate(limit as usize);
        items.reverse();
        Ok((
            items
                .into_iter()
                .map(|item| HistoryEntry {
                    version: number(item, "version").unwrap_or(0),
                    text: text(item, "text").unwrap_or_default(),
                    tags: item
                        .get("tags")
                        .and_then(|v| v.as_l().ok())
                        .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
                        .unwrap_or_default(),
                    metadata: text(item, "metadata")
                        .and_then(|raw| serde_json::from_str(&raw).ok())
                        .unwrap_or_default(),
                    replaced_at: number(item, "replaced_at").unwrap_or(0),
                })
                .collect(),
            truncated,
        ))
    }
}
