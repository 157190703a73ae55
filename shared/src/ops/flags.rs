//! Per-tenant feature flags with typed values, cached for seconds per instance.
//! Stored in the auth table (`tenant#<t>`, `flag#<name>`); changes go through
//! api-admin, which audits them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::aws::dynamo::error_text as aws;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlagValue {
    Bool(bool),
    Number(f64),
    Text(String),
}

/// Flag names: 1–64 of `a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// One tenant's flags as last read, and when.
type TenantFlags = (Instant, HashMap<String, FlagValue>);

#[derive(Debug)]
pub struct Flags {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    ttl: Duration,
    cache: Mutex<HashMap<String, TenantFlags>>,
}

impl Flags {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String, ttl: Duration) -> Self {
        Self {
            dynamodb,
            table,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Every flag of `tenant`, from cache when fresh.
    pub async fn all(&self, tenant: &str) -> Result<HashMap<String, FlagValue>, String> {
        if let Some((at, flags)) = self.cache.lock().await.get(tenant)
            && at.elapsed() < self.ttl
        {
            return Ok(flags.clone());
        }
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :flag)")
            .expression_attribute_values(":pk", AttributeValue::S(format!("tenant#{tenant}")))
            .expression_attribute_values(":flag", AttributeValue::S("flag#".to_owned()))
            .send()
            .await
            .map_err(aws)?;
        let flags: HashMap<String, FlagValue> = output
            .items()
            .iter()
            .filter_map(|item| {
                let name = item
                    .get("sk")?
                    .as_s()
                    .ok()?
                    .strip_prefix("flag#")?
                    .to_owned();
                let value = serde_json::from_str(item.get("value")?.as_s().ok()?).ok()?;
                Some((name, value))
            })
            .collect();
        self.cache
            .lock()
            .await
            .insert(tenant.to_owned(), (Instant::now(), flags.clone()));
        Ok(flags)
    }

    /// A boolean flag; `default` when unset, of another type, or unreadable.
    pub async fn enabled(&self, tenant: &str, name: &str, default: bool) -> bool {
        match self.all(tenant).await {
            Ok(flags) => match flags.get(name) {
                Some(FlagValue::Bool(value)) => *value,
                _ => default,
            },
            Err(error) => {
                tracing::warn!(%error, tenant, name, "reading flags failed; using the default");
                default
            }
        }
    }

    /// Sets a flag; returns the previous value.
    pub async fn set(
        &self,
        tenant: &str,
        name: &str,
        value: &FlagValue,
    ) -> Result<Option<FlagValue>, String> {
        let output = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(format!("tenant#{tenant}")))
            .item("sk", AttributeValue::S(format!("flag#{name}")))
            .item(
                "value",
                AttributeValue::S(serde_json::to_string(value).map_err(|e| e.to_string())?),
            )
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(aws)?;
        self.cache.lock().await.remove(tenant);
        Ok(output
            .attributes()
            .and_then(|item| item.get("value"))
            .and_then(|v| v.as_s().ok())
            .and_then(|v| serde_json::from_str(v).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values() {
        assert!(valid_name("chat.streaming-v2"));
        assert!(!valid_name("Upper") && !valid_name("") && !valid_name(&"a".repeat(65)));
        let parsed: FlagValue = serde_json::from_str("true").unwrap();
        assert_eq!(parsed, FlagValue::Bool(true));
        assert_eq!(
            serde_json::from_str::<FlagValue>("3.5").unwrap(),
            FlagValue::Number(3.5)
        );
        assert!(
            serde_json::from_str::<FlagValue>("[1]").is_err(),
            "only scalars"
        );
    }
}
