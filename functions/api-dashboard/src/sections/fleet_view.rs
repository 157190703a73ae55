//! The fleet section: the probe's shared health and the fleet client's metrics.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Section, Sources, metric_data, sum_query};

const FLEET_WINDOW_SECS: i64 = 900;
const BREAKER_WINDOW_SECS: i64 = 3600;

/// Every endpoint: the probe's shared health, the attempt failure rate of the
/// last 15 minutes and the last breaker state seen in the last hour.
pub async fn fleet(src: &Sources, now: u64) -> Result<Section, String> {
    let records = src.health.read_all().await?;
    let mut names = src.endpoints.clone();
    let mut extra: Vec<String> = records
        .keys()
        .filter(|name| !names.contains(name))
        .cloned()
        .collect();
    extra.sort();
    names.extend(extra);
    // The probe's records still answer when CloudWatch does not.
    let metrics = fleet_metrics(src, &names, now).await;
    let entries: Vec<Value> = names
        .iter()
        .map(|name| {
            let mut entry = json!({ "endpoint": name });
            match records.get(name) {
                Some(record) => {
                    entry["status"] = json!(record.status.as_str());
                    entry["checked_at"] = json!(record.checked_at);
                    entry["latency_ms"] = json!(record.latency_ms);
                    entry["last_probe_ok"] = json!(record.last_probe_ok);
                    entry["streak"] = json!(record.streak);
                }
                None => entry["status"] = json!("never_probed"),
            }
            match &metrics {
                Ok(metrics) => {
                    let m = metrics.get(name).cloned().unwrap_or_default();
                    entry["attempts_15m"] = json!(m.attempts);
                    entry["failures_15m"] = json!(m.failures);
                    entry["failure_rate_15m"] =
                        json!((m.attempts > 0.0).then(|| m.failures / m.attempts));
                    entry["breaker"] = match m.breaker {
                        Some((state, at)) => json!({ "state": state, "seen_at": at }),
                        None => json!({ "state": null, "note": "no transition in the last hour" }),
                    };
                }
                Err(error) => entry["metrics_error"] = json!(error),
            }
            entry
        })
        .collect();
    let as_of = records.values().map(|r| r.checked_at).min();
    Ok(Section {
        data: Value::Array(entries),
        as_of,
    })
}

#[derive(Debug, Clone, Default)]
struct EndpointMetrics {
    attempts: f64,
    failures: f64,
    /// The state entered by the last transition and when.
    breaker: Option<(&'static str, i64)>,
}

const BREAKER_STATES: [&str; 3] = ["open", "half_open", "closed"];

async fn fleet_metrics(
    src: &Sources,
    names: &[String],
    now: u64,
) -> Result<HashMap<String, EndpointMetrics>, String> {
    let mut queries = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let endpoint = [("Endpoint", name.as_str())];
        queries.push(sum_query(
            &format!("a{i}"),
            "FleetAttempts",
            &endpoint,
            FLEET_WINDOW_SECS,
        ));
        queries.push(sum_query(
            &format!("f{i}"),
            "FleetAttemptFailures",
            &endpoint,
            FLEET_WINDOW_SECS,
        ));
        for (k, state) in BREAKER_STATES.iter().enumerate() {
            queries.push(sum_query(
                &format!("b{i}_{k}"),
                "BreakerTransitions",
                &[("Endpoint", name.as_str()), ("To", state)],
                60,
            ));
        }
    }
    let results = metric_data(src, queries, now, BREAKER_WINDOW_SECS).await?;
    let mut out = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let total = |id: String| {
            results
                .get(&id)
                .map(|points| points.iter().map(|(_, v)| v).sum())
                .unwrap_or(0.0)
        };
        let breaker = BREAKER_STATES
            .iter()
            .enumerate()
            .filter_map(|(k, state)| {
                let last = results
                    .get(&format!("b{i}_{k}"))?
                    .iter()
                    .filter(|(_, v)| *v > 0.0)
                    .map(|(t, _)| *t)
                    .max()?;
                Some((*state, last))
            })
            .max_by_key(|(_, at)| *at);
        out.insert(
            name.clone(),
            EndpointMetrics {
                attempts: total(format!("a{i}")),
                failures: total(format!("f{i}")),
                breaker,
            },
        );
    }
    Ok(out)
}
