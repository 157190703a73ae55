//! The exact-match response cache of chat completions.
//!
//! Opt-in twice: the tenant's flag `response_cache` (set through api-admin) and
//! the request's header `x-sophia-cache: use`. Only deterministic requests are
//! cached: never `stream: true`, and never when sampling is random
//! (`temperature` above 0, which is OpenAI's default when it is absent, unless
//! a `seed` is given). The key is the tenant and a SHA-256 of the request as it
//! goes upstream, serialized canonically (keys sorted), so a hit can never be
//! another tenant's answer. Entries live in the state table (`cache#<tenant>`,
//! `chat#<hash>`) with a TTL, and answers above [`MAX_ANSWER_BYTES`] are not
//! stored. The answer says `x-sophia-cache: hit`, `miss` or `bypass`.

use std::fmt::Write as _;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::aws::dynamo::error_text as aws;
use crate::config::{ConfigError, Env};
use crate::inference::chat::ChatRequest;
use crate::ops::flags::{FlagValue, Flags};
use crate::problem::ApiError;

/// The request header that asks for the cache, and the answer's header.
pub const CACHE_HEADER: &str = "x-sophia-cache";
/// The tenant flag that allows it.
pub const CACHE_FLAG: &str = "response_cache";
/// Well under DynamoDB's 400 KB item limit, with room for the key and attributes.
pub const MAX_ANSWER_BYTES: usize = 300 * 1024;

/// What the cache did for one request, as the answer's header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// Asked for, but not possible for this request or tenant.
    Bypass,
}

impl CacheOutcome {
    pub fn header_value(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

/// The cache decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLookup {
    /// The caller did not ask: no header on the answer, no AWS call.
    NotAsked,
    Bypass,
    /// Look up (and on a miss, store under) this key.
    Key(String),
}

#[derive(Debug)]
pub struct ResponseCache {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    ttl: Duration,
    flags: Flags,
}

impl ResponseCache {
    /// `STATE_TABLE` for the entries, `AUTH_TABLE` for the tenant flag (cached
    /// `RESPONSE_CACHE_FLAG_CACHE_MS`, 30 s), `RESPONSE_CACHE_TTL_SECS` (3600).
    pub fn from_env(
        env: &Env<'_>,
        dynamodb: aws_sdk_dynamodb::Client,
    ) -> Result<Self, ConfigError> {
        let ttl_secs: u64 = env.parse_or("RESPONSE_CACHE_TTL_SECS", 3600)?;
        if !(1..=7 * 86_400).contains(&ttl_secs) {
            return Err(ConfigError::new(
                "RESPONSE_CACHE_TTL_SECS",
                "must be between 1 and 604800 (7 days)",
            ));
        }
        let flag_cache = env.millis_or("RESPONSE_CACHE_FLAG_CACHE_MS", 30_000, 600_000)?;
        Ok(Self {
            flags: Flags::new(dynamodb.clone(), env.required("AUTH_TABLE")?, flag_cache),
            dynamodb,
            table: env.required("STATE_TABLE")?,
            ttl: Duration::from_secs(ttl_secs),
        })
    }

