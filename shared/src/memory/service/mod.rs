//! The memory's operations, as api-memory's routes, the MCP tools and
//! worker-memory-embed call them.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::clock::now_secs;
use crate::inference::Inference;
use crate::inference::embeddings::{EmbeddingInput, EmbeddingsRequest};
use crate::memory::model::{
    HistoryEntry, Memory, MemoryPatch, MemorySettings, NewMemory, Owner, VectorState, duplicate_key,
};
use crate::memory::queue::{EmbedMessage, VectorQueue};
use crate::memory::store::{Inserted, MemoryStore, StoreError, StoredVector, VectorWrite};
use crate::memory::vector::Quantized;
use crate::observability::{MetricSet, RequestContext};
use crate::ops::audit::{AuditLog, Event};
use crate::problem::ApiError;

mod cache;
mod search;

use cache::{Cache, CachedMemory, CachedUser};
pub use search::{Recall, Recalled};

const METRICS_NAMESPACE: &str = "Sophia";
/// Writes that lose a race (a concurrent duplicate, a concurrent update) retry.
const WRITE_ATTEMPTS: usize = 3;
/// Memories per export page, and earlier versions shown per memory: together
/// they keep an answer far below Lambda's 6 MB (10 × 11 texts of 8000 characters).
const EXPORT_PAGE: i32 = 10;
pub const HISTORY_SHOWN: i32 = 10;

/// How a stored memory came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The same normalized text was there: that memory was updated.
    Exact,
    /// A memory at least `MEMORY_NEAR_DUPLICATE` similar was updated.
    Near,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub memory: Memory,
    /// 201 when true, 200 (the existing memory) when merged or replayed.
    pub created: bool,
    pub merged: Option<Merge>,
    pub replayed: bool,
}

/// A memory's latest earlier versions, and whether older ones exist.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub versions: Vec<HistoryEntry>,
    pub truncated: bool,
}

/// A page of `GET /v1/memory/export`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportPage {
    pub memories: Vec<(Memory, History)>,
    pub next: Option<String>,
}

/// What filling a vector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    Done,
    /// Nothing to do: the memory is gone, or already has its vector.
    NotNeeded,
    /// The memory changed meanwhile; its newer version has its own message.
    Changed,
}

pub struct MemoryService {
    pub settings: MemorySettings,
    pub store: MemoryStore,
    pub queue: VectorQueue,
    inference: Arc<Inference>,
    audit: AuditLog,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for MemoryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryService")
            .field("settings", &self.settings)
            .finish()
    }
}

fn storage(error: StoreError) -> ApiError {
    tracing::error!(%error, "memory storage failed");
    ApiError::DependencyUnavailable {
        dependency: "memory storage",
        retry_after_secs: 2,
    }
}

