//! The HTTP layer's error type and its RFC 9457 `application/problem+json` rendering.
//!
//! Every variant maps to exactly one status, one stable problem `type` and one
//! retryability answer; the mapping is an exhaustive `match`, so a new variant does
//! not compile until someone decides how it looks to the client. Unknown cases are
//! never retryable by default. The `detail` a client sees is written for the client:
//! causes that are internal (AWS error text, upstream bodies) stay in the logs.

use http::StatusCode;
use serde::Serialize;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
const PROBLEM_TYPE_PREFIX: &str = "urn:sophia:problem:";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {reason}")]
    MalformedJson { reason: String },
    #[error("the request body nests deeper than {max_depth} levels")]
    TooDeep { max_depth: usize },
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
    #[error("the request body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("{reason}")]
    NotAcceptable { reason: String },
    #[error("no route matches {method} {path}")]
    RouteNotFound { method: String, path: String },
    /// A resource the caller may not see is reported exactly like one that does not exist.
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The request is valid but the caller's state does not allow it (a limit
    /// reached, a conflicting resource); `reason` says which and what to do.
    #[error("{reason}")]
    Conflict { reason: String },
    /// An `Idempotency-Key` that was used before with a different request body.
    #[error("the Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("{method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed { method: String, allowed: String },
    #[error("origin {origin:?} is not allowed")]
    OriginNotAllowed { origin: String },
    /// No valid access token. `invalid_token`: one was presented but refused.
    #[error("unauthorized: {reason}")]
    Unauthorized { reason: String, invalid_token: bool },
    #[error("the access token lacks the {scope:?} scope")]
    Forbidden { scope: String },
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u32 },
    #[error("the tenant's daily quota is used up; it resets at 00:00 UTC")]
    QuotaExceeded { retry_after_secs: u32 },
    /// The tenant's hard budget limit (`period`: `monthly` or `daily`) is
    /// reached; inference resumes when the period ends (`resets_at`, RFC 3339).
    #[error("the tenant's {period} budget is spent; inference resumes at {resets_at}")]
    BudgetExceeded {
        period: &'static str,
        resets_at: String,
        retry_after_secs: u32,
    },
    #[error("{dependency} is unavailable")]
    DependencyUnavailable {
        dependency: &'static str,
        retry_after_secs: u32,
    },
    #[error("the request could not be completed before its deadline")]
    DeadlineExceeded,
    /// The model server refused the request for a reason in the request itself.
    #[error("the model rejected the request: {message}")]
    UpstreamRejected { status: u16, message: String },
    /// The model server failed in a way retrying will not fix.
    #[error("the model server failed to answer")]
    BadGateway,
    /// Readiness failed; `checks` (per-dependency status) travels in the problem.
    #[error("not ready: {failing} unavailable")]
    NotReady {
        failing: String,
        checks: serde_json::Value,
    },
    /// A bug or an unexpected state; `context` is logged, never sent.
    #[error("internal error: {context}")]
    Internal { context: String },
}

impl ApiError {
    pub fn invalid(reason: impl Into<String>) -> Self {
        Self::InvalidRequest {
            reason: reason.into(),
        }
    }

    pub fn internal(context: impl Into<String>) -> Self {
        Self::Internal {
            context: context.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson { .. } | Self::TooDeep { .. } | Self::InvalidRequest { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotAcceptable { .. } => StatusCode::NOT_ACCEPTABLE,
            Self::RouteNotFound { .. } | Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::OriginNotAllowed { .. } | Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } | Self::QuotaExceeded { .. } | Self::BudgetExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::DependencyUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamRejected { status, .. } => match status {
                413 => StatusCode::PAYLOAD_TOO_LARGE,
                422 => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            },
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the same request may succeed if the client sends it again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::DependencyUnavailable { .. }
            | Self::DeadlineExceeded
            | Self::NotReady { .. }
            | Self::RateLimited { .. }
            | Self::QuotaExceeded { .. }
            | Self::BudgetExceeded { .. } => true,
            Self::MalformedJson { .. }
            | Self::TooDeep { .. }
            | Self::InvalidRequest { .. }
            | Self::PayloadTooLarge { .. }
            | Self::UnsupportedMediaType
            | Self::NotAcceptable { .. }
            | Self::RouteNotFound { .. }
            | Self::NotFound { .. }
            | Self::IdempotencyKeyReused
            | Self::Conflict { .. }
            | Self::MethodNotAllowed { .. }
            | Self::OriginNotAllowed { .. }
            | Self::Unauthorized { .. }
            | Self::Forbidden { .. }
            | Self::UpstreamRejected { .. }
            | Self::BadGateway
            | Self::Internal { .. } => false,
        }
    }

