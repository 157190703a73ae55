//! Small DynamoDB helpers every store here uses.

use aws_sdk_dynamodb::types::AttributeValue;

/// An SDK error as one line of text with its whole cause chain, for logs and
/// internal errors (never for clients).
pub fn error_text<E, R>(error: aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    crate::aws::error_text(error)
}

/// Whether a request failed only because its condition did not hold.
pub fn is_condition_failure<E, R>(error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    error
        .as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "ConditionalCheckFailedException")
}

/// The per-item reasons of a cancelled transaction (`None`, `ConditionalCheckFailed`…),
/// or nothing if it was not cancelled.
pub fn cancellation_codes<R>(
    error: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        R,
    >,
) -> Option<Vec<String>> {
    match error.as_service_error() {
        Some(
            aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(
                cancelled,
            ),
        ) => Some(
            cancelled
                .cancellation_reasons()
                .iter()
                .map(|reason| reason.code().unwrap_or("None").to_owned())
                .collect(),
        ),
        _ => None,
    }
}

/// A conditional write as done: its condition not holding means the item is
/// already as wanted (written before, or gone), which is success for the caller.
pub fn unless_condition_failed<T, E, R>(
    result: Result<T, aws_sdk_dynamodb::error::SdkError<E, R>>,
) -> Result<(), String>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(()),
        Err(error) if is_condition_failure(&error) => Ok(()),
        Err(error) => Err(error_text(error)),
    }
}

/// Why one try of a transaction wrote nothing.
#[derive(Debug)]
pub enum TransactFailure {
    /// Cancelled, with each item's reason (`None`, `ConditionalCheckFailed`,
    /// `TransactionConflict`…): nothing was written, it may be tried again.
    Cancelled(Vec<String>),
    /// Any other failure, as text.
    Failed(String),
}

/// One try of a transaction. Callers that retry a collision wait [`collision_backoff`].
pub async fn transact_once(
    client: &aws_sdk_dynamodb::Client,
    items: &[aws_sdk_dynamodb::types::TransactWriteItem],
) -> Result<(), TransactFailure> {
    let result = client
        .transact_write_items()
        .set_transact_items(Some(items.to_vec()))
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(error) => Err(match cancellation_codes(&error) {
            Some(codes) => TransactFailure::Cancelled(codes),
            None => TransactFailure::Failed(error_text(error)),
        }),
    }
}

/// The wait before try `attempt + 1` of a transaction that collided with a
/// concurrent write of the same item (a busy tenant's usage counters): 20–40 ms
/// after the first, doubling, jittered so the colliders spread out.
pub async fn collision_backoff(attempt: u32) {
    let backoff = 10 * (1u64 << attempt.min(10));
    tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(
        backoff..backoff * 2,
    )))
    .await;
}

/// Every item a query matches, page after page (the SDK's paginator).
pub async fn query_all(
    query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
) -> Result<
    Vec<std::collections::HashMap<String, AttributeValue>>,
    aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::query::QueryError,
        aws_sdk_dynamodb::config::http::HttpResponse,
    >,
> {
    query
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
}

/// A string attribute.
pub fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

/// A number attribute.
pub fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Runs an update built for a transaction (`types::Update`) on its own, so one
/// definition serves both the single write and the transactional one.
pub async fn apply(
    client: &aws_sdk_dynamodb::Client,
    update: aws_sdk_dynamodb::types::Update,
) -> Result<(), String> {
    client
        .update_item()
        .table_name(update.table_name())
        .set_key(Some(update.key().clone()))
        .update_expression(update.update_expression())
        .set_condition_expression(update.condition_expression().map(str::to_owned))
        .set_expression_attribute_names(update.expression_attribute_names().cloned())
        .set_expression_attribute_values(update.expression_attribute_values().cloned())
        .send()
        .await
        .map(|_| ())
        .map_err(error_text)
}
