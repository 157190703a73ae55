//! Recall: filters, then the hybrid ranking of [`crate::memory::recall`].

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::{CachedMemory, CachedUser, METRICS_NAMESPACE, MemoryService};
use crate::clock::now_secs;
use crate::memory::model::{Memory, Owner, RecallQuery};
use crate::memory::recall::{Candidate, Signals, rank};
use crate::memory::store::StoredVector;
use crate::observability::{MetricSet, RequestContext};
use crate::problem::ApiError;

/// One recalled memory with why it was recalled.
#[derive(Debug, Clone, PartialEq)]
pub struct Recalled {
    pub memory: Memory,
    pub score: f64,
    pub signals: Signals,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recall {
    pub results: Vec<Recalled>,
    /// The query could not be embedded: ranked by text and recency only.
    pub degraded: bool,
    /// Memories that passed the filters.
    pub considered: usize,
    /// Served from this instance's cache (validated by one read).
    pub cached: bool,
}

impl Recall {
    pub fn to_json(&self) -> Value {
        json!({
            "object": "list",
            "data": self.results.iter().map(|r| json!({
                "memory": r.memory.to_public_json(),
                "score": r.score,
                "signals": r.signals,
            })).collect::<Vec<_>>(),
            "degraded": self.degraded,
            "considered": self.considered,
        })
    }
}

impl MemoryService {
    /// Hybrid recall of `owner`'s memories for `query`.
    pub async fn recall(
        &self,
        owner: &Owner,
        query: &RecallQuery,
        ctx: &RequestContext,
    ) -> Result<Recall, ApiError> {
        let started = Instant::now();
        let settings = &self.settings;
        settings.check_text(&query.query)?;
        let k = settings.check_k(query.k)?;
        let namespace = query
            .namespace
            .as_deref()
            .map(|ns| settings.check_namespace(Some(ns)))
            .transpose()?;
        let tags = settings.check_tags(query.tags.as_deref().unwrap_or_default())?;
        if let Some(metadata) = &query.metadata {
            settings.check_metadata(metadata)?;
        }
        let (embedded, loaded) = futures_util::join!(
            self.embed_one(&owner.tenant, &query.query, ctx),
            self.user(owner)
        );
        let (user, cached) = loaded?;
        self.rank_for(query, k, namespace, tags, embedded, user, cached, started)
    }

    /// [`Self::recall`] with the query's vector given (`None`: degraded), for
    /// measuring recall without the fleet's time.
    pub async fn recall_with(
        &self,
        owner: &Owner,
        query: &RecallQuery,
        embedded: Option<StoredVector>,
    ) -> Result<Recall, ApiError> {
        let started = Instant::now();
        let k = self.settings.check_k(query.k)?;
        let tags = self
            .settings
            .check_tags(query.tags.as_deref().unwrap_or_default())?;
        let (user, cached) = self.user(owner).await?;
        self.rank_for(
            query,
            k,
            query.namespace.clone(),
            tags,
            embedded,
            user,
            cached,
            started,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn rank_for(
        &self,
        query: &RecallQuery,
        k: usize,
        namespace: Option<String>,
        tags: Vec<String>,
        embedded: Option<StoredVector>,
        user: Arc<CachedUser>,
        cached: bool,
        started: Instant,
    ) -> Result<Recall, ApiError> {
        let settings = &self.settings;
        let now = now_secs();
        let passing: Vec<&CachedMemory> = user
            .memories
            .iter()
            .filter(|m| !m.memory.is_expired(now))
            .filter(|m| {
                namespace
                    .as_ref()
                    .is_none_or(|ns| m.memory.namespace == *ns)
            })
            .filter(|m| tags.iter().all(|t| m.memory.tags.contains(t)))
            .filter(|m| {
                query.metadata.as_ref().is_none_or(|wanted| {
                    wanted
                        .iter()
                        .all(|(k, v)| m.memory.metadata.get(k) == Some(v))
                })
            })
            .filter(|m| {
                query
                    .created_after
                    .is_none_or(|after| m.memory.created_at >= after)
            })
            .filter(|m| {
                query
                    .created_before
                    .is_none_or(|before| m.memory.created_at <= before)
            })
            .collect();
        let candidates: Vec<Candidate<'_>> = passing
            .iter()
            .map(|m| Candidate {
                terms: &m.terms,
                vector: m.vector.as_ref(),
                updated_at: m.memory.updated_at,
            })
            .collect();
        let query_vector = embedded.as_ref().map(|v| &v.vector);
        let ranked = rank(
            &candidates,
            &query.query,
            query_vector,
            settings.min_similarity,
            k,
        );
        let results: Vec<Recalled> = ranked
            .into_iter()
            .map(|r| Recalled {
                memory: passing[r.index].memory.clone(),
                score: r.score,
                signals: r.signals,
            })
            .collect();
        let degraded = embedded.is_none();
        let hit = results.first().is_some_and(|best| {
            best.signals
                .vector_similarity
                .is_some_and(|s| s >= settings.hit_similarity)
                || (degraded && best.signals.lexical_rank.is_some())
        });
        MetricSet::new(METRICS_NAMESPACE)
            .dimension("Service", "memory")
            .count("MemoryRecalls", 1.0)
            .count("MemoryRecallDegraded", f64::from(u8::from(degraded)))
            .count("MemoryRecallHits", f64::from(u8::from(hit)))
            .millis(
                "MemoryRecallLatency",
                started.elapsed().as_secs_f64() * 1000.0,
            )
            .property("considered", passing.len())
            .property("cached", cached)
            .emit();
        Ok(Recall {
            considered: passing.len(),
            results,
            degraded,
            cached,
        })
    }
}
