//! SLOs per route, evaluated with multi-window, multi-burn-rate alerts.
//!
//! **Where the SLIs come from.** Every API function's pipeline prints one EMF
//! document per answered request (`shared::http::request_outcome`: `Requests`,
//! `Errors` = 5xx, `SlowRequests` = slower than `SLOW_REQUEST_MS`, by `Service`
//! and `Route`). Writing a log line costs the request no round trip (a DynamoDB
//! counter would add one to every request), CloudWatch aggregates the metrics
//! from any number of instances, and this job reads sums over each window with
//! `GetMetricData`. Locally the same documents are put into the local
//! CloudWatch by the test harness, standing in for CloudWatch's EMF extraction,
//! so request → SLI → check → alert runs end to end.
//!
//! **Rules** (Google SRE workbook): an alert row fires when the burn rate
//! (error ratio ÷ error budget) is at least its factor over both of its windows:
//! `page-fast` 1 h and 5 min at 14.4×, `page-slow` 6 h and 30 min at 6×,
//! `ticket` 3 d and 6 h at 1×. Each row of each SLO is its own de-duplicated
//! alert (one message when it starts, one when it resolves). Status, burn rates
//! and the error budget left over `SLO_PERIOD_DAYS` (30) are stored per SLO
//! (state table, `slo#<name>` / `status`) for the dashboard, and the budget left
//! is emitted as a metric.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use aws_sdk_dynamodb::types::AttributeValue;
use lambda_runtime::Diagnostic;
use serde::{Deserialize, Serialize};
use sophia_shared::aws::dynamo::{n, s};
use sophia_shared::aws::secrets::SecretToken;
use sophia_shared::clock::now_secs;
use sophia_shared::config::Env;
use sophia_shared::observability::MetricSet;
use sophia_shared::ops::alerts::Alerter;
pub use sophia_shared::ops::slo::{Sli, Slo, parse_slos, period_from_env, status_key};
use sophia_shared::outbound::{OutboundClient, OutboundSettings};
use sophia_shared::startup::InitError;

pub const SERVICE: &str = "job-slo-check";
const NAMESPACE: &str = "Sophia";

#[derive(Debug, thiserror::Error)]
pub enum SloError {
    #[error("the event is not an SLO-check event: {0}")]
    Invalid(String),
    #[error("{0}")]
    Aws(String),
}