    /// The stable, documented problem type slug.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::MalformedJson { .. } => "malformed-json",
            Self::TooDeep { .. } => "body-too-deep",
            Self::InvalidRequest { .. } => "invalid-request",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::NotAcceptable { .. } => "not-acceptable",
            Self::RouteNotFound { .. } => "route-not-found",
            Self::NotFound { .. } => "not-found",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::Conflict { .. } => "conflict",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::OriginNotAllowed { .. } => "origin-not-allowed",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Forbidden { .. } => "insufficient-scope",
            Self::RateLimited { .. } => "rate-limited",
            Self::QuotaExceeded { .. } => "quota-exceeded",
            Self::BudgetExceeded { .. } => "budget-exceeded",
            Self::DependencyUnavailable { .. } => "dependency-unavailable",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::NotReady { .. } => "not-ready",
            Self::UpstreamRejected { .. } => "model-rejected-request",
            Self::BadGateway => "bad-gateway",
            Self::Internal { .. } => "internal-error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::MalformedJson { .. } => "Malformed JSON",
            Self::TooDeep { .. } => "Request body nested too deeply",
            Self::InvalidRequest { .. } => "Invalid request",
            Self::PayloadTooLarge { .. } => "Payload too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::NotAcceptable { .. } => "Not acceptable",
            Self::RouteNotFound { .. } | Self::NotFound { .. } => "Not found",
            Self::IdempotencyKeyReused => "Idempotency key reused",
            Self::Conflict { .. } => "Conflict",
            Self::MethodNotAllowed { .. } => "Method not allowed",
            Self::OriginNotAllowed { .. } => "Origin not allowed",
            Self::Unauthorized { .. } => "Unauthorized",
            Self::Forbidden { .. } => "Forbidden",
            Self::RateLimited { .. } => "Too many requests",
            Self::QuotaExceeded { .. } => "Quota exceeded",
            Self::BudgetExceeded { .. } => "Budget exceeded",
            Self::DependencyUnavailable { .. } => "Service unavailable",
            Self::DeadlineExceeded => "Deadline exceeded",
            Self::NotReady { .. } => "Not ready",
            Self::UpstreamRejected { .. } => "Request rejected by the model",
            Self::BadGateway => "Bad gateway",
            Self::Internal { .. } => "Internal error",
        }
    }

    /// What the client is told. Internal causes are replaced by a generic sentence.
    pub fn public_detail(&self) -> String {
        match self {
            Self::Internal { .. } => {
                "An unexpected error occurred; quote the correlation ID when reporting it."
                    .to_owned()
            }
            other => other.to_string(),
        }
    }

    /// Seconds the client should wait before retrying, when the error says so.
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            Self::DependencyUnavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Self::DeadlineExceeded => Some(1),
            Self::NotReady { .. } => Some(5),
            Self::RateLimited { retry_after_secs }
            | Self::QuotaExceeded { retry_after_secs }
            | Self::BudgetExceeded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// Extra response headers the error implies (`Allow`, `Retry-After`).
    pub fn headers(&self) -> Vec<(http::HeaderName, String)> {
        let mut headers = Vec::new();
        if let Self::MethodNotAllowed { allowed, .. } = self {
            headers.push((http::header::ALLOW, allowed.clone()));
        }
        // RFC 6750 §3: say how to authenticate, and why a token was refused.
        match self {
            Self::Unauthorized {
                invalid_token: false,
                ..
            } => {
                headers.push((
                    http::header::WWW_AUTHENTICATE,
                    r#"Bearer realm="sophia""#.to_owned(),
                ));
            }
            Self::Unauthorized { reason, .. } => headers.push((
                http::header::WWW_AUTHENTICATE,
                format!(
                    r#"Bearer realm="sophia", error="invalid_token", error_description="{reason}""#
                ),
            )),
            Self::Forbidden { scope } => headers.push((
                http::header::WWW_AUTHENTICATE,
                format!(r#"Bearer realm="sophia", error="insufficient_scope", scope="{scope}""#),
            )),
            _ => {}
        }
        if let Some(secs) = self.retry_after_secs() {
            headers.push((http::header::RETRY_AFTER, secs.to_string()));
        }
        headers
    }

    pub fn to_problem(&self, correlation_id: &str, instance: Option<&str>) -> Problem {
        let detail = self.public_detail();
        Problem {
            error: OpenAiError {
                message: detail.clone(),
                error_type: openai_error_type(self.status()).to_owned(),
                code: self.slug().to_owned(),
            },
            problem_type: format!("{PROBLEM_TYPE_PREFIX}{}", self.slug()),
            title: self.title().to_owned(),
            status: self.status().as_u16(),
            detail,
            instance: instance.map(str::to_owned),
            correlation_id: correlation_id.to_owned(),
            retryable: self.is_retryable(),
            checks: match self {
                Self::NotReady { checks, .. } => Some(checks.clone()),
                _ => None,
            },
        }
    }
}

