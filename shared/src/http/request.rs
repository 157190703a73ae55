//! The request a handler gets, and the reading of its body: JSON content type,
//! bounded nesting, well-typed with no unknown fields; all failures are 4xx.

use bytes::Bytes;
use http::header;
use http::{HeaderMap, Method, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::observability::RequestContext;
use crate::problem::ApiError;

/// JSON bodies deeper than this are rejected before deserialization: no request
/// schema of ours nests this far, and deep nesting is a cheap way to burn CPU.
pub const MAX_JSON_DEPTH: usize = 32;

/// A request after the pipeline's checks: routed, size-checked, with identity.
#[derive(Debug)]
pub struct ApiRequest<R> {
    pub route: R,
    pub template: &'static str,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub query: Option<String>,
    pub body: Bytes,
    pub params: Vec<(&'static str, String)>,
    pub ctx: RequestContext,
    /// Set on protected routes: the verified caller.
    pub principal: Option<crate::auth::Principal>,
    /// Set on routes that shed when busy: the bulkhead slot this request holds.
    pub permit: Option<crate::guard::bulkhead::BulkheadPermit>,
    /// Set on routes rate-limited alongside their handler: the check in flight.
    pub pending_limit: Option<crate::guard::ratelimit::PendingDecision>,
}

impl<R> ApiRequest<R> {
    /// Waits for the rate-limit check started with the request (routes declared
    /// [`crate::http::routing::Route::rate_limited_alongside`]); 429 if denied.
    /// Other routes passed theirs before the handler, so this returns at once.
    pub async fn rate_limit(&self) -> Result<(), ApiError> {
        match self.rate_limit_decision().await {
            None => Ok(()),
            Some(decision) => crate::http::limited(decision),
        }
    }

    /// The decision [`Self::rate_limit`] turns into an answer, with what is left
    /// of the budget; `None` on routes checked before the handler.
    pub async fn rate_limit_decision(&self) -> Option<crate::guard::ratelimit::Decision> {
        match &self.pending_limit {
            None => None,
            Some(pending) => Some(pending.decision().await),
        }
    }

    /// The verified caller of a protected route.
    pub fn principal(&self) -> Result<&crate::auth::Principal, ApiError> {
        self.principal.as_ref().ok_or_else(|| {
            ApiError::internal("a handler asked for the principal of a public route")
        })
    }

    /// A path parameter by its template name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as `T`: requires a JSON content type, bounded nesting, and valid,
    /// well-typed JSON (types use `deny_unknown_fields` to reject unknown fields).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if !is_json_content_type(content_type) {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse_json(&self.body)
    }
}

fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON body with the nesting limit; errors are client errors (4xx).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson {
            reason: "the body is empty".to_owned(),
        });
    }
    if json_depth_exceeds(body, MAX_JSON_DEPTH) {
        return Err(ApiError::TooDeep {
            max_depth: MAX_JSON_DEPTH,
        });
    }
    serde_json::from_slice(body).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => ApiError::InvalidRequest {
                reason: error.to_string(),
            },
            Category::Syntax | Category::Eof | Category::Io => ApiError::MalformedJson {
                reason: error.to_string(),
            },
        }
    })
}

/// True when arrays/objects nest deeper than `max` (brackets inside strings ignored).
/// Linear and allocation-free, so hostile input is rejected before serde sees it.
pub fn json_depth_exceeds(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in body {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A JSON response with the given status.
pub fn json_response<T: Serialize>(
    status: StatusCode,
    value: &T,
) -> Result<Response<Body>, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|error| ApiError::internal(format!("serializing a response: {error}")))?;
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Binary(body))
        .map_err(|error| ApiError::internal(format!("building a response: {error}")))
}

/// The caller's address as API Gateway saw it (or the function URL locally). Never taken
/// from `X-Forwarded-For`, which the client controls.
pub(crate) fn client_ip(request: &Request) -> String {
    use lambda_http::request::RequestContext;
    match request.request_context_ref() {
        // The REST API (the deployed API) and function URLs (`cargo lambda watch`).
        Some(RequestContext::ApiGatewayV1(context)) => context.identity.source_ip.clone(),
        Some(RequestContext::ApiGatewayV2(context)) => context.http.source_ip.clone(),
        _ => None,
    }
    .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scanner_ignores_brackets_in_strings() {
        assert!(!json_depth_exceeds(br#"{"a":"[[[[[[[[[[[[["}"#, 2));
        assert!(json_depth_exceeds(b"[[[", 2));
        assert!(!json_depth_exceeds(br#"{"a\"[[[":[1]}"#, 2));
    }
}
