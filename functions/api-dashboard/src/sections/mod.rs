//! The dashboard's sections. Each reads one source and returns its data with the
//! time the data describes (`as_of`), or a text saying why it could not be read;
//! [`crate::handler`] runs them concurrently, each under its own timeout.
//!
//! Sources: SLO statuses stored by job-slo-check, the fleet's shared health
//! written by job-fleet-probe, the fleet client's EMF metrics in CloudWatch
//! (attempt failures, breaker transitions), SQS queue attributes and
//! CloudWatch's `AWS/SQS` age of the oldest message, the usage rows billing
//! writes (usage and budgets), the jobs table's index by status, drift
//! detection's last report and the alert history.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Deserialize;
use serde_json::Value;
use sophia_shared::auth::store::AuthStore;
use sophia_shared::config::ConfigError;
use sophia_shared::fleet::health::SharedHealth;
use sophia_shared::inference::budget::Budgets;
use sophia_shared::jobs::store::JobStore;
use sophia_shared::ops::slo::Slo;

mod budget_view;
mod fleet_view;
mod history_view;
mod jobs_view;
mod queue_view;
mod slo_view;
mod usage_view;

pub use budget_view::budgets;
pub use fleet_view::fleet;
pub use history_view::{alerts, drift, secrets};
pub use jobs_view::jobs;
pub use queue_view::queues;
pub use slo_view::{slo_entry, slos, window_label};
pub use usage_view::{TenantView, USAGE_DAYS, overview, summarize, usage};

pub(crate) const NAMESPACE: &str = "Sophia";

/// What a section read: its data and the Unix time it describes (`None`: live,
/// or nothing stored yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub data: Value,
    pub as_of: Option<u64>,
}

/// One queue of `DASHBOARD_QUEUES`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRef {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub dead_letter_url: Option<String>,
}

/// `DASHBOARD_QUEUES`: a JSON list of [`QueueRef`].
pub fn parse_queues(raw: &str) -> Result<Vec<QueueRef>, ConfigError> {
    let queues: Vec<QueueRef> = serde_json::from_str(raw).map_err(|e| {
        ConfigError::new(
            "DASHBOARD_QUEUES",
            format!("is not a JSON list of {{name, url, dead_letter_url}}: {e}"),
        )
    })?;
    for queue in &queues {
        let urls = std::iter::once(&queue.url).chain(queue.dead_letter_url.as_ref());
        if queue.name.is_empty() || urls.into_iter().any(|url| queue_name(url).is_none()) {
            return Err(ConfigError::new(
                "DASHBOARD_QUEUES",
                format!("{:?} needs a name and queue URLs", queue.name),
            ));
        }
    }
    Ok(queues)
}

/// The queue name at the end of a queue URL.
pub(crate) fn queue_name(url: &str) -> Option<&str> {
    let (_, name) = url.trim_end_matches('/').rsplit_once('/')?;
    (!name.is_empty()).then_some(name)
}

/// The sources every section reads from, built once per cold start.
pub struct Sources {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub state_table: String,
    pub usage_table: String,
    pub auth: AuthStore,
    pub budgets: Budgets,
    pub jobs: JobStore,
    pub health: SharedHealth,
    pub slos: Vec<Slo>,
    pub slo_period: Duration,
    pub endpoints: Vec<String>,
    pub queues: Vec<QueueRef>,
    /// The stack whose drift report is shown (`STACK_NAME`).
    pub stack: Option<String>,
    /// At most this many tenants in the platform view (the others are counted).
    pub max_tenants: usize,
}

pub(crate) fn sum_query(
    id: &str,
    metric: &str,
    dims: &[(&str, &str)],
    period: i64,
) -> MetricDataQuery {
    stat_query(id, NAMESPACE, metric, dims, period, "Sum")
}

pub(crate) fn stat_query(
    id: &str,
    namespace: &str,
    metric: &str,
    dims: &[(&str, &str)],
    period: i64,
    stat: &str,
) -> MetricDataQuery {
    let dimensions = dims
        .iter()
        .map(|(name, value)| Dimension::builder().name(*name).value(*value).build())
        .collect();
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(
            MetricStat::builder()
                .metric(
                    Metric::builder()
                        .namespace(namespace)
                        .metric_name(metric)
                        .set_dimensions(Some(dimensions))
                        .build(),
                )
                .period(period as i32)
                .stat(stat)
                .build(),
        )
        .return_data(true)
        .build()
}

/// (timestamp, value) per query ID over the `window` ending at the next minute.
pub(crate) async fn metric_data(
    src: &Sources,
    queries: Vec<MetricDataQuery>,
    now: u64,
    window: i64,
) -> Result<HashMap<String, Vec<(i64, f64)>>, String> {
    let mut out: HashMap<String, Vec<(i64, f64)>> = HashMap::new();
    // 500 queries per call is CloudWatch's limit.
    for chunk in queries.chunks(500) {
        let end = (now as i64 / 60 + 1) * 60;
        let mut token = None;
        loop {
            let page = src
                .cloudwatch
                .get_metric_data()
                .set_metric_data_queries(Some(chunk.to_vec()))
                .start_time(aws_smithy_types::DateTime::from_secs(end - window))
                .end_time(aws_smithy_types::DateTime::from_secs(end))
                .set_next_token(token)
                .send()
                .await
                .map_err(sophia_shared::aws::error_text)?;
            for result in page.metric_data_results() {
                let points = out
                    .entry(result.id().unwrap_or_default().to_owned())
                    .or_default();
                points.extend(
                    result
                        .timestamps()
                        .iter()
                        .map(|t| t.secs())
                        .zip(result.values().iter().copied()),
                );
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
    }
    Ok(out)
}

pub(crate) fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<f64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_config_needs_names_and_urls() {
        let good = r#"[{"name": "jobs", "url": "http://h/123/jobs", "dead_letter_url": "http://h/123/jobs-dlq"}]"#;
        assert_eq!(
            parse_queues(good).unwrap()[0].dead_letter_url.as_deref(),
            Some("http://h/123/jobs-dlq")
        );
        assert!(parse_queues(r#"[{"name": "", "url": "http://h/1/q"}]"#).is_err());
        assert!(parse_queues(r#"[{"name": "q", "url": "nourl"}]"#).is_err());
        assert!(parse_queues(r#"[{"name": "q", "url": "http://h/1/q", "extra": 1}]"#).is_err());
        assert_eq!(window_label(300), "5m");
        assert_eq!(window_label(21_600), "6h");
        assert_eq!(window_label(259_200), "3d");
    }
}
