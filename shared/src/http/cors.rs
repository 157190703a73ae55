//! CORS from an exact allow-list: preflights answered for listed origins and
//! refused (403 problem) for others; unknown origins are never echoed.

use http::header::{self, HeaderValue};
use http::{HeaderMap, StatusCode};
use lambda_http::{Body, Request, Response};

use crate::http::policy::HttpPolicy;
use crate::http::routing::{Route, match_template};
use crate::problem::ApiError;

const CORS_ALLOWED_HEADERS: &str = "authorization, content-type, idempotency-key, prefer, traceparent, x-correlation-id, x-sophia-cache";
const CORS_MAX_AGE_SECS: &str = "600";

pub(crate) fn preflight<R: Copy>(
    policy: &HttpPolicy,
    routes: &[Route<R>],
    request: &Request,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !policy.origin_allowed(origin) {
        return Err(ApiError::OriginNotAllowed {
            origin: origin.chars().take(100).collect(),
        });
    }
    let mut methods: Vec<&str> = routes
        .iter()
        .filter(|route| match_template(route.template, path).is_some())
        .map(|route| route.method.as_str())
        .collect();
    if methods.is_empty() {
        return Err(ApiError::RouteNotFound {
            method: "OPTIONS".to_owned(),
            path: path.to_owned(),
        });
    }
    methods.dedup();
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, methods.join(", "))
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, CORS_ALLOWED_HEADERS)
        .header(header::ACCESS_CONTROL_MAX_AGE, CORS_MAX_AGE_SECS)
        .body(Body::Empty)
        .map_err(|error| ApiError::internal(format!("building a preflight response: {error}")))
}

/// The CORS headers of an answer to `origin`: none unless it is allowed.
pub(crate) fn allow_origin(policy: &HttpPolicy, headers: &mut HeaderMap, origin: Option<&str>) {
    // Caches must not serve one origin's CORS answer to another.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin.filter(|origin| policy.origin_allowed(origin))
        && let Ok(value) = HeaderValue::from_str(origin)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-correlation-id, retry-after, x-sophia-cache"),
        );
    }
}