fn hex_sha256(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `mem_` and 24 hex digits.
pub fn valid_memory_id(id: &str) -> bool {
    id.strip_prefix("mem_")
        .is_some_and(|hex| hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn new_id() -> String {
    format!("mem_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

fn not_found() -> ApiError {
    ApiError::NotFound { what: "memory" }
}

impl MemoryService {
    pub fn new(
        settings: MemorySettings,
        dynamodb: aws_sdk_dynamodb::Client,
        sqs: aws_sdk_sqs::Client,
        inference: Arc<Inference>,
        audit: AuditLog,
    ) -> Self {
        let store = MemoryStore::new(dynamodb, settings.table.clone());
        Self {
            queue: VectorQueue::new(sqs, settings.embed_queue_url.clone(), store.clone()),
            store,
            settings,
            inference,
            audit,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Vectors of `texts` from the fleet, within the memory's embedding timeout;
    /// `None` when the fleet cannot give them now (the caller degrades).
    pub async fn embed(
        &self,
        tenant: &str,
        texts: Vec<String>,
        ctx: &RequestContext,
    ) -> Option<Vec<StoredVector>> {
        let mut bounded = ctx.clone();
        bounded.deadline = bounded
            .deadline
            .min(Instant::now() + self.settings.embed_timeout);
        let permit = match self.inference.admit() {
            Ok(permit) => permit,
            Err(_) => return None,
        };
        let request = EmbeddingsRequest {
            model: self.settings.model.clone(),
            input: EmbeddingInput::Texts(texts),
            encoding_format: None,
            dimensions: None,
            user: None,
        };
        match self
            .inference
            .embedder()
            .embed(permit, tenant, &request, &bounded)
            .await
        {
            Ok(embedded) => Some(
                embedded
                    .vectors
                    .iter()
                    .map(|v| StoredVector {
                        model: self.settings.model.clone(),
                        vector: Quantized::from_f32(v),
                    })
                    .collect(),
            ),
            Err(error) => {
                tracing::warn!(%error, "embedding for memory failed; degrading");
                None
            }
        }
    }

    async fn embed_one(
        &self,
        tenant: &str,
        text: &str,
        ctx: &RequestContext,
    ) -> Option<StoredVector> {
        self.embed(tenant, vec![text.to_owned()], ctx)
            .await
            .and_then(|mut vectors| vectors.pop())
    }

    fn metric(&self, outcome: &str) {
        MetricSet::new(METRICS_NAMESPACE)
            .dimension("Service", "memory")
            .count("MemoryStores", 1.0)
            .property("outcome", outcome)
            .emit();
    }

    /// Stores a memory for `owner`, or updates the one it duplicates.
    pub async fn store(
        &self,
        owner: &Owner,
        new: &NewMemory,
        idempotency_key: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<Stored, ApiError> {
        let settings = &self.settings;
        settings.check_text(&new.text)?;
        let namespace = settings.check_namespace(new.namespace.as_deref())?;
        let tags = settings.check_tags(new.tags.as_deref().unwrap_or_default())?;
        if let Some(metadata) = &new.metadata {
            settings.check_metadata(metadata)?;
        }
        settings.check_expiry(new.expires_at)?;
        let request_hash = hex_sha256(&[
            &new.text,
            &namespace,
            &serde_json::to_string(&tags).unwrap_or_default(),
            &serde_json::to_string(&new.metadata).unwrap_or_default(),
            &new.expires_at.map(|at| at.to_string()).unwrap_or_default(),
        ]);
        let key_hash = idempotency_key.map(|key| hex_sha256(&[key]));
        if let Some(key_hash) = &key_hash
            && let Some((id, hash, status)) = self
                .store
                .idempotent(owner, key_hash)
                .await
                .map_err(storage)?
        {
            if hash != request_hash {
                return Err(ApiError::IdempotencyKeyReused);
            }
            if let Some((memory, _)) = self.store.get(owner, &id).await.map_err(storage)? {
                return Ok(Stored {
                    memory,
                    created: status == 201,
                    merged: None,
                    replayed: true,
                });
            }
        }
        let stored = self.store_new(owner, new, namespace, tags, ctx).await?;
        if let Some(key_hash) = &key_hash {
            let status = if stored.created { 201 } else { 200 };
            if let Err(error) = self
                .store
                .remember_key(owner, key_hash, &stored.memory.id, &request_hash, status)
                .await
            {
                tracing::warn!(%error, "recording the Idempotency-Key failed");
            }
        }
        Ok(stored)
    }

    async fn store_new(
        &self,
        owner: &Owner,
        new: &NewMemory,
        namespace: String,
        tags: Vec<String>,
        ctx: &RequestContext,
    ) -> Result<Stored, ApiError> {
        let exact_key = duplicate_key(&namespace, &new.text);
        let mut vector: Option<Option<StoredVector>> = None;
        for _ in 0..WRITE_ATTEMPTS {
            let now = now_secs();
            // An exact duplicate: that memory is updated.
            if let Some(id) = self
                .store
                .duplicate_of(owner, &exact_key)
                .await
                .map_err(storage)?
            {
                match self.store.get(owner, &id).await.map_err(storage)? {
                    Some((before, _)) if !before.is_expired(now) => {
                        let after = Memory {
                            tags: new
                                .tags
                                .as_ref()
                                .map_or(before.tags.clone(), |_| tags.clone()),
                            metadata: new.metadata.clone().unwrap_or(before.metadata.clone()),
                            expires_at: new.expires_at.or(before.expires_at),
                            updated_at: now,
                            version: before.version + 1,
                            text: new.text.clone(),
                            ..before.clone()
                        };
                        if self
                            .store
                            .replace(
                                owner,
                                &before,
                                &after,
                                (&exact_key, &exact_key),
                                VectorWrite::Keep,
                            )
                            .await
                            .map_err(storage)?
                        {
                            self.metric("merged_exact");
                            return Ok(Stored {
                                memory: after,
                                created: false,
                                merged: Some(Merge::Exact),
                                replayed: false,
                            });
                        }
                        continue;
                    }
                    Some((expired, _)) => {
                        self.store
                            .delete(owner, &expired, &exact_key)
                            .await
                            .map_err(storage)?;
                    }
                    None => self
                        .store
                        .drop_stale_index(owner, &exact_key, &id)
                        .await
                        .map_err(storage)?,
                }
            }
            if vector.is_none() {
                vector = Some(self.embed_one(&owner.tenant, &new.text, ctx).await);
            }
            let embedded = vector.as_ref().and_then(Option::as_ref);
            // A near duplicate: the most similar memory of the namespace is updated.
            if let Some(embedded) = embedded
                && let Some(stored) = self
                    .merge_near(owner, new, &namespace, &tags, embedded, &exact_key, now)
                    .await?
            {
                return Ok(stored);
            }
            let memory = Memory {
                id: new_id(),
                text: new.text.clone(),
                namespace: namespace.clone(),
                tags: tags.clone(),
                metadata: new.metadata.clone().unwrap_or_default(),
                created_at: now,
                updated_at: now,
                expires_at: new.expires_at,
                version: 1,
                vector: if embedded.is_some() {
                    VectorState::Ready
                } else {
                    VectorState::Pending
                },
            };
            let write = embedded.map_or(VectorWrite::Pending, VectorWrite::Set);
            match self
                .store
                .insert(
                    owner,
                    &memory,
                    &exact_key,
                    write,
                    self.settings.max_per_user,
                )
                .await
                .map_err(storage)?
            {
                Inserted::Done => {
                    if embedded.is_none() {
                        self.queue.request(owner, &memory.id).await;
                    }
                    self.metric(if embedded.is_some() {
                        "created"
                    } else {
                        "created_pending"
                    });
                    return Ok(Stored {
                        memory,
                        created: true,
                        merged: None,
                        replayed: false,
                    });
                }
                Inserted::Duplicate => continue,
                Inserted::LimitReached => {
                    return Err(ApiError::Conflict {
                        reason: format!(
                            "the limit of {} memories per user is reached (MEMORY_MAX_PER_USER); delete some first",
                            self.settings.max_per_user
                        ),
                    });
                }
            }
        }
        Err(ApiError::DependencyUnavailable {
            dependency: "memory storage (concurrent writes)",
            retry_after_secs: 1,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn merge_near(
        &self,
        owner: &Owner,
        new: &NewMemory,
        namespace: &str,
        tags: &[String],
        embedded: &StoredVector,
        exact_key: &str,
        now: u64,
    ) -> Result<Option<Stored>, ApiError> {
        let (user, _) = self.user(owner).await?;
        let best = user
            .memories
            .iter()
            .filter(|m| m.memory.namespace == namespace && !m.memory.is_expired(now))
            .filter_map(|m| m.vector.as_ref().map(|v| (m, embedded.vector.cosine(v))))
            .filter(|(_, similarity)| *similarity >= self.settings.near_duplicate)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((near, similarity)) = best else {
            return Ok(None);
        };
        let before = near.memory.clone();
        let after = Memory {
            text: new.text.clone(),
            tags: new
                .tags
                .as_ref()
                .map_or(before.tags.clone(), |_| tags.to_vec()),
            metadata: new.metadata.clone().unwrap_or(before.metadata.clone()),
            expires_at: new.expires_at.or(before.expires_at),
            updated_at: now,
            version: before.version + 1,
            vector: VectorState::Ready,
            ..before.clone()
        };
        let before_key = duplicate_key(&before.namespace, &before.text);
        let replaced = self
            .store
            .replace(
                owner,
                &before,
                &after,
                (&before_key, exact_key),
                VectorWrite::Set(embedded),
            )
            .await
            .map_err(storage)?;
        if !replaced {
            return Ok(None);
        }
        tracing::info!(memory_id = %after.id, similarity, "near duplicate merged");
        self.metric("merged_near");
        Ok(Some(Stored {
            memory: after,
            created: false,
            merged: Some(Merge::Near),
            replayed: false,
        }))
    }

    /// The memory, if `owner` has it and it has not expired.
    pub async fn get(&self, owner: &Owner, id: &str) -> Result<Memory, ApiError> {
        if !valid_memory_id(id) {
            return Err(not_found());
        }
        match self.store.get(owner, id).await.map_err(storage)? {
            Some((memory, _)) if !memory.is_expired(now_secs()) => Ok(memory),
            _ => Err(not_found()),
        }
    }

    /// A memory with its earlier versions.
    pub async fn get_with_history(
        &self,
        owner: &Owner,
        id: &str,
    ) -> Result<(Memory, History), ApiError> {
        let memory = self.get(owner, id).await?;
        let (versions, truncated) = self
            .store
            .history(owner, id, HISTORY_SHOWN)
            .await
            .map_err(storage)?;
        Ok((
            memory,
            History {
                versions,
                truncated,
            },
        ))
    }

    /// Changes a memory; its previous version goes to its history.
    pub async fn patch(
        &self,
        owner: &Owner,
        id: &str,
        patch: &MemoryPatch,
        ctx: &RequestContext,
    ) -> Result<Memory, ApiError> {
        let settings = &self.settings;
        if *patch == MemoryPatch::default() {
            return Err(ApiError::invalid(
                "nothing to change: give text, metadata, tags or expires_at",
            ));
        }
        if let Some(text) = &patch.text {
            settings.check_text(text)?;
        }
        if let Some(metadata) = &patch.metadata {
            settings.check_metadata(metadata)?;
        }
        let tags = patch
            .tags
            .as_deref()
            .map(|t| settings.check_tags(t))
            .transpose()?;
        if let Some(Some(at)) = patch.expires_at {
            settings.check_expiry(Some(at))?;
        }
        let mut vector: Option<Option<StoredVector>> = None;
        for _ in 0..WRITE_ATTEMPTS {
            let before = self.get(owner, id).await?;
            let text_changed = patch.text.as_ref().is_some_and(|t| *t != before.text);
            let before_key = duplicate_key(&before.namespace, &before.text);
            let after_key = patch
                .text
                .as_ref()
                .map_or(before_key.clone(), |t| duplicate_key(&before.namespace, t));
            if after_key != before_key
                && self
                    .store
                    .duplicate_of(owner, &after_key)
                    .await
                    .map_err(storage)?
                    .is_some_and(|other| other != before.id)
            {
                return Err(ApiError::Conflict {
                    reason: "another memory of this namespace already has this text".to_owned(),
                });
            }
            if text_changed && vector.is_none() {
                let text = patch.text.as_deref().unwrap_or_default();
                vector = Some(self.embed_one(&owner.tenant, text, ctx).await);
            }
            let embedded = vector.as_ref().and_then(Option::as_ref);
            let after = Memory {
                text: patch.text.clone().unwrap_or(before.text.clone()),
                tags: tags.clone().unwrap_or(before.tags.clone()),
                metadata: patch.metadata.clone().unwrap_or(before.metadata.clone()),
                expires_at: patch.expires_at.unwrap_or(before.expires_at),
                updated_at: now_secs(),
                version: before.version + 1,
                vector: match (text_changed, embedded) {
                    (false, _) => before.vector,
                    (true, Some(_)) => VectorState::Ready,
                    (true, None) => VectorState::Pending,
                },
                ..before.clone()
            };
            let write = match (text_changed, embedded) {
                (false, _) => VectorWrite::Keep,
                (true, Some(embedded)) => VectorWrite::Set(embedded),
                (true, None) => VectorWrite::Pending,
            };
            if self
                .store
                .replace(owner, &before, &after, (&before_key, &after_key), write)
                .await
                .map_err(storage)?
            {
                if text_changed && embedded.is_none() {
                    self.queue.request(owner, id).await;
                }
                return Ok(after);
            }
        }
        Err(ApiError::DependencyUnavailable {
            dependency: "memory storage (concurrent writes)",
            retry_after_secs: 1,
        })
    }

    /// Deletes one memory with its vector and history.
    pub async fn delete(&self, owner: &Owner, id: &str) -> Result<(), ApiError> {
        if !valid_memory_id(id) {
            return Err(not_found());
        }
        let Some((memory, _)) = self.store.get(owner, id).await.map_err(storage)? else {
            return Err(not_found());
        };
        let key = duplicate_key(&memory.namespace, &memory.text);
        if self
            .store
            .delete(owner, &memory, &key)
            .await
            .map_err(storage)?
        {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    /// Deletes everything of `owner` (the right to be forgotten), audited in
    /// the tenant's log without any memory's content. Returns the memories deleted.
    pub async fn forget_all(&self, owner: &Owner, correlation_id: &str) -> Result<usize, ApiError> {
        let forgotten = self.store.forget_all(owner).await.map_err(storage)?;
        self.lock_cache().remove(&owner.partition());
        let event = Event {
            actor: &owner.user,
            action: "memory.forgotten",
            target: &format!("memory:{}", owner.user),
            correlation_id,
            details: json!({ "memories": forgotten }),
        };
        self.audit
            .append(&owner.tenant, &event)
            .await
            .map_err(|error| {
                tracing::error!(%error, "auditing a forget-all failed");
                ApiError::DependencyUnavailable {
                    dependency: "audit log",
                    retry_after_secs: 2,
                }
            })?;
        Ok(forgotten)
    }

    /// A page of all of `owner`'s memories with their history, after `cursor`.
    pub async fn export(
        &self,
        owner: &Owner,
        cursor: Option<&str>,
    ) -> Result<ExportPage, ApiError> {
        if let Some(cursor) = cursor
            && !valid_memory_id(cursor)
        {
            return Err(ApiError::invalid("cursor is not one this API gave out"));
        }
        let (memories, next) = self
            .store
            .page(owner, cursor, EXPORT_PAGE)
            .await
            .map_err(storage)?;
        let mut page = Vec::with_capacity(memories.len());
        for memory in memories {
            let (versions, truncated) = self
                .store
                .history(owner, &memory.id, HISTORY_SHOWN)
                .await
                .map_err(storage)?;
            page.push((
                memory,
                History {
                    versions,
                    truncated,
                },
            ));
        }
        Ok(ExportPage {
            memories: page,
            next,
        })
    }

    /// Fills the vector of a memory whose vector is pending (the worker).
    pub async fn fill_vector(
        &self,
        message: &EmbedMessage,
        ctx: &RequestContext,
    ) -> Result<Filled, String> {
        let owner = Owner {
            tenant: message.tenant.clone(),
            user: message.user.clone(),
        };
        let Some((memory, vector)) = self
            .store
            .get(&owner, &message.id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(Filled::NotNeeded);
        };
        if vector.is_some_and(|v| v.model == self.settings.model) {
            return Ok(Filled::NotNeeded);
        }
        let Some(embedded) = self.embed_one(&owner.tenant, &memory.text, ctx).await else {
            return Err("the fleet could not embed the memory".to_owned());
        };
        if self
            .store
            .fill_vector(&owner, &memory.id, memory.version, &embedded)
            .await
            .map_err(|e| e.to_string())?
        {
            Ok(Filled::Done)
        } else {
            Ok(Filled::Changed)
        }
    }
}
