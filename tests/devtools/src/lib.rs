//! Local stand-ins for what AWS does around the functions (used by `sophia-dev`
//! and the tests).
//!
//! [`emf_datums`] and [`put_emf`]: CloudWatch's EMF extraction, which in AWS
//! turns the functions' EMF log lines into metrics; locally they are put into
//! the local CloudWatch.
//!
//! [`traces`]: an OTLP/HTTP trace receiver standing in for X-Ray or a collector.

pub mod traces;

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
use serde_json::Value;

/// The metrics of one EMF document, by namespace; nothing for a line that is not EMF.
pub fn emf_datums(document: &Value) -> Vec<(String, MetricDatum)> {
    let aws = &document["_aws"];
    let Some(timestamp) = aws["Timestamp"].as_i64() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for directive in aws["CloudWatchMetrics"].as_array().into_iter().flatten() {
        let Some(namespace) = directive["Namespace"].as_str() else {
            continue;
        };
        let dimensions: Vec<Dimension> = directive["Dimensions"][0]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|name| {
                Dimension::builder()
                    .name(name)
                    .value(document[name].as_str().unwrap_or_default())
                    .build()
            })
            .collect();
        for metric in directive["Metrics"].as_array().into_iter().flatten() {
            let Some(name) = metric["Name"].as_str() else {
                continue;
            };
            let Some(value) = document[name].as_f64() else {
                continue;
            };
            let datum = MetricDatum::builder()
                .metric_name(name)
                .set_dimensions(Some(dimensions.clone()))
                .value(value)
                .timestamp(aws_smithy_types::DateTime::from_millis(timestamp))
                .build();
            out.push((namespace.to_owned(), datum));
        }
    }
    out
}

/// Puts the documents' metrics, up to 500 per call and one namespace per call.
pub async fn put_emf(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    documents: &[Value],
) -> Result<usize, String> {
    let mut by_namespace: std::collections::BTreeMap<String, Vec<MetricDatum>> =
        std::collections::BTreeMap::new();
    for document in documents {
        for (namespace, datum) in emf_datums(document) {
            by_namespace.entry(namespace).or_default().push(datum);
        }
    }
    let mut put = 0;
    for (namespace, data) in by_namespace {
        for chunk in data.chunks(500) {
            cloudwatch
                .put_metric_data()
                .namespace(&namespace)
                .set_metric_data(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(sophia_shared::aws::error_text)?;
            put += chunk.len();
        }
    }
    Ok(put)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_documents_become_datums_and_other_lines_nothing() {
        let document = sophia_shared::observability::MetricSet::new("Sophia")
            .dimension("Service", "api-chat")
            .dimension("Route", "/v1/chat/completions")
            .count("Requests", 1.0)
            .count("Errors", 0.0)
            .to_json();
        let datums = emf_datums(&document);
        assert_eq!(datums.len(), 2);
        assert_eq!(datums[0].0, "Sophia");
        assert_eq!(datums[0].1.dimensions().len(), 2);
        assert!(emf_datums(&serde_json::json!({"level": "INFO", "message": "hi"})).is_empty());
    }
}
