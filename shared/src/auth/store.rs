//! API keys, refresh-token families and revocations in the auth table.
//!
//! Items (`pk`, `sk`):
//! - `apikey#<id>`, `apikey`: tenant, scopes, name, hash, created_at, revoked;
//! - `family#<id>`, `family`: tenant, subject, scopes, current token id and hash,
//!   revoked, expires_at (TTL);
//! - `revoked-family`, `<family id>`: marker read by every verifier (cached),
//!   expires_at = when the family's last access token has expired anyway;
//! - `tenants`, `<tenant>`: the tenant registry, written with every API key.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use tokio::sync::Mutex;

use crate::aws::dynamo::{n, query_all, s};

use super::tokens::{Opaque, secret_hash};
use crate::clock::now_secs;

const TENANTS_PK: &str = "tenants";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("auth table: {0}")]
    Aws(String),
    #[error("auth table item is malformed: {0}")]
    Malformed(&'static str),
}

fn aws<E: std::error::Error + 'static, R: std::fmt::Debug>(
    error: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> StoreError {
    StoreError::Aws(crate::aws::dynamo::error_text(error))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant: String,
    pub scopes: Vec<String>,
    pub name: String,
    pub hash: String,
    pub revoked: bool,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyRecord {
    pub id: String,
    pub tenant: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub current: String,
    pub hash: String,
    pub revoked: bool,
    pub expires_at: u64,
}

/// Outcome of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current: here is the family and the new refresh token.
    Rotated(FamilyRecord, Opaque),
    /// Unknown family, wrong secret, or expired.
    Invalid,
    /// An already used token was presented: the family is now revoked.
    ReuseDetected(FamilyRecord),
    /// The family was revoked before.
    Revoked,
}

#[derive(Debug)]
pub struct AuthStore {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
}

fn list(values: &[String]) -> AttributeValue {
    AttributeValue::L(values.iter().map(|v| s(v)).collect())
}

struct Item<'a>(&'a HashMap<String, AttributeValue>);