/// An RFC 9457 problem document with Sophia's extension members.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub correlation_id: String,
    pub retryable: bool,
    /// Extension member of the `not-ready` problem: per-dependency status.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checks: Option<serde_json::Value>,
    /// Extension member in OpenAI's error shape, so OpenAI SDKs show `detail`.
    pub error: OpenAiError,
}

/// `{"message", "type", "code"}` as OpenAI-compatible clients read errors.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct OpenAiError {
    pub message: String,
    #[serde(rename = "type")]
    pub error_type: String,
    pub code: String,
}

fn openai_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Vec<ApiError> {
        vec![
            ApiError::MalformedJson { reason: "x".into() },
            ApiError::TooDeep { max_depth: 3 },
            ApiError::invalid("x"),
            ApiError::PayloadTooLarge { limit_bytes: 1 },
            ApiError::UnsupportedMediaType,
            ApiError::NotAcceptable { reason: "x".into() },
            ApiError::RouteNotFound {
                method: "GET".into(),
                path: "/x".into(),
            },
            ApiError::NotFound { what: "job" },
            ApiError::IdempotencyKeyReused,
            ApiError::Conflict { reason: "x".into() },
            ApiError::MethodNotAllowed {
                method: "PUT".into(),
                allowed: "GET".into(),
            },
            ApiError::OriginNotAllowed { origin: "o".into() },
            ApiError::Unauthorized {
                reason: "r".into(),
                invalid_token: true,
            },
            ApiError::Forbidden {
                scope: "admin".into(),
            },
            ApiError::RateLimited {
                retry_after_secs: 3,
            },
            ApiError::QuotaExceeded {
                retry_after_secs: 3,
            },
            ApiError::BudgetExceeded {
                period: "monthly",
                resets_at: "2027-01-01T00:00:00Z".into(),
                retry_after_secs: 3,
            },
            ApiError::DependencyUnavailable {
                dependency: "fleet",
                retry_after_secs: 5,
            },
            ApiError::DeadlineExceeded,
            ApiError::NotReady {
                failing: "fleet:primary".into(),
                checks: serde_json::json!([]),
            },
            ApiError::UpstreamRejected {
                status: 400,
                message: "context too long".into(),
            },
            ApiError::BadGateway,
            ApiError::internal("boom"),
        ]
    }

    #[test]
    fn client_errors_are_never_retryable_but_429() {
        for error in every_variant() {
            if error.status().is_client_error() && error.status() != StatusCode::TOO_MANY_REQUESTS {
                assert!(!error.is_retryable(), "{error:?}");
            }
        }
    }

    #[test]
    fn slugs_are_unique() {
        let mut slugs: Vec<_> = every_variant().iter().map(ApiError::slug).collect();
        slugs.sort_unstable();
        let before = slugs.len();
        slugs.dedup();
        assert_eq!(before, slugs.len());
    }

    #[test]
    fn internal_detail_never_leaks() {
        let problem = ApiError::internal("DynamoDB said: ResourceNotFoundException arn:aws:...")
            .to_problem("cid", None);
        assert!(!problem.detail.contains("DynamoDB"));
        assert!(!problem.detail.contains("arn:aws"));
        assert_eq!(problem.status, 500);
    }

    #[test]
    fn problem_carries_type_status_and_correlation_id() {
        let problem = ApiError::UnsupportedMediaType.to_problem("abc-123", Some("/v1/x"));
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(json["type"], "urn:sophia:problem:unsupported-media-type");
        assert_eq!(json["status"], 415);
        assert_eq!(json["correlation_id"], "abc-123");
        assert_eq!(json["instance"], "/v1/x");
        assert_eq!(json["error"]["message"], json["detail"]);
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["code"], "unsupported-media-type");
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let error = ApiError::DependencyUnavailable {
            dependency: "fleet",
            retry_after_secs: 7,
        };
        assert!(error.is_retryable());
        assert!(
            error
                .headers()
                .contains(&(http::header::RETRY_AFTER, "7".to_owned()))
        );
    }
}
