//! Endpoint health shared across Lambda instances through DynamoDB.
//!
//! The probe job writes one item per endpoint (`pk = "fleet-health"`, `sk = name`);
//! every client instance reads them all with one Query, cached for a few seconds,
//! so a fresh instance skips an endpoint the probe knows is dead without first
//! paying a timeout. Reads are best effort: a failed or slow read keeps the last
//! view (or none) and never fails a request. Records older than `max_age` are
//! ignored, so a dead probe cannot pin an endpoint down forever.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use tokio::sync::Mutex;

use crate::clock::now_secs;

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
    /// Consecutive identical probe results, ending with `last_probe_ok`.
    pub streak: u32,
    /// The most recent probe's result (may disagree with `status` until the
    /// streak is long enough to flip it).
    pub last_probe_ok: bool,
    /// The scheduled run that wrote this record: a retried run is not counted twice.
    pub run: String,
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
            .map_err(crate::aws::dynamo::error_text)?;
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
                    last_probe_ok: item
                        .get("last_probe_ok")
                        .and_then(|v| v.as_bool().ok())
                        .copied()
                        .unwrap_or(status == EndpointStatus::Up),
                    run: text("run").unwrap_or_default(),
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
            .item("last_probe_ok", AttributeValue::Bool(record.last_probe_ok))
            .item("run", AttributeValue::S(record.run.clone()))
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
            .map_err(crate::aws::dynamo::error_text)?;
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
            last_probe_ok: status == EndpointStatus::Up,
            run: String::new(),
        }
    }
}

/// The probe's hysteresis: the published status flips only after `threshold`
/// consecutive probe results disagree with it. A new endpoint starts up.
pub fn next_record(
    previous: Option<&HealthRecord>,
    endpoint: &str,
    probe_ok: bool,
    latency_ms: Option<f64>,
    threshold: u32,
    run: &str,
) -> HealthRecord {
    let (status, streak) = match previous {
        None => (EndpointStatus::Up, 1),
        Some(prev) => {
            let streak = if prev.last_probe_ok == probe_ok {
                prev.streak.saturating_add(1)
            } else {
                1
            };
            let wanted = if probe_ok {
                EndpointStatus::Up
            } else {
                EndpointStatus::Down
            };
            let status = if streak >= threshold {
                wanted
            } else {
                prev.status
            };
            (status, streak)
        }
    };
    let status = match previous {
        None if !probe_ok && threshold <= 1 => EndpointStatus::Down,
        _ => status,
    };
    HealthRecord {
        endpoint: endpoint.to_owned(),
        status,
        checked_at: now_secs(),
        latency_ms,
        streak,
        last_probe_ok: probe_ok,
        run: run.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lost_probe_does_not_flap_an_endpoint() {
        let up = next_record(None, "a", true, Some(1.0), 2, "r1");
        let lost = next_record(Some(&up), "a", false, None, 2, "r2");
        assert_eq!(lost.status, EndpointStatus::Up, "one failure is not enough");
        let back = next_record(Some(&lost), "a", true, Some(1.0), 2, "r3");
        assert_eq!(back.status, EndpointStatus::Up);
        let fail1 = next_record(Some(&back), "a", false, None, 2, "r4");
        let fail2 = next_record(Some(&fail1), "a", false, None, 2, "r5");
        assert_eq!(
            fail2.status,
            EndpointStatus::Down,
            "two in a row mark it down"
        );
        let ok1 = next_record(Some(&fail2), "a", true, Some(1.0), 2, "r6");
        assert_eq!(
            ok1.status,
            EndpointStatus::Down,
            "one success does not bring it back"
        );
        let ok2 = next_record(Some(&ok1), "a", true, Some(1.0), 2, "r7");
        assert_eq!(ok2.status, EndpointStatus::Up);
    }
}