impl From<SloError> for Diagnostic {
    fn from(error: SloError) -> Self {
        let error_type = match error {
            SloError::Invalid(_) => "NonRetryable.Invalid",
            SloError::Aws(_) => "Retryable.Aws",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// One row of the burn-rate table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub name: &'static str,
    pub long: Duration,
    pub short: Duration,
    pub factor: f64,
}

pub const ROWS: [Row; 3] = [
    Row {
        name: "page-fast",
        long: Duration::from_secs(3600),
        short: Duration::from_secs(300),
        factor: 14.4,
    },
    Row {
        name: "page-slow",
        long: Duration::from_secs(6 * 3600),
        short: Duration::from_secs(1800),
        factor: 6.0,
    },
    Row {
        name: "ticket",
        long: Duration::from_secs(3 * 86_400),
        short: Duration::from_secs(6 * 3600),
        factor: 1.0,
    },
];

/// Requests and bad requests over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub total: f64,
    pub bad: f64,
}

/// Error ratio ÷ budget; no traffic burns nothing.
pub fn burn_rate(counts: Counts, budget: f64) -> f64 {
    if counts.total <= 0.0 || budget <= 0.0 {
        return 0.0;
    }
    (counts.bad / counts.total) / budget
}

/// Which rows fire, given the counts per window length.
pub fn firing_rows(counts: &BTreeMap<u64, Counts>, budget: f64) -> Vec<(&'static str, bool)> {
    let burn = |window: Duration| {
        burn_rate(
            counts.get(&window.as_secs()).copied().unwrap_or_default(),
            budget,
        )
    };
    ROWS.iter()
        .map(|row| {
            (
                row.name,
                burn(row.long) >= row.factor && burn(row.short) >= row.factor,
            )
        })
        .collect()
}

/// What the dashboard reads per SLO.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloStatus {
    pub slo: Slo,
    /// Burn rate per window (seconds → ×).
    pub burn_rates: BTreeMap<u64, f64>,
    pub firing: Vec<&'static str>,
    /// Share of the period's error budget left (1 = untouched, < 0 = overspent).
    pub budget_remaining: f64,
    pub period_counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloReport {
    pub run: String,
    pub slos: Vec<SloStatus>,
}

pub struct Deps {
    pub slos: Vec<Slo>,
    pub period: Duration,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub state_table: String,
    pub alerts: Alerter,
}

impl Deps {
    /// `SLOS` (JSON), `SLO_PERIOD_DAYS` (30), `STATE_TABLE`, `ALERT_WEBHOOK_SECRET`.
    pub fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let slos = parse_slos(&env.required("SLOS")?)?;
        let period = period_from_env(env)?;
        let state_table = env.required("STATE_TABLE")?;
        let webhook = env.optional("ALERT_WEBHOOK_SECRET").map(|id| {
            SecretToken::new(
                aws_sdk_secretsmanager::Client::new(sdk),
                id,
                Duration::from_secs(300),
            )
        });
        Ok(Self {
            slos,
            period,
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            alerts: Alerter::new(
                aws_sdk_dynamodb::Client::new(sdk),
                state_table.clone(),
                OutboundClient::new(OutboundSettings::from_env(env)?)?,
                webhook,
                SERVICE,
            ),
            state_table,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SloEvent {
    #[serde(default)]
    run: Option<String>,
}

pub async fn handle(deps: &Deps, event: serde_json::Value) -> Result<SloReport, SloError> {
    let event: SloEvent =
        serde_json::from_value(event).map_err(|e| SloError::Invalid(e.to_string()))?;
    let run = event
        .run
        .unwrap_or_else(|| format!("manual-{}", now_secs()));
    // Windows end at the next whole minute: CloudWatch aligns to minutes, and an
    // end of "now" (sent with second precision) would drop this second's data.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs((now_secs() / 60 + 1) * 60);
    let mut windows: Vec<Duration> = ROWS.iter().flat_map(|row| [row.long, row.short]).collect();
    windows.push(deps.period);
    windows.sort();
    windows.dedup();
    let mut report = SloReport {
        run,
        slos: Vec::new(),
    };
    for slo in &deps.slos {
        let mut counts = BTreeMap::new();
        for window in &windows {
            counts.insert(
                window.as_secs(),
                sums(deps, slo, *window, now).await.map_err(SloError::Aws)?,
            );
        }
        let budget = slo.budget();
        let rows = firing_rows(&counts, budget);
        let period_counts = counts
            .get(&deps.period.as_secs())
            .copied()
            .unwrap_or_default();
        let status = SloStatus {
            slo: slo.clone(),
            burn_rates: counts
                .iter()
                .map(|(w, c)| (*w, burn_rate(*c, budget)))
                .collect(),
            firing: rows
                .iter()
                .filter(|(_, f)| *f)
                .map(|(name, _)| *name)
                .collect(),
            budget_remaining: 1.0 - burn_rate(period_counts, budget),
            period_counts,
        };
        // `rows` follows `ROWS`, so each verdict sits beside its row's windows.
        for (table_row, (row, firing)) in ROWS.iter().zip(&rows) {
            let summary = format!(
                "SLO {} ({} {} of {} {}): {} burn {:.1}× over {}",
                slo.name,
                slo.objective_percent,
                match slo.sli {
                    Sli::Availability => "% available",
                    Sli::Latency => "% fast",
                },
                slo.service,
                slo.route,
                row,
                status
                    .burn_rates
                    .get(&table_row.long.as_secs())
                    .copied()
                    .unwrap_or(0.0),
                if *firing {
                    "its windows"
                } else {
                    "its windows, back under the threshold"
                },
            );
            deps.alerts
                .update(&format!("slo#{}#{row}", slo.name), *firing, &summary)
                .await
                .map_err(SloError::Aws)?;
        }
        store(deps, &status).await.map_err(SloError::Aws)?;
        MetricSet::new(NAMESPACE)
            .dimension("Service", SERVICE)
            .dimension("Slo", slo.name.as_str())
            .count("ErrorBudgetRemaining", status.budget_remaining)
            .emit();
        report.slos.push(status);
    }
    Ok(report)
}

async fn store(deps: &Deps, status: &SloStatus) -> Result<(), String> {
    let (pk, sk) = status_key(&status.slo.name);
    deps.dynamodb
        .put_item()
        .table_name(&deps.state_table)
        .item("pk", s(&pk))
        .item("sk", s(sk))
        .item(
            "status",
            s(&serde_json::to_string(status).map_err(|e| e.to_string())?),
        )
        .item(
            "budget_remaining",
            AttributeValue::N(format!("{:.6}", status.budget_remaining)),
        )
        .item("checked_at", n(now_secs()))
        .send()
        .await
        .map(|_| ())
        .map_err(sophia_shared::aws::dynamo::error_text)
}

/// Sums of `Requests` and the SLI's bad metric over the `window` ending `now`.
async fn sums(deps: &Deps, slo: &Slo, window: Duration, now: SystemTime) -> Result<Counts, String> {
    let query = |id: &str, metric: &str| {
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(
                MetricStat::builder()
                    .metric(
                        Metric::builder()
                            .namespace(NAMESPACE)
                            .metric_name(metric)
                            .dimensions(
                                Dimension::builder()
                                    .name("Service")
                                    .value(&slo.service)
                                    .build(),
                            )
                            .dimensions(
                                Dimension::builder().name("Route").value(&slo.route).build(),
                            )
                            .build(),
                    )
                    .period(window.as_secs() as i32)
                    .stat("Sum")
                    .build(),
            )
            .return_data(true)
            .build()
    };
    let output = deps
        .cloudwatch
        .get_metric_data()
        .metric_data_queries(query("total", "Requests"))
        .metric_data_queries(query("bad", slo.sli.bad_metric()))
        .start_time(aws_smithy_types::DateTime::from(now - window))
        .end_time(aws_smithy_types::DateTime::from(now))
        .send()
        .await
        .map_err(sophia_shared::aws::error_text)?;
    let mut counts = Counts::default();
    for result in output.metric_data_results() {
        let sum: f64 = result.values().iter().sum();
        match result.id() {
            Some("total") => counts.total += sum,
            Some("bad") => counts.bad += sum,
            _ => {}
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(u64, f64, f64)]) -> BTreeMap<u64, Counts> {
        pairs
            .iter()
            .map(|(w, total, bad)| {
                (
                    *w,
                    Counts {
                        total: *total,
                        bad: *bad,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_row_fires_only_when_both_windows_burn() {
        let budget = 0.001;
        // 2 % errors in the last hour and 5 min: 20× burn.
        let fast = counts(&[
            (3600, 1000.0, 20.0),
            (300, 100.0, 2.0),
            (21600, 6000.0, 20.0),
            (1800, 500.0, 10.0),
        ]);
        let rows = firing_rows(&fast, budget);
        assert_eq!(rows[0], ("page-fast", true));
        assert_eq!(rows[1], ("page-slow", false), "6 h burns 3.3×");
        // The long window burns, the short one has recovered: no page.
        let recovered = counts(&[(3600, 1000.0, 20.0), (300, 100.0, 0.0)]);
        assert_eq!(firing_rows(&recovered, budget)[0], ("page-fast", false));
        // Just under 14.4×.
        let under = counts(&[(3600, 1000.0, 14.3), (300, 100.0, 1.43)]);
        assert_eq!(firing_rows(&under, budget)[0], ("page-fast", false));
    }

    #[test]
    fn no_traffic_burns_nothing_and_the_budget_is_whole() {
        assert_eq!(burn_rate(Counts::default(), 0.001), 0.0);
        assert!(
            (burn_rate(
                Counts {
                    total: 1000.0,
                    bad: 1.0
                },
                0.001
            ) - 1.0)
                .abs()
                < 1e-9
        );
    }

    #[test]
    fn slos_are_validated() {
        let ok = r#"[{"name": "chat-availability", "service": "api-chat", "route": "/v1/chat/completions", "sli": "availability", "objective_percent": 99.9}]"#;
        assert!((parse_slos(ok).unwrap()[0].budget() - 0.001).abs() < 1e-9);
        for bad in [
            r#"[{"name": "Bad Name", "service": "s", "route": "/", "sli": "latency", "objective_percent": 95}]"#,
            r#"[{"name": "x", "service": "s", "route": "/", "sli": "latency", "objective_percent": 100}]"#,
            r#"[{"name": "x", "service": "s", "route": "/", "sli": "uptime", "objective_percent": 99}]"#,
            "{",
        ] {
            assert!(parse_slos(bad).is_err(), "{bad}");
        }
    }
}
