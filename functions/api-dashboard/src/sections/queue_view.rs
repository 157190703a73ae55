//! The queues section: SQS attributes and CloudWatch's age of the oldest message.

use std::collections::HashMap;

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Value, json};

use super::{QueueRef, Section, Sources, metric_data, queue_name, stat_query};

const QUEUE_AGE_WINDOW_SECS: i64 = 600;

/// Depth, in-flight and delayed messages, the oldest message's age and the DLQ
/// depth of every queue; a queue that cannot be read says so in its row.
pub async fn queues(src: &Sources, now: u64) -> Result<Section, String> {
    let mut age_queries = Vec::new();
    let mut age_ids = HashMap::new();
    for (i, url) in src
        .queues
        .iter()
        .flat_map(|q| std::iter::once(&q.url).chain(q.dead_letter_url.as_ref()))
        .enumerate()
    {
        let name = queue_name(url).unwrap_or_default();
        age_queries.push(stat_query(
            &format!("q{i}"),
            "AWS/SQS",
            "ApproximateAgeOfOldestMessage",
            &[("QueueName", name)],
            60,
            "Maximum",
        ));
        age_ids.insert(url.clone(), format!("q{i}"));
    }
    let (rows, ages) = tokio::join!(
        futures_util::future::join_all(src.queues.iter().map(|q| queue_row(src, q))),
        metric_data(src, age_queries, now, QUEUE_AGE_WINDOW_SECS),
    );
    let latest = |url: &str| -> Value {
        match &ages {
            Ok(ages) => json!(
                age_ids
                    .get(url)
                    .and_then(|id| ages.get(id))
                    .and_then(|points| points.iter().max_by_key(|(t, _)| *t))
                    .map(|(_, v)| *v)
            ),
            Err(_) => Value::Null,
        }
    };
    let rows: Vec<Value> = src
        .queues
        .iter()
        .zip(rows)
        .map(|(queue, mut row)| {
            row["oldest_message_age_seconds"] = latest(&queue.url);
            if let Some(dlq) = &queue.dead_letter_url {
                row["dead_letter_oldest_age_seconds"] = latest(dlq);
            }
            row
        })
        .collect();
    let mut data = json!({ "queues": rows });
    if let Err(error) = ages {
        data["age_error"] = json!(error);
    }
    Ok(Section { data, as_of: None })
}

async fn queue_row(src: &Sources, queue: &QueueRef) -> Value {
    let mut row = json!({ "name": queue.name });
    match depth(src, &queue.url).await {
        Ok((visible, in_flight, delayed)) => {
            row["depth"] = json!(visible);
            row["in_flight"] = json!(in_flight);
            row["delayed"] = json!(delayed);
        }
        Err(error) => row["error"] = json!(error),
    }
    if let Some(dlq) = &queue.dead_letter_url {
        match depth(src, dlq).await {
            Ok((visible, in_flight, _)) => row["dead_letter_depth"] = json!(visible + in_flight),
            Err(error) => row["dead_letter_error"] = json!(error),
        }
    }
    row
}

async fn depth(src: &Sources, url: &str) -> Result<(u64, u64, u64), String> {
    let output = src
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(sophia_shared::aws::error_text)?;
    let attributes = output.attributes();
    let count = |name: QueueAttributeName| {
        attributes
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        count(QueueAttributeName::ApproximateNumberOfMessages),
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    ))
}
