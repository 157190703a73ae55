//! How a fleet call fails: per attempt ([`FailureReason`]), and as a whole
//! ([`FleetError`], mapped once to the HTTP layer). Classification of transport
//! errors and statuses lives here, so retryability is decided in one place.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::problem::ApiError;

const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const MAX_ERROR_MESSAGE: usize = 300;
/// What a shed caller is told is unavailable.
pub(crate) const OVERLOADED: &str = "the inference fleet (overloaded)";

/// Why one endpoint did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    HealthDown,
    Cooling,
    BreakerOpen,
    Busy,
    Credentials,
    Timeout,
    FirstTokenTimeout,
    /// The answer had begun and then the server went silent.
    Idle,
    Unreachable,
    Transport,
    Status(u16),
    Unauthorized,
    BudgetExhausted,
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HealthDown => f.write_str("reported down by the probe"),
            Self::Cooling => f.write_str("cooling down after 429"),
            Self::BreakerOpen => f.write_str("circuit open"),
            Self::Busy => f.write_str("bulkhead full"),
            Self::Credentials => f.write_str("credentials unavailable"),
            Self::Timeout => f.write_str("timed out"),
            Self::FirstTokenTimeout => f.write_str("no first token in time"),
            Self::Idle => f.write_str("went silent mid-answer"),
            Self::Unreachable => f.write_str("unreachable"),
            Self::Transport => f.write_str("connection broke"),
            Self::Status(status) => write!(f, "status {status}"),
            Self::Unauthorized => f.write_str("rejected our credentials"),
            Self::BudgetExhausted => f.write_str("retry budget exhausted"),
        }
    }
}

impl FailureReason {
    pub(crate) fn metric_word(&self) -> &'static str {
        match self {
            Self::HealthDown => "health_down",
            Self::Cooling => "cooling",
            Self::BreakerOpen => "breaker_open",
            Self::Busy => "busy",
            Self::Credentials => "credentials",
            Self::Timeout => "timeout",
            Self::FirstTokenTimeout => "ttft_timeout",
            Self::Idle => "idle",
            Self::Unreachable => "unreachable",
            Self::Transport => "transport",
            Self::Status(_) => "bad_status",
            Self::Unauthorized => "unauthorized",
            Self::BudgetExhausted => "budget",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    pub endpoint: String,
    pub reason: FailureReason,
}

pub(crate) fn describe(failures: &[AttemptFailure]) -> String {
    if failures.is_empty() {
        return "no endpoint configured".to_owned();
    }
    failures
        .iter()
        .map(|f| format!("{}: {}", f.endpoint, f.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("too many calls in flight; shed")]
    Overloaded,
    #[error("{endpoint} rejected the request with status {status}: {message}")]
    Rejected {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("{endpoint} failed with status {status}")]
    Upstream { endpoint: String, status: u16 },
    #[error("every endpoint failed: {}", describe(failures))]
    Unavailable {
        failures: Vec<AttemptFailure>,
        retry_after: Duration,
    },
    #[error("the deadline passed: {}", describe(failures))]
    DeadlineExceeded { failures: Vec<AttemptFailure> },
}

impl FleetError {
    /// Every failure mapped to the HTTP layer; the fleet's own words stay in logs
    /// except a rejected request's message, which is about the caller's input.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            Self::Overloaded => ApiError::DependencyUnavailable {
                dependency: OVERLOADED,
                retry_after_secs: 1,
            },
            Self::Rejected {
                status, message, ..
            } => ApiError::UpstreamRejected {
                status: *status,
                message: message.clone(),
            },
            Self::Upstream { .. } => ApiError::BadGateway,
            Self::Unavailable { retry_after, .. } => ApiError::DependencyUnavailable {
                dependency: "the inference fleet",
                retry_after_secs: retry_after.as_secs().clamp(1, 60) as u32,
            },
            Self::DeadlineExceeded { .. } => ApiError::DeadlineExceeded,
        }
    }
}

/// Outcome of one attempt, as the loop needs it.
pub(crate) enum AttemptError {
    Retryable {
        reason: FailureReason,
        retry_after: Option<Duration>,
    },
    Unauthorized,
    Fatal(FleetError),
}

pub(crate) fn retryable(reason: FailureReason) -> AttemptError {
    AttemptError::Retryable {
        reason,
        retry_after: None,
    }
}

pub(crate) fn classify_transport(error: &reqwest::Error) -> AttemptError {
    if error.is_timeout() {
        retryable(FailureReason::Timeout)
    } else if error.is_connect() {
        retryable(FailureReason::Unreachable)
    } else {
        retryable(FailureReason::Transport)
    }
}

pub(crate) async fn classify_status(
    endpoint: &str,
    status: StatusCode,
    response: reqwest::Response,
) -> AttemptError {
    match status.as_u16() {
        401 | 403 => AttemptError::Unauthorized,
        429 => {
            let wait = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1))
                .min(MAX_RETRY_AFTER);
            AttemptError::Retryable {
                reason: FailureReason::Status(429),
                retry_after: Some(wait),
            }
        }
        502..=504 => retryable(FailureReason::Status(status.as_u16())),
        400..=499 => {
            let text = tokio::time::timeout(Duration::from_millis(500), response.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "the model server rejected the request".to_owned());
            AttemptError::Fatal(FleetError::Rejected {
                endpoint: endpoint.to_owned(),
                status: status.as_u16(),
                message: message.chars().take(MAX_ERROR_MESSAGE).collect(),
            })
        }
        code => AttemptError::Fatal(FleetError::Upstream {
            endpoint: endpoint.to_owned(),
            status: code,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_every_endpoint() {
        let text = describe(&[
            AttemptFailure {
                endpoint: "primary".into(),
                reason: FailureReason::BreakerOpen,
            },
            AttemptFailure {
                endpoint: "secondary".into(),
                reason: FailureReason::Status(503),
            },
        ]);
        assert_eq!(text, "primary: circuit open; secondary: status 503");
    }
}
