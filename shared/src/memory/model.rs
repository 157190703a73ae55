//! The memory, the requests that make and find memories, and their limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::clock::now_secs;
use crate::config::{ConfigError, Env};
use crate::problem::ApiError;

/// Whose memories: the token's tenant and subject, never the request's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub tenant: String,
    pub user: String,
}

impl Owner {
    pub fn of(principal: &Principal) -> Self {
        Self {
            tenant: principal.tenant.clone(),
            user: principal.subject.clone(),
        }
    }

    /// The user's partition: tenant names hold no `#`, so this is unambiguous.
    pub fn partition(&self) -> String {
        format!("mem#{}#{}", self.tenant, self.user)
    }
}

/// Bounds and tuning, from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct MemorySettings {
    pub table: String,
    pub embed_queue_url: String,
    /// The embedding model of memory vectors (recorded with each vector).
    pub model: String,
    pub max_text_chars: usize,
    pub max_metadata_bytes: usize,
    pub max_metadata_depth: usize,
    pub max_tags: usize,
    pub max_tag_chars: usize,
    pub max_k: usize,
    pub max_per_user: u64,
    /// Cosine at or above which a new memory updates an existing one instead.
    pub near_duplicate: f32,
    /// The lowest cosine the vector ranking counts as a match.
    pub min_similarity: f32,
    /// A recall is a hit when its best result is at least this similar (or, when
    /// degraded, matches lexically).
    pub hit_similarity: f32,
    /// How long a store or recall waits for the fleet's embedding.
    pub embed_timeout: Duration,
    /// Memories kept in this instance's cache, across users.
    pub cache_memories: usize,
}

impl MemorySettings {
    /// `MEMORY_TABLE`, `MEMORY_EMBED_QUEUE_URL` (required); `MEMORY_EMBEDDING_MODEL`
    /// (the first of `EMBEDDING_MODELS`); `MEMORY_MAX_TEXT_CHARS` (8000),
    /// `MEMORY_MAX_METADATA_BYTES` (4096), `MEMORY_MAX_TAGS` (20),
    /// `MEMORY_MAX_K` (50), `MEMORY_MAX_PER_USER` (20000),
    /// `MEMORY_NEAR_DUPLICATE` (0.95), `MEMORY_MIN_SIMILARITY` (0.2),
    /// `MEMORY_HIT_SIMILARITY` (0.5), `MEMORY_EMBED_TIMEOUT_MS` (1500),
    /// `MEMORY_CACHE_MEMORIES` (200000).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let model = match env.optional("MEMORY_EMBEDDING_MODEL") {
            Some(model) => model,
            None => env
                .list("EMBEDDING_MODELS")
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ConfigError::new(
                        "MEMORY_EMBEDDING_MODEL",
                        "is required when EMBEDDING_MODELS is empty",
                    )
                })?,
        };
        let share = |name: &str, default: f32| -> Result<f32, ConfigError> {
            let value: f32 = env.parse_or(name, default)?;
            if (0.0..=1.0).contains(&value) {
                Ok(value)
            } else {
                Err(ConfigError::new(name, "must be between 0 and 1"))
            }
        };
        Ok(Self {
            table: env.required("MEMORY_TABLE")?,
            embed_queue_url: env.required("MEMORY_EMBED_QUEUE_URL")?,
            model,
            max_text_chars: env.parse_or("MEMORY_MAX_TEXT_CHARS", 8_000)?,
            max_metadata_bytes: env.parse_or("MEMORY_MAX_METADATA_BYTES", 4_096)?,
            max_metadata_depth: 4,
            max_tags: env.parse_or("MEMORY_MAX_TAGS", 20)?,
            max_tag_chars: 64,
            max_k: env.parse_or("MEMORY_MAX_K", 50)?,
            max_per_user: env.parse_or("MEMORY_MAX_PER_USER", 20_000)?,
            near_duplicate: share("MEMORY_NEAR_DUPLICATE", 0.95)?,
            min_similarity: share("MEMORY_MIN_SIMILARITY", 0.2)?,
            hit_similarity: share("MEMORY_HIT_SIMILARITY", 0.5)?,
            embed_timeout: env.millis_or("MEMORY_EMBED_TIMEOUT_MS", 1_500, 30_000)?,
            cache_memories: env.parse_or("MEMORY_CACHE_MEMORIES", 200_000)?,
        })
    }
}

