//! Endpoint health shared across Lambda instances through DynamoDB.
//!
//! The probe job writes one item per endpoint (`pk = "fleet-health"`, `sk = name`);
//! every client instance reads them all with one Query, cached for a few seconds,
//! so a fresh instance skips an endpoint the probe knows is dead without first
//! paying a timeout. Reads are best effort: a failed or slow read keeps the last
//! view (or none) and never fails a request. Records older than `max_age` are
//! ignored, so a dead probe cannot pin an endpoint down forever.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use tokio::sync::Mutex;

pub const HEALTH_PK: &str = "fleet-health";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointStatus {
    Up,
    Down,
}

impl EndpointStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// One endpoint's record as the probe wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthRecord {
    pub endpoint: String,
    pub status: EndpointStatus,
    /// Seconds since the epoch of the probe run that wrote it.
    pub checked_at: u64,
    pub latency_ms: Option<f64>,
    /// Consecutive probe results agreeing with `status` (hysteresis).
    pub streak: u32,
}

#[derive(Debug)]
struct Cache {
    fetched_at: Option<Instant>,
    records: HashMap<String, HealthRecord>,
}

#[derive(Debug)]
pub struct SharedHealth {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    ttl: Duration,
    max_age: Duration,
    read_timeout: Duration,
    cache: Mutex<Cache>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SharedHealth {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String, ttl: Duration) -> Self {
        Self {
            dynamodb,
            table,
            ttl,
            max_age: Duration::from_secs(300),
            read_timeout: Duration::from_millis(300),
            cache: Mutex::new(Cache {
                fetched_at: None,
                records: HashMap::new(),
            }),
        }
    }

    /// Whether the probe reports `endpoint` down (fresh record only).
    pub async fn is_down(&self, endpoint: &str) -> bool {
        let mut cache = self.cache.lock().await;
        let stale = cache
            .fetched_at
            .is_none_or(|fetched| fetched.elapsed() >= self.ttl);
        if stale {
            // Even a failed read counts as a fetch: retrying on every request
            // would add a round trip to each while DynamoDB is in trouble.
            cache.fetched_at = Some(Instant::now());
            match tokio::time::timeout(self.read_timeout, self.read_all()).await {
                Ok(Ok(records)) => cache.records = records,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "reading shared fleet health failed; keeping the last view")
                }
                Err(_) => {
                    tracing::warn!("reading shared fleet health timed out; keeping the last view")
                }
            }
        }
        let fresh_after = now_secs().saturating_sub(self.max_age.as_secs());
        cache.records.get(endpoint).is_some_and(|record| {
            record.status == EndpointStatus::Down && record.checked_at >= fresh_after
        })
    }

    /// Every endpoint's record (for the dashboard and the probe's hysteresis).
    pub async fn read_all(&self) -> Result<HashMap<String, HealthRecord>, String> {
        let output = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(HEALTH_PK.to_owned()))
            .send()
            .await
            .map_err(|error| aws_sdk_dynamodb::error::DisplayErrorContext(error).to_string())?;
        let mut records = HashMap::new();
        for item in output.items() {
            let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            let number = |name: &str| {
                item.get(name)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse::<f64>().ok())
            };
            let (Some(endpoint), Some(status)) = (text("sk"), text("status")) else {
                continue;
            };
            let status = match status.as_str() {
                "up" => EndpointStatus::Up,
                "down" => EndpointStatus::Down,
                _ => continue,
            };
            records.insert(
                endpoint.clone(),
                HealthRecord {
                    endpoint,
                    status,
                    checked_at: number("checked_at").unwrap_or(0.0) as u64,
                    latency_ms: number("latency_ms"),
                    streak: number("streak").unwrap_or(1.0) as u32,
                },
            );
        }
        Ok(records)
    }

    /// Writes one endpoint's record (the probe job's side).
    pub async fn write(&self, record: &HealthRecord) -> Result<(), String> {
        let mut request = self
            .dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(HEALTH_PK.to_owned()))
            .item("sk", AttributeValue::S(record.endpoint.clone()))
            .item(
                "status",
                AttributeValue::S(record.status.as_str().to_owned()),
            )
            .item(
                "checked_at",
                AttributeValue::N(record.checked_at.to_string()),
            )
            .item("streak", AttributeValue::N(record.streak.to_string()))
            // Records expire a day after the last probe: a removed endpoint cleans up.
            .item(
                "expires_at",
                AttributeValue::N((record.checked_at + 86_400).to_string()),
            );
        if let Some(latency) = record.latency_ms {
            request = request.item("latency_ms", AttributeValue::N(format!("{latency:.2}")));
        }
        request
            .send()
            .await
            .map(|_| ())
            .map_err(|error| aws_sdk_dynamodb::error::DisplayErrorContext(error).to_string())?;
        self.cache.lock().await.fetched_at = None;
        Ok(())
    }

    /// A record stamped now.
    pub fn record_now(
        endpoint: &str,
        status: EndpointStatus,
        latency_ms: Option<f64>,
        streak: u32,
    ) -> HealthRecord {
        HealthRecord {
            endpoint: endpoint.to_owned(),
            status,
            checked_at: now_secs(),
            latency_ms,
            streak,
        }
    }
}