impl Item<'_> {
    fn text(&self, name: &'static str) -> Result<String, StoreError> {
        self.0
            .get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .ok_or(StoreError::Malformed(name))
    }
    fn number(&self, name: &'static str) -> u64 {
        self.0
            .get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    fn flag(&self, name: &'static str) -> bool {
        self.0
            .get(name)
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false)
    }
    fn strings(&self, name: &'static str) -> Vec<String> {
        self.0
            .get(name)
            .and_then(|v| v.as_l().ok())
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_s().ok().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl AuthStore {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { dynamodb, table }
    }

    /// Creates an API key; the plaintext is returned once and never stored.
    pub async fn create_api_key(
        &self,
        tenant: &str,
        scopes: &[String],
        name: &str,
    ) -> Result<(ApiKeyRecord, String), StoreError> {
        let key = Opaque::generate(1);
        let id = key.ids[0].clone();
        let record = ApiKeyRecord {
            id: id.clone(),
            tenant: tenant.to_owned(),
            scopes: scopes.to_vec(),
            name: name.to_owned(),
            hash: secret_hash(&key.secret),
            revoked: false,
            created_at: now_secs(),
        };
        // The key item, and an index item under the tenant so admins can list
        // their keys without a scan; both or neither.
        let key_item = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&format!("apikey#{id}")))
            .item("sk", s("apikey"))
            .item("tenant", s(tenant))
            .item("scopes", list(scopes))
            .item("name", s(name))
            .item("hash", s(&record.hash))
            .item("revoked", AttributeValue::Bool(false))
            .item("created_at", n(record.created_at))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| StoreError::Aws(e.to_string()))?;
        let index_item = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&format!("tenant#{tenant}")))
            .item("sk", s(&format!("apikey#{id}")))
            .item("scopes", list(scopes))
            .item("name", s(name))
            .item("created_at", n(record.created_at))
            .build()
            .map_err(|e| StoreError::Aws(e.to_string()))?;
        // The tenant registry (the platform dashboard's list of tenants); a Put,
        // so a tenant's next key only refreshes it.
        let tenant_item = Put::builder()
            .table_name(&self.table)
            .item("pk", s(TENANTS_PK))
            .item("sk", s(tenant))
            .item("last_key_at", n(record.created_at))
            .build()
            .map_err(|e| StoreError::Aws(e.to_string()))?;
        self.dynamodb
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(key_item).build())
            .transact_items(TransactWriteItem::builder().put(index_item).build())
            .transact_items(TransactWriteItem::builder().put(tenant_item).build())
            .send()
            .await
            .map_err(aws)?;
        Ok((record, key.render(super::tokens::API_KEY_PREFIX)))
    }

    /// Every tenant that was ever given an API key (the tenant registry).
    pub async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let query = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(TENANTS_PK));
        let items = query_all(query).await.map_err(aws)?;
        Ok(items
            .iter()
            .filter_map(|item| item.get("sk").and_then(|v| v.as_s().ok()).cloned())
            .collect())
    }

    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&format!("apikey#{id}")))
            .key("sk", s("apikey"))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws)?;
        let Some(item) = output.item() else {
            return Ok(None);
        };
        let item = Item(item);
        Ok(Some(ApiKeyRecord {
            id: id.to_owned(),
            tenant: item.text("tenant")?,
            scopes: item.strings("scopes"),
            name: item.text("name").unwrap_or_default(),
            hash: item.text("hash")?,
            revoked: item.flag("revoked"),
            created_at: item.number("created_at"),
        }))
    }

    /// The tenant's API keys (never their hashes), newest last.
    pub async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(&format!("tenant#{tenant}")))
            .expression_attribute_values(":prefix", s("apikey#"))
            .send()
            .await
            .map_err(aws)?;
        let mut keys = Vec::new();
        for item in output.items() {
            let Some(id) = item
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .and_then(|sk| sk.strip_prefix("apikey#"))
            else {
                continue;
            };
            if let Some(mut record) = self.api_key(id).await? {
                record.hash.clear();
                keys.push(record);
            }
        }
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    /// Revokes the tenant's key `id`. `false` when no such key belongs to the
    /// tenant (another tenant's key is indistinguishable from a missing one).
    pub async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&format!("apikey#{id}")))
            .key("sk", s("apikey"))
            .update_expression("SET revoked = :true")
            .condition_expression("attribute_exists(pk) AND tenant = :tenant")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":tenant", s(tenant))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(error) => Err(aws(error)),
        }
    }

    /// Starts a refresh-token family for a subject; returns the first refresh token.
    pub async fn create_family(
        &self,
        tenant: &str,
        subject: &str,
        scopes: &[String],
        ttl_secs: u64,
    ) -> Result<(FamilyRecord, Opaque), StoreError> {
        let token = Opaque::generate(2);
        let record = FamilyRecord {
            id: token.ids[0].clone(),
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            scopes: scopes.to_vec(),
            current: token.ids[1].clone(),
            hash: secret_hash(&token.secret),
            revoked: false,
            expires_at: now_secs() + ttl_secs,
        };
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&format!("family#{}", record.id)))
            .item("sk", s("family"))
            .item("tenant", s(tenant))
            .item("subject", s(subject))
            .item("scopes", list(scopes))
            .item("current", s(&record.current))
            .item("hash", s(&record.hash))
            .item("revoked", AttributeValue::Bool(false))
            .item("expires_at", n(record.expires_at))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(aws)?;
        Ok((record, token))
    }

    async fn family(&self, id: &str) -> Result<Option<FamilyRecord>, StoreError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&format!("family#{id}")))
            .key("sk", s("family"))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws)?;
        let Some(item) = output.item() else {
            return Ok(None);
        };
        let item = Item(item);
        Ok(Some(FamilyRecord {
            id: id.to_owned(),
            tenant: item.text("tenant")?,
            subject: item.text("subject")?,
            scopes: item.strings("scopes"),
            current: item.text("current")?,
            hash: item.text("hash")?,
            revoked: item.flag("revoked"),
            expires_at: item.number("expires_at"),
        }))
    }

    /// Presents a refresh token: rotates it when current; revokes the family when
    /// an already used one comes back (RFC 6819 §5.2.2.3, OAuth 2.1 rotation).
    pub async fn rotate(
        &self,
        presented: &Opaque,
        ttl_secs: u64,
        access_ttl_secs: u64,
    ) -> Result<Rotation, StoreError> {
        let (family_id, token_id) = (&presented.ids[0], &presented.ids[1]);
        let Some(family) = self.family(family_id).await? else {
            return Ok(Rotation::Invalid);
        };
        if family.revoked {
            return Ok(Rotation::Revoked);
        }
        if family.expires_at <= now_secs() {
            return Ok(Rotation::Invalid);
        }
        if &family.current != token_id {
            // Only a token that really belonged to this family counts as reuse;
            // ids alone are not secret enough to let anyone revoke families.
            if !self.was_issued(&family, presented).await? {
                return Ok(Rotation::Invalid);
            }
            self.revoke_family(&family, access_ttl_secs).await?;
            return Ok(Rotation::ReuseDetected(family));
        }
        if !super::tokens::secret_matches(&presented.secret, &family.hash) {
            return Ok(Rotation::Invalid);
        }
        let next = Opaque {
            ids: vec![family.id.clone(), super::tokens::random_hex(8)],
            secret: super::tokens::random_hex(32),
        };
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&format!("family#{}", family.id)))
            .key("sk", s("family"))
            .update_expression(
                "SET #current = :next, #hash = :hash, expires_at = :expires ADD used_hashes :used",
            )
            .condition_expression("#current = :presented AND revoked = :false")
            .expression_attribute_names("#current", "current")
            .expression_attribute_names("#hash", "hash")
            .expression_attribute_values(":next", s(&next.ids[1]))
            .expression_attribute_values(":hash", s(&secret_hash(&next.secret)))
            .expression_attribute_values(":expires", n(now_secs() + ttl_secs))
            .expression_attribute_values(":used", AttributeValue::Ss(vec![family.hash.clone()]))
            .expression_attribute_values(":presented", s(token_id))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Rotation::Rotated(family, next)),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                // Two presentations of one token raced: the loser is a reuse.
                self.revoke_family(&family, access_ttl_secs).await?;
                Ok(Rotation::ReuseDetected(family))
            }
            Err(error) => Err(aws(error)),
        }
    }

    /// Whether `presented` is a refresh token this family issued before (its
    /// secret's hash is among the used ones).
    async fn was_issued(
        &self,
        family: &FamilyRecord,
        presented: &Opaque,
    ) -> Result<bool, StoreError> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&format!("family#{}", family.id)))
            .key("sk", s("family"))
            .projection_expression("used_hashes")
            .consistent_read(true)
            .send()
            .await
            .map_err(aws)?;
        let used = output
            .item()
            .and_then(|item| item.get("used_hashes"))
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default();
        Ok(used
            .iter()
            .any(|hash| super::tokens::secret_matches(&presented.secret, hash)))
    }

    /// Revokes a family: no refresh works any more, and verifiers reject its
    /// access tokens once their revocation cache refreshes.
    pub async fn revoke_family(
        &self,
        family: &FamilyRecord,
        access_ttl_secs: u64,
    ) -> Result<(), StoreError> {
        self.dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&format!("family#{}", family.id)))
            .key("sk", s("family"))
            .update_expression("SET revoked = :true")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .send()
            .await
            .map_err(aws)?;
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", s("revoked-family"))
            .item("sk", s(&family.id))
            .item("tenant", s(&family.tenant))
            .item("expires_at", n(now_secs() + access_ttl_secs + 60))
            .send()
            .await
            .map_err(aws)?;
        Ok(())
    }

    /// Revokes the family of a presented refresh token if the token is genuine
    /// (current or used before). Returns the family when something was revoked.
    pub async fn revoke_presented(
        &self,
        presented: &Opaque,
        access_ttl_secs: u64,
    ) -> Result<Option<FamilyRecord>, StoreError> {
        let Some(family) = self.family(&presented.ids[0]).await? else {
            return Ok(None);
        };
        let genuine = (family.current == presented.ids[1]
            && super::tokens::secret_matches(&presented.secret, &family.hash))
            || self.was_issued(&family, presented).await?;
        if !genuine {
            return Ok(None);
        }
        self.revoke_family(&family, access_ttl_secs).await?;
        Ok(Some(family))
    }

    async fn revoked_families(&self) -> Result<HashSet<String>, StoreError> {
        let query = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s("revoked-family"));
        let items = query_all(query).await.map_err(aws)?;
        let now = now_secs();
        Ok(items
            .iter()
            .map(Item)
            .filter(|item| item.number("expires_at") > now)
            .filter_map(|item| item.text("sk").ok())
            .collect())
    }
}

