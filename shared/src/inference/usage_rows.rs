//! The usage table's rows as billing wrote them, read back: what the
//! dashboard shows and what budgets count (so neither can disagree with
//! billing). The writing side is [`crate::inference::usage`].

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

/// One day's usage of one model, as billing wrote it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRow {
    pub date: String,
    pub model: String,
    pub requests: f64,
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    pub cost_micro_usd: f64,
    pub cached_requests: f64,
    /// Requests billed by the recovery (their function died before billing).
    pub recovered_requests: f64,
}

/// `tenant`'s usage rows from day `first` to day `last` (`yyyy-mm-dd`, both
/// included): what the dashboard shows and budgets count, as billing wrote it.
pub async fn read(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    tenant: &str,
    first: &str,
    last: &str,
) -> Result<Vec<UsageRow>, String> {
    // `$` sorts right after `#`: every model of the last day is inside.
    let query = dynamodb
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
        .expression_attribute_values(":pk", AttributeValue::S(format!("tenant#{tenant}")))
        .expression_attribute_values(":from", AttributeValue::S(format!("usage#{first}")))
        .expression_attribute_values(":to", AttributeValue::S(format!("usage#{last}$")));
    let items = crate::aws::dynamo::query_all(query)
        .await
        .map_err(crate::aws::dynamo::error_text)?;
    Ok(items.iter().filter_map(usage_row).collect())
}

fn usage_row(item: &HashMap<String, AttributeValue>) -> Option<UsageRow> {
    let sk = item.get("sk")?.as_s().ok()?;
    let (date, model) = sk.strip_prefix("usage#")?.split_once('#')?;
    let value = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Some(UsageRow {
        date: date.to_owned(),
        model: model.to_owned(),
        requests: value("requests"),
        prompt_tokens: value("prompt_tokens"),
        completion_tokens: value("completion_tokens"),
        cost_micro_usd: value("cost_micro_usd"),
        cached_requests: value("cached_requests"),
        recovered_requests: value("recovered_requests"),
    })
}
