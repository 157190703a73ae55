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
