//! This instance's copies of users' memories, validated by one read of the
//! user's `meta` version.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{MemoryService, storage};
use crate::memory::model::{Memory, Owner};
use crate::memory::recall::TermCounts;
use crate::memory::vector::Quantized;
use crate::problem::ApiError;

pub(super) struct CachedMemory {
    pub(super) memory: Memory,
    pub(super) terms: TermCounts,
    pub(super) vector: Option<Quantized>,
}

pub(super) struct CachedUser {
    generation: String,
    version: u64,
    pub(super) memories: Vec<CachedMemory>,
}

/// This instance's copies of users' memories, each valid while the user's
/// `meta` version is the one it was read at. Bounded by the memories it holds;
/// the user least recently loaded goes first.
#[derive(Default)]
pub(super) struct Cache {
    users: HashMap<String, Arc<CachedUser>>,
    order: VecDeque<String>,
    held: usize,
}

impl Cache {
    fn get(&self, partition: &str, generation: &str, version: u64) -> Option<Arc<CachedUser>> {
        self.users
            .get(partition)
            .filter(|user| user.generation == generation && user.version == version)
            .cloned()
    }

    fn put(&mut self, partition: String, user: Arc<CachedUser>, limit: usize) {
        self.remove(&partition);
        self.held += user.memories.len();
        self.order.push_back(partition.clone());
        self.users.insert(partition, user);
        while self.held > limit {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(user) = self.users.remove(&oldest) {
                self.held -= user.memories.len();
            }
        }
    }

    pub(super) fn remove(&mut self, partition: &str) {
        if let Some(user) = self.users.remove(partition) {
            self.held -= user.memories.len();
            self.order.retain(|p| p != partition);
        }
    }
}

impl MemoryService {
    pub(super) fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Plain data: a panic while holding it leaves nothing half-done.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The user's memories, from this instance's cache when its copy is current.
    pub(super) async fn user(&self, owner: &Owner) -> Result<(Arc<CachedUser>, bool), ApiError> {
        let partition = owner.partition();
        let meta = self
            .store
            .meta(owner)
            .await
            .map_err(storage)?
            .unwrap_or_default();
        if let Some(user) = self
            .lock_cache()
            .get(&partition, &meta.generation, meta.version)
        {
            return Ok((user, true));
        }
        let (loaded, pages) = self.store.load_all(owner).await.map_err(storage)?;
        tracing::info!(memories = loaded.len(), pages, "memories loaded");
        let memories = loaded
            .into_iter()
            .map(|(memory, vector)| CachedMemory {
                terms: TermCounts::of(&memory.text),
                vector: vector
                    .filter(|stored| stored.model == self.settings.model)
                    .map(|stored| stored.vector),
                memory,
            })
            .collect();
        let user = Arc::new(CachedUser {
            generation: meta.generation,
            version: meta.version,
            memories,
        });
        self.lock_cache()
            .put(partition, user.clone(), self.settings.cache_memories);
        Ok((user, false))
    }

    /// Drops this instance's copy of `owner`'s memories (the next recall reads
    /// them again: what a cold instance does).
    pub fn drop_cached(&self, owner: &Owner) {
        self.lock_cache().remove(&owner.partition());
    }
}