pub const DEFAULT_NAMESPACE: &str = "default";
/// Expiry at most ten years ahead: a typo of milliseconds for seconds is refused.
const MAX_EXPIRY_SECS: u64 = 10 * 365 * 86_400;

/// Whether the memory's vector is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorState {
    Ready,
    Pending,
}

/// One memory as stored and answered (its vector stays in storage).
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub id: String,
    pub text: String,
    pub namespace: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    pub created_at: u64,
    pub updated_at: u64,
    pub expires_at: Option<u64>,
    pub version: u64,
    pub vector: VectorState,
}

impl Memory {
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    pub fn to_public_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "memory",
            "text": self.text,
            "namespace": self.namespace,
            "tags": self.tags,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "version": self.version,
            "vector": self.vector,
        })
    }
}

/// A memory's earlier version, kept when it was updated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub text: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    pub replaced_at: u64,
}

/// `POST /v1/memory`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMemory {
    pub text: String,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub namespace: Option<String>,
    /// Unix seconds; the memory is hidden from then on and deleted later.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// `PATCH /v1/memory/{id}`: what is given changes; `expires_at: null` clears it.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MemoryPatch {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default, with = "double_option")]
    pub expires_at: Option<Option<u64>>,
}

/// `Some(None)` for an explicit null, `None` for an absent field.
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

/// `POST /v1/memory/search`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecallQuery {
    pub query: String,
    #[serde(default)]
    pub k: Option<usize>,
    #[serde(default)]
    pub namespace: Option<String>,
    /// Every tag given must be on the memory.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Every key given must have this value in the memory's metadata.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Unix seconds, inclusive.
    #[serde(default)]
    pub created_after: Option<u64>,
    #[serde(default)]
    pub created_before: Option<u64>,
}

pub const DEFAULT_K: usize = 10;

