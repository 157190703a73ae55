//! Small DynamoDB helpers every store here uses.

use aws_sdk_dynamodb::types::AttributeValue;

/// An SDK error as one line of text with its whole cause chain, for logs and
/// internal errors (never for clients).
pub fn error_text<E, R>(error: aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    aws_sdk_dynamodb::error::DisplayErrorContext(error).to_string()
}

/// A string attribute.
pub fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

/// A number attribute.
pub fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}
