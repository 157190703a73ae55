//! Alerts with de-duplication: one message when a condition starts, one when it
//! resolves, none in between — across runs and instances.
//!
//! Each condition has a state item in the state table (`alert#<key>`, `state`).
//! A message is sent only by the run whose conditional write flips that state,
//! so two concurrent runs cannot both send. If sending fails, the state is put
//! back so the next run tries again. Messages are Slack-compatible JSON
//! (`{"text": …}`) posted to a webhook whose URL lives in Secrets Manager
//! (`ALERT_WEBHOOK_SECRET`); without a usable URL, alerts are logged only.
//!
//! Every message sent is also kept for 30 days in the alert history (`alerts`,
//! `<changed_at>#<key>`), newest first for the dashboard ([`recent`]).

use std::time::Duration;

use crate::aws::dynamo::error_text as aws;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::aws::secrets::SecretToken;
use crate::clock::now_secs;
use crate::outbound::OutboundClient;

const HISTORY_PK: &str = "alerts";
const HISTORY_RETENTION_SECS: u64 = 30 * 86_400;

/// One message of the alert history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AlertEvent {
    pub key: String,
    pub firing: bool,
    pub summary: String,
    pub source: String,
    pub changed_at: u64,
}

/// The `limit` most recent alert messages, newest first.
pub async fn recent(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    limit: i32,
) -> Result<Vec<AlertEvent>, String> {
    let output = dynamodb
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(HISTORY_PK.to_owned()))
        .scan_index_forward(false)
        .limit(limit)
        .send()
        .await
        .map_err(aws)?;
    Ok(output
        .items()
        .iter()
        .filter_map(|item| {
            let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            Some(AlertEvent {
                key: text("key")?,
                firing: *item.get("firing")?.as_bool().ok()?,
                summary: text("summary").unwrap_or_default(),
                source: text("source").unwrap_or_default(),
                changed_at: item.get("changed_at")?.as_n().ok()?.parse().ok()?,
            })
        })
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Fired,
    Resolved,
}

#[derive(Debug)]
pub struct Alerter {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    outbound: OutboundClient,
    webhook: Option<SecretToken>,
    source: String,
}

impl Alerter {
    /// `source` names the sender in every message (e.g. `job-secret-rotate`).
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        table: String,
        outbound: OutboundClient,
        webhook: Option<SecretToken>,
        source: &str,
    ) -> Self {
        Self {
            dynamodb,
            table,
            outbound,
            webhook,
            source: source.to_owned(),
        }
    }

    /// Reports whether condition `key` holds now; sends a message only when that
    /// changes. Returns what was sent.
    pub async fn update(
        &self,
        key: &str,
        firing: bool,
        summary: &str,
    ) -> Result<Option<Sent>, String> {
        if !self.flip(key, firing).await? {
            return Ok(None);
        }
        let (word, sent) = if firing {
            ("FIRING", Sent::Fired)
        } else {
            ("RESOLVED", Sent::Resolved)
        };
        let text = format!("[{word}] {summary} ({}, {key})", self.source);
        if let Err(error) = self.deliver(&text).await {
            // Put the state back: the next run sends again.
            let _ = self.flip(key, !firing).await;
            return Err(error);
        }
        tracing::warn!(alert = key, firing, summary, "alert sent");
        // The message is out: a history that cannot be written costs the
        // dashboard one line, not a second message.
        if let Err(error) = self.remember(key, firing, summary).await {
            tracing::warn!(alert = key, %error, "alert history not written");
        }
        Ok(Some(sent))
    }

    async fn remember(&self, key: &str, firing: bool, summary: &str) -> Result<(), String> {
        let now = now_secs();
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(HISTORY_PK.to_owned()))
            .item("sk", AttributeValue::S(format!("{now:012}#{key}")))
            .item("key", AttributeValue::S(key.to_owned()))
            .item("firing", AttributeValue::Bool(firing))
            .item("summary", AttributeValue::S(summary.to_owned()))
            .item("source", AttributeValue::S(self.source.clone()))
            .item("changed_at", AttributeValue::N(now.to_string()))
            .item(
                "expires_at",
                AttributeValue::N((now + HISTORY_RETENTION_SECS).to_string()),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(aws)
    }

    /// Moves the state to `firing`; true only for the caller that changed it.
    async fn flip(&self, key: &str, firing: bool) -> Result<bool, String> {
        let condition = if firing {
            "attribute_not_exists(firing) OR firing = :false"
        } else {
            "firing = :true"
        };
        // DynamoDB refuses expression values a request does not use.
        let (placeholder, previous) = if firing {
            (":false", false)
        } else {
            (":true", true)
        };
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("alert#{key}")))
            .key("sk", AttributeValue::S("state".to_owned()))
            .update_expression("SET firing = :new, changed_at = :now")
            .condition_expression(condition)
            .expression_attribute_values(":new", AttributeValue::Bool(firing))
            .expression_attribute_values(placeholder, AttributeValue::Bool(previous))
            .expression_attribute_values(":now", AttributeValue::N(now_secs().to_string()))
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

    async fn deliver(&self, text: &str) -> Result<(), String> {
        let url = match &self.webhook {
            None => None,
            Some(secret) => secret
                .get()
                .await
                .ok()
                .filter(|url| url.starts_with("https://") || url.starts_with("http://")),
        };
        let Some(url) = url else {
            tracing::warn!(text, "no alert webhook configured; alert logged only");
            return Ok(());
        };
        self.outbound
            .post_json_ok(
                &url,
                &serde_json::json!({ "text": text }),
                None,
                Duration::from_secs(5),
            )
            .await
            .map(|_| ())
            .map_err(|error| format!("alert webhook: {error}"))
    }
}