    /// Whether and under which key this request may use the cache: the header
    /// (`use`; anything else, bytes that are not text included, is a 400), the
    /// request's determinism, the flag.
    pub async fn lookup_for(
        &self,
        header: Option<&http::HeaderValue>,
        tenant: &str,
        chat: &ChatRequest,
        upstream: &Value,
    ) -> Result<CacheLookup, ApiError> {
        match header.map(|value| value.to_str().map(str::trim)) {
            None => return Ok(CacheLookup::NotAsked),
            Some(Ok(value)) if value.eq_ignore_ascii_case("use") => {}
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "{CACHE_HEADER} must be \"use\" (or absent)"
                )));
            }
        }
        if !deterministic(chat) {
            return Ok(CacheLookup::Bypass);
        }
        let allowed = match self.flags.all(tenant).await {
            Ok(flags) => flags.get(CACHE_FLAG) == Some(&FlagValue::Bool(true)),
            Err(error) => {
                // The cache is an optimisation: without the flag, answer uncached.
                tracing::warn!(%error, tenant, "reading the cache flag failed; bypassing the cache");
                false
            }
        };
        if !allowed {
            return Ok(CacheLookup::Bypass);
        }
        Ok(CacheLookup::Key(key_of(upstream)))
    }

    /// The stored answer under `key` of `tenant`, if one is there and fresh. A
    /// failed read is a miss (logged), never an error for the caller.
    pub async fn get(&self, tenant: &str, key: &str) -> Option<Value> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(partition(tenant)))
            .key("sk", AttributeValue::S(key.to_owned()))
            .send()
            .await
            .map_err(aws);
        let item = match output {
            Ok(output) => output.item?,
            Err(error) => {
                tracing::warn!(%error, "reading the response cache failed; a miss");
                return None;
            }
        };
        // DynamoDB deletes expired items late; an expired one is a miss.
        let expires: u64 = item.get("expires_at")?.as_n().ok()?.parse().ok()?;
        if expires <= crate::clock::now_secs() {
            return None;
        }
        serde_json::from_str(item.get("answer")?.as_s().ok()?).ok()
    }

    /// Stores `answer` under `key` of `tenant` unless it is too large. A failed
    /// write is logged; the caller has the answer anyway.
    pub async fn put(&self, tenant: &str, key: &str, model: &str, answer: &Value) {
        let text = answer.to_string();
        if text.len() > MAX_ANSWER_BYTES {
            tracing::info!(
                bytes = text.len(),
                "answer too large for the response cache"
            );
            return;
        }
        let expires = crate::clock::now_secs() + self.ttl.as_secs();
        let written = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(partition(tenant)))
            .item("sk", AttributeValue::S(key.to_owned()))
            .item("answer", AttributeValue::S(text))
            .item("model", AttributeValue::S(model.to_owned()))
            .item("expires_at", AttributeValue::N(expires.to_string()))
            .send()
            .await;
        if let Err(error) = written {
            tracing::warn!(error = %aws(error), "storing in the response cache failed");
        }
    }
}

fn partition(tenant: &str) -> String {
    format!("cache#{tenant}")
}

/// Same request, same answer: no stream, and greedy sampling or a fixed seed.
pub fn deterministic(chat: &ChatRequest) -> bool {
    if chat.stream {
        return false;
    }
    chat.seed.is_some() || chat.temperature.is_some_and(|t| t <= 0.0)
}

/// `chat#` and the SHA-256 of the canonical JSON of the upstream request.
pub fn key_of(upstream: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(upstream, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    let mut key = String::with_capacity(5 + 64);
    key.push_str("chat#");
    for byte in digest {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

/// JSON with object keys sorted at every level (whatever map order serde_json
/// was built with), so equal requests hash alike.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(extra: Value) -> ChatRequest {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn only_deterministic_unstreamed_requests_are_cacheable() {
        assert!(deterministic(&chat(json!({"temperature": 0}))));
        assert!(deterministic(&chat(json!({"temperature": 0.7, "seed": 3}))));
        assert!(!deterministic(&chat(json!({}))), "OpenAI's default is 1");
        assert!(!deterministic(&chat(json!({"temperature": 0.2}))));
        assert!(!deterministic(&chat(
            json!({"temperature": 0, "stream": true})
        )));
    }

    #[test]
    fn the_key_ignores_key_order_and_tells_requests_apart() {
        let a = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1});
        let b = json!({"seed": 1, "messages": [{"content": "hi", "role": "user"}], "model": "m"});
        let c = json!({"seed": 2, "messages": [{"content": "hi", "role": "user"}], "model": "m"});
        assert_eq!(key_of(&a), key_of(&b));
        assert_ne!(key_of(&a), key_of(&c));
        assert!(key_of(&a).starts_with("chat#") && key_of(&a).len() == 69);
    }
}
