//! Vectors filled later and the outbox that says which are still owed.

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::{
    MemoryStore, OUTBOX_INDEX, OUTBOX_SHARDS, StoreError, StoredVector, key, storage, text,
};
use crate::aws::dynamo::{is_condition_failure, n, s};
use crate::memory::model::Owner;

impl MemoryStore {
    /// Sets the vector of `id` if its text is still that of `version`, and
    /// clears its outbox marker. False if the memory changed or is gone.
    pub async fn fill_vector(
        &self,
        owner: &Owner,
        id: &str,
        version: u64,
        vector: &StoredVector,
    ) -> Result<bool, StoreError> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(owner, &format!("m#{id}"))))
            .update_expression(
                "SET vector = :vector, vector_model = :model, vector_dims = :dims REMOVE embed_outbox, embed_since",
            )
            .condition_expression("version = :version")
            .expression_attribute_values(":vector", AttributeValue::B(Blob::new(vector.vector.to_bytes())))
            .expression_attribute_values(":model", s(&vector.model))
            .expression_attribute_values(":dims", n(vector.vector.dims() as u64))
            .expression_attribute_values(":version", n(version))
            .build()
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        let items = vec![
            TransactWriteItem::builder().update(update).build(),
            TransactWriteItem::builder()
                .update(self.meta_update(owner, 0, None)?)
                .build(),
        ];
        Ok(self.transact(items).await?.is_none())
    }

    /// Removes an exact-duplicate index entry that points at `stale_id` (a
    /// memory that expired or is gone), so the text can be stored again.
    pub async fn drop_stale_index(
        &self,
        owner: &Owner,
        duplicate_key: &str,
        stale_id: &str,
    ) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, duplicate_key)))
            .condition_expression("id = :id")
            .expression_attribute_values(":id", s(stale_id))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Ok(()),
            Err(error) => Err(storage(error)),
        }
    }

    /// Clears the outbox marker once the memory's message was sent.
    pub async fn sent(&self, owner: &Owner, id: &str) -> Result<(), StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, &format!("m#{id}"))))
            .update_expression("REMOVE embed_outbox, embed_since")
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failure(&error) => Ok(()),
            Err(error) => Err(storage(error)),
        }
    }

    /// Memories whose vector message may not have been sent, marked before
    /// `before` (Unix seconds): (owner, memory ID).
    pub async fn stranded(
        &self,
        before: u64,
        limit: i32,
    ) -> Result<Vec<(Owner, String)>, StoreError> {
        let mut found = Vec::new();
        for shard in 0..OUTBOX_SHARDS {
            let output = self
                .dynamodb
                .query()
                .table_name(&self.table)
                .index_name(OUTBOX_INDEX)
                .key_condition_expression("embed_outbox = :shard AND embed_since < :before")
                .expression_attribute_values(":shard", s(&format!("embed#{shard}")))
                .expression_attribute_values(":before", n(before))
                .limit(limit)
                .send()
                .await
                .map_err(storage)?;
            for item in output.items() {
                let (Some(pk), Some(sk)) = (text(item, "pk"), text(item, "sk")) else {
                    continue;
                };
                let owner = pk
                    .strip_prefix("mem#")
                    .and_then(|rest| rest.split_once('#'))
                    .map(|(tenant, user)| Owner {
                        tenant: tenant.to_owned(),
                        user: user.to_owned(),
                    });
                if let (Some(owner), Some(id)) = (owner, sk.strip_prefix("m#")) {
                    found.push((owner, id.to_owned()));
                }
            }
        }
        Ok(found)
    }
}
