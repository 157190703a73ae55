//! What every answer gets: the security headers, the correlation ID, CORS,
//! `RateLimit-*` headers, and for errors the problem+json body.

use http::header::{self, HeaderName, HeaderValue};
use lambda_http::{Body, Response};

use crate::guard::ratelimit::Decision;
use crate::http::cors;
use crate::http::policy::HttpPolicy;
use crate::observability;
use crate::problem::{ApiError, PROBLEM_CONTENT_TYPE};

pub(crate) const SECURITY_HEADERS: [(&str, &str); 6] = [
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains; preload",
    ),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// IETF `RateLimit-*` headers (draft-ietf-httpapi-ratelimit-headers).
pub(crate) fn rate_limit_headers(response: &mut Response<Body>, decision: &Decision) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", decision.limit.to_string()),
        ("ratelimit-remaining", decision.remaining.to_string()),
        ("ratelimit-reset", decision.reset_secs.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// The problem+json response for an error; logs internal causes at error level.
pub fn problem_response(error: &ApiError, correlation_id: &str, path: &str) -> Response<Body> {
    if error.status().is_server_error() {
        tracing::error!(error = %error, problem = error.slug(), "request failed");
    } else {
        tracing::info!(error = %error, problem = error.slug(), "request rejected");
    }
    let problem = error.to_problem(correlation_id, Some(path));
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = Response::new(Body::Binary(body));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    for (name, value) in error.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

pub(crate) fn finish(
    policy: &HttpPolicy,
    response: &mut Response<Body>,
    correlation_id: &str,
    origin: Option<&str>,
) {
    let headers = response.headers_mut();
    // A handler's own value wins (a web page sets the CSP it needs); every
    // other answer gets the API's strict defaults.
    for (name, value) in SECURITY_HEADERS {
        headers
            .entry(HeaderName::from_static(name))
            .or_insert(HeaderValue::from_static(value));
    }
    if let Ok(value) = HeaderValue::from_str(correlation_id) {
        headers.insert(
            HeaderName::from_static(observability::CORRELATION_HEADER),
            value,
        );
    }
    cors::allow_origin(policy, headers, origin);
}