/// Lowercase, whitespace collapsed: exact duplicates are equal after this.
pub fn normalize(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The exact-duplicate key of a text in a namespace.
pub fn duplicate_key(namespace: &str, text: &str) -> String {
    let digest = Sha256::digest(normalize(text).as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("d#{namespace}#{hex}")
}

fn valid_namespace(namespace: &str) -> bool {
    (1..=64).contains(&namespace.len())
        && namespace.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

impl MemorySettings {
    pub fn check_text(&self, text: &str) -> Result<(), ApiError> {
        if text.trim().is_empty() {
            return Err(ApiError::invalid("text must not be empty"));
        }
        let chars = text.chars().count();
        if chars > self.max_text_chars {
            return Err(ApiError::invalid(format!(
                "text has {chars} characters; at most {} are allowed (MEMORY_MAX_TEXT_CHARS)",
                self.max_text_chars
            )));
        }
        Ok(())
    }

    pub fn check_metadata(&self, metadata: &Map<String, Value>) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(metadata)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if bytes > self.max_metadata_bytes {
            return Err(ApiError::invalid(format!(
                "metadata has {bytes} bytes as JSON; at most {} are allowed (MEMORY_MAX_METADATA_BYTES)",
                self.max_metadata_bytes
            )));
        }
        fn depth(value: &Value) -> usize {
            match value {
                Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
                Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        let nesting = 1 + metadata.values().map(depth).max().unwrap_or(0);
        if nesting > self.max_metadata_depth {
            return Err(ApiError::invalid(format!(
                "metadata nests {nesting} levels deep; at most {} are allowed",
                self.max_metadata_depth
            )));
        }
        Ok(())
    }

    pub fn check_tags(&self, tags: &[String]) -> Result<Vec<String>, ApiError> {
        if tags.len() > self.max_tags {
            return Err(ApiError::invalid(format!(
                "{} tags given; at most {} are allowed (MEMORY_MAX_TAGS)",
                tags.len(),
                self.max_tags
            )));
        }
        let mut clean: Vec<String> = Vec::with_capacity(tags.len());
        for tag in tags {
            let tag = tag.trim();
            if tag.is_empty() || tag.chars().count() > self.max_tag_chars {
                return Err(ApiError::invalid(format!(
                    "tags have 1 to {} characters",
                    self.max_tag_chars
                )));
            }
            if !clean.iter().any(|known| known == tag) {
                clean.push(tag.to_owned());
            }
        }
        Ok(clean)
    }

    pub fn check_namespace(&self, namespace: Option<&str>) -> Result<String, ApiError> {
        let namespace = namespace.unwrap_or(DEFAULT_NAMESPACE);
        if !valid_namespace(namespace) {
            return Err(ApiError::invalid(
                "namespace has 1 to 64 of a-z, 0-9, '.', '_' and '-'",
            ));
        }
        Ok(namespace.to_owned())
    }

    pub fn check_expiry(&self, expires_at: Option<u64>) -> Result<(), ApiError> {
        let now = now_secs();
        match expires_at {
            Some(at) if at <= now => Err(ApiError::invalid(
                "expires_at must be in the future (Unix seconds)",
            )),
            Some(at) if at > now + MAX_EXPIRY_SECS => Err(ApiError::invalid(
                "expires_at is more than ten years ahead (Unix seconds, not milliseconds)",
            )),
            _ => Ok(()),
        }
    }

    pub fn check_k(&self, k: Option<usize>) -> Result<usize, ApiError> {
        let k = k.unwrap_or(DEFAULT_K.min(self.max_k));
        if !(1..=self.max_k).contains(&k) {
            return Err(ApiError::invalid(format!(
                "k must be between 1 and {} (MEMORY_MAX_K)",
                self.max_k
            )));
        }
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MemorySettings {
        MemorySettings::from_env(&Env::new(&[
            ("MEMORY_TABLE", "t"),
            ("MEMORY_EMBED_QUEUE_URL", "q"),
            ("EMBEDDING_MODELS", "sophia-embed"),
            ("MEMORY_MAX_TEXT_CHARS", "20"),
        ]))
        .unwrap()
    }

    #[test]
    fn duplicates_are_found_after_normalizing() {
        assert_eq!(
            normalize("  Dana   owns\tthe Q3 migration "),
            "dana owns the q3 migration"
        );
        assert_eq!(
            duplicate_key("default", "Dana owns"),
            duplicate_key("default", "dana   OWNS")
        );
        assert_ne!(duplicate_key("a", "x"), duplicate_key("b", "x"));
    }

    #[test]
    fn every_limit_is_named_in_its_refusal() {
        let s = settings();
        assert!(s.check_text(" ").is_err());
        assert!(
            s.check_text(&"x".repeat(21))
                .unwrap_err()
                .to_string()
                .contains("MEMORY_MAX_TEXT_CHARS")
        );
        assert!(
            s.check_tags(&vec!["t".into(); 21])
                .unwrap_err()
                .to_string()
                .contains("MEMORY_MAX_TAGS")
        );
        assert_eq!(
            s.check_tags(&["a".into(), " a ".into(), "b".into()])
                .unwrap(),
            ["a", "b"]
        );
        assert!(s.check_namespace(Some("Has Space")).is_err());
        assert_eq!(s.check_namespace(None).unwrap(), "default");
        assert!(s.check_expiry(Some(1)).is_err());
        assert!(s.check_expiry(Some(now_secs() * 1000)).is_err());
        assert!(s.check_k(Some(0)).is_err() && s.check_k(Some(51)).is_err());
        assert_eq!(s.check_k(None).unwrap(), 10);
        let deep: Map<String, Value> =
            serde_json::from_value(json!({"a": {"b": {"c": {"d": {"e": 1}}}}})).unwrap();
        assert!(s.check_metadata(&deep).is_err());
        let big: Map<String, Value> =
            serde_json::from_value(json!({"a": "x".repeat(5000)})).unwrap();
        assert!(
            s.check_metadata(&big)
                .unwrap_err()
                .to_string()
                .contains("MEMORY_MAX_METADATA_BYTES")
        );
    }

    #[test]
    fn a_patch_tells_null_from_absent() {
        let patch: MemoryPatch = serde_json::from_value(json!({"expires_at": null})).unwrap();
        assert_eq!(patch.expires_at, Some(None));
        let patch: MemoryPatch = serde_json::from_value(json!({"text": "x"})).unwrap();
        assert_eq!(patch.expires_at, None);
    }
}