/// The revoked families, re-read at most every `ttl`: verification adds no
/// round trip to a request except one per instance per `ttl`.
#[derive(Debug)]
pub struct RevocationCache {
    store: std::sync::Arc<AuthStore>,
    ttl: Duration,
    cache: Mutex<(Option<Instant>, HashSet<String>)>,
}

impl RevocationCache {
    pub fn new(store: std::sync::Arc<AuthStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Mutex::new((None, HashSet::new())),
        }
    }

    /// Sets the list as if just read (offline tests, tools).
    pub async fn preload(&self, families: HashSet<String>) {
        *self.cache.lock().await = (Some(Instant::now()), families);
    }

    /// Whether `family` is revoked. When the list cannot be read and none was
    /// read before, fails closed (the caller answers 503, not 200).
    pub async fn is_revoked(&self, family: &str) -> Result<bool, StoreError> {
        let mut cache = self.cache.lock().await;
        let stale = cache.0.is_none_or(|at| at.elapsed() >= self.ttl);
        if stale {
            match self.store.revoked_families().await {
                Ok(families) => *cache = (Some(Instant::now()), families),
                Err(error) if cache.0.is_some() => {
                    tracing::warn!(%error, "re-reading revocations failed; using the last list");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(cache.1.contains(family))
    }
}
