//! AWS: SDK configuration (here), and the helpers every store and consumer uses:
//! [`dynamo`] (attribute values, updates), [`batch`] (SQS partial batch
//! failures), [`deadletter`] (peek and redrive), [`secrets`] (cached secrets).
//!
//! SDK configuration is built once per cold start.
//!
//! `aws-config` honours `AWS_ENDPOINT_URL` (and `AWS_ENDPOINT_URL_<SERVICE>`), so the
//! same binary talks to AWS or to the local AWS. Timeouts are explicit: without them
//! a stalled connection to DynamoDB could hold an invocation until Lambda kills it.
//! Retries use the standard mode (token-bucket retry quota, so retries back off as a
//! whole during an outage) with few attempts: the caller's own deadline matters more
//! than a last retry.
//!
//! Stalled-stream protection is off: it watches a streamed body's throughput (1 B/s
//! over a 20 s grace period), and none of our operations streams; their whole
//! response is read inside the attempt, which the attempt timeout already bounds
//! more tightly. It cost every call a throughput wrapper and a timer (~4 % of a
//! DynamoDB call's client-side time in `make bench`).

pub mod batch;
pub mod deadletter;
pub mod dynamo;
pub mod secrets;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};

use crate::config::{ConfigError, Env};

/// Any AWS SDK error as one line with its whole cause chain, for logs and
/// internal errors (never for clients). Every SDK's `SdkError` and
/// `DisplayErrorContext` are the same smithy types, so one helper serves all.
pub fn error_text(error: impl std::error::Error) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(error).to_string()
}

/// Timeouts and retries for every AWS call of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsSettings {
    pub connect_timeout: Duration,
    pub attempt_timeout: Duration,
    pub operation_timeout: Duration,
    pub max_attempts: u32,
}

impl AwsSettings {
    /// `AWS_CONNECT_TIMEOUT_MS` (default 1000), `AWS_ATTEMPT_TIMEOUT_MS` (2000),
    /// `AWS_OPERATION_TIMEOUT_MS` (5000), `AWS_MAX_ATTEMPTS` (3).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let settings = Self {
            connect_timeout: env.millis_or("AWS_CONNECT_TIMEOUT_MS", 1_000, 30_000)?,
            attempt_timeout: env.millis_or("AWS_ATTEMPT_TIMEOUT_MS", 2_000, 60_000)?,
            operation_timeout: env.millis_or("AWS_OPERATION_TIMEOUT_MS", 5_000, 900_000)?,
            max_attempts: env.parse_or("AWS_MAX_ATTEMPTS", 3)?,
        };
        if settings.max_attempts == 0 || settings.max_attempts > 10 {
            return Err(ConfigError::new(
                "AWS_MAX_ATTEMPTS",
                "must be between 1 and 10",
            ));
        }
        if settings.attempt_timeout > settings.operation_timeout {
            return Err(ConfigError::new(
                "AWS_ATTEMPT_TIMEOUT_MS",
                "must not exceed AWS_OPERATION_TIMEOUT_MS",
            ));
        }
        Ok(settings)
    }
}

/// Loads the shared SDK configuration (region, credentials, endpoint) with our
/// timeouts and retry mode.
pub async fn load_sdk_config(settings: AwsSettings) -> SdkConfig {
    configure(aws_config::defaults(BehaviorVersion::latest()), settings)
        .load()
        .await
}

/// Applies our timeouts and retry mode to a loader (tests add their endpoint first).
pub fn configure(loader: ConfigLoader, settings: AwsSettings) -> ConfigLoader {
    loader
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .operation_attempt_timeout(settings.attempt_timeout)
                .operation_timeout(settings.operation_timeout)
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(settings.max_attempts)
                .with_initial_backoff(Duration::from_millis(20)),
        )
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_bounded() {
        let settings = AwsSettings::from_env(&Env::new(&[("X", "1")])).unwrap();
        assert_eq!(settings.max_attempts, 3);
        assert!(settings.attempt_timeout <= settings.operation_timeout);
    }

    /// Why the SDK's stalled-stream check can be off: a response whose body
    /// stops mid-way fails within the attempt timeout.
    #[tokio::test]
    async fn a_response_that_stalls_mid_body_fails_within_the_attempt_timeout() {
        use std::io::{Read, Write};
        // A local stand-in for DynamoDB (no AWS server stalls on request): the
        // headers and one byte of a 100-byte body, then silence for 30 s.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (done, stop) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let _ = socket.read(&mut [0u8; 8192]);
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: 100\r\n\r\n{")
                .unwrap();
            let _ = stop.recv_timeout(Duration::from_secs(30));
        });
        let settings = AwsSettings {
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_millis(200),
            operation_timeout: Duration::from_secs(1),
            max_attempts: 1,
        };
        let sdk = configure(aws_config::defaults(BehaviorVersion::latest()), settings)
            .endpoint_url(format!("http://{address}"))
            .region(aws_config::Region::new("us-east-1"))
            .test_credentials()
            .load()
            .await;
        assert!(!sdk.stalled_stream_protection().unwrap().is_enabled());
        let started = std::time::Instant::now();
        let read = aws_sdk_dynamodb::Client::new(&sdk)
            .get_item()
            .table_name("stalls")
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("k".into()))
            .send()
            .await;
        let waited = started.elapsed();
        drop(done);
        server.join().unwrap();
        assert!(read.is_err());
        // Bounded by the 200 ms attempt, far from the 30 s stall.
        assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    }

    #[test]
    fn attempt_longer_than_operation_is_refused() {
        let env = [
            ("AWS_ATTEMPT_TIMEOUT_MS", "9000"),
            ("AWS_OPERATION_TIMEOUT_MS", "1000"),
        ];
        let error = AwsSettings::from_env(&Env::new(&env)).unwrap_err();
        assert_eq!(error.variable, "AWS_ATTEMPT_TIMEOUT_MS");
    }
}
