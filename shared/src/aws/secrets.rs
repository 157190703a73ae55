//! Bearer tokens for upstream calls, read from Secrets Manager and cached.
//!
//! The cache is refreshed when it is older than `ttl`, and at once when an
//! upstream answers 401: after a rotation the next request re-reads AWSCURRENT
//! and succeeds, so rotation never causes an outage. The stage is always named:
//! a read without it may return an older version (seen with moto).

use std::time::{Duration, Instant};

use tokio::sync::RwLock;

#[derive(Debug, Clone, thiserror::Error)]
#[error("reading secret {secret_id} failed: {reason}")]
pub struct SecretError {
    pub secret_id: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct SecretToken {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    ttl: Duration,
    cached: RwLock<Option<(String, Instant)>>,
}

impl SecretToken {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String, ttl: Duration) -> Self {
        Self {
            client,
            secret_id,
            ttl,
            cached: RwLock::new(None),
        }
    }

    /// The current token, from cache when fresh.
    pub async fn get(&self) -> Result<String, SecretError> {
        if let Some((token, read_at)) = self.cached.read().await.as_ref()
            && read_at.elapsed() < self.ttl
        {
            return Ok(token.clone());
        }
        self.refresh().await
    }

    /// Re-reads AWSCURRENT, replacing the cache.
    pub async fn refresh(&self) -> Result<String, SecretError> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .version_stage("AWSCURRENT")
            .send()
            .await
            .map_err(|error| SecretError {
                secret_id: self.secret_id.clone(),
                reason: aws_sdk_secretsmanager::error::DisplayErrorContext(error).to_string(),
            })?;
        let raw = output.secret_string().unwrap_or_default();
        let token = token_from_secret(raw).ok_or_else(|| SecretError {
            secret_id: self.secret_id.clone(),
            reason: "the secret holds no token".to_owned(),
        })?;
        *self.cached.write().await = Some((token.clone(), Instant::now()));
        Ok(token)
    }
}

/// A secret is either the token itself or a JSON object with a `token` field.
pub fn token_from_secret(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(raw).ok()?;
        return value["token"]
            .as_str()
            .map(str::to_owned)
            .filter(|t| !t.is_empty());
    }
    (!raw.is_empty()).then(|| raw.to_owned())
}

/// Tag holding a secret's maximum age in days (policy: API keys and tokens 30,
/// database credentials 90, certificates 365).
pub const MAX_AGE_TAG: &str = "sophia:max-age-days";

/// A secret with an age policy, as the audit and the dashboard see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SecretAge {
    pub secret: String,
    /// Whole days since the last rotation, or since creation.
    pub age_days: i64,
    pub max_age_days: i64,
    pub overdue: bool,
}

/// Every secret tagged with [`MAX_AGE_TAG`], against its policy at `now`
/// (Unix seconds); read by job-secret-rotate's daily audit and by the dashboard.
pub async fn ages(
    client: &aws_sdk_secretsmanager::Client,
    now: i64,
) -> Result<Vec<SecretAge>, String> {
    let mut ages = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_secrets()
            .set_next_token(token)
            .send()
            .await
            .map_err(super::error_text)?;
        for secret in page.secret_list() {
            let Some(max_age_days) = secret
                .tags()
                .iter()
                .find(|t| t.key() == Some(MAX_AGE_TAG))
                .and_then(|t| t.value())
                .and_then(|v| v.parse::<i64>().ok())
            else {
                continue;
            };
            let since = secret
                .last_rotated_date()
                .or(secret.created_date())
                .map(|d| d.secs())
                .unwrap_or(now);
            let age_days = (now - since).max(0) / 86_400;
            ages.push(SecretAge {
                secret: secret.name().unwrap_or_default().to_owned(),
                age_days,
                max_age_days,
                overdue: age_days >= max_age_days,
            });
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(ages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_forms() {
        assert_eq!(token_from_secret("abc").as_deref(), Some("abc"));
        assert_eq!(
            token_from_secret(r#"{"token":"t1"}"#).as_deref(),
            Some("t1")
        );
        assert_eq!(token_from_secret(r#"{"other":"x"}"#), None);
        assert_eq!(token_from_secret("  "), None);
    }
}
