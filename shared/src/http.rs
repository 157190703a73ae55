//! The pipeline every API function runs its handler in.
//!
//! In order: request identity (correlation ID, trace, deadline) and a span around
//! everything; CORS preflight against the allow-list; the body size limit; routing
//! (unknown path → 404, wrong method → 405, both problem+json); the handler; then on
//! every response, success or error, the security headers, the correlation ID, the
//! CORS headers for allowed origins, one access log line and one EMF metric line.
//! Handlers return `Result<Response, ApiError>` and never build error responses
//! themselves, so every error looks the same to clients.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::config::{ConfigError, Env};
use crate::error::{ApiError, PROBLEM_CONTENT_TYPE};
use crate::observability::{self, MetricSet, RequestContext, TraceContext};
use crate::ratelimit::Decision;

pub const METRICS_NAMESPACE: &str = "Sophia";
/// JSON bodies deeper than this are rejected before deserialization: no request
/// schema of ours nests this far, and deep nesting is a cheap way to burn CPU.
pub const MAX_JSON_DEPTH: usize = 32;
const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
const CORS_ALLOWED_HEADERS: &str =
    "authorization, content-type, idempotency-key, prefer, traceparent, x-correlation-id";
const CORS_MAX_AGE_SECS: &str = "600";

const SECURITY_HEADERS: [(&str, &str); 6] = [
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

/// The metrics of one answered request, the SLIs' source. EMF on stdout costs the
/// request no round trip; CloudWatch turns it into metrics that job-slo-check
/// reads (`Requests`, `Errors` = 5xx, `SlowRequests` = slower than
/// `SLOW_REQUEST_MS`), aggregated however many instances there are.
pub fn request_outcome(
    policy: &HttpPolicy,
    route: &str,
    status: u16,
    latency_ms: f64,
) -> MetricSet {
    MetricSet::new(METRICS_NAMESPACE)
        .dimension("Service", policy.service)
        .dimension("Route", route)
        .count("Requests", 1.0)
        .count("Errors", f64::from(u8::from(status >= 500)))
        .count(
            "ClientErrors",
            f64::from(u8::from((400..500).contains(&status))),
        )
        .count(
            "SlowRequests",
            f64::from(u8::from(latency_ms > policy.slow_request_ms)),
        )
        .millis("Latency", latency_ms)
        .property("status", status)
}

/// Per-function HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// The function's name, used as the `Service` metric dimension.
    pub service: &'static str,
    /// Exact origins (`https://app.example.com`) allowed to call from a browser.
    pub cors_allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    /// Time budget when no Lambda deadline is known (tests, local tools).
    pub default_budget: Duration,
    /// Verifies bearer tokens for protected routes; required if any route is.
    pub auth: Option<std::sync::Arc<crate::auth::Authenticator>>,
    /// Per-IP and per-principal limits shared across instances.
    pub limits: Option<std::sync::Arc<crate::ratelimit::RateLimits>>,
    /// Answers slower than this count as `SlowRequests` (the latency SLI).
    pub slow_request_ms: f64,
    /// Consulted for routes that [`Route::sheds_when_busy`], after authentication
    /// and before the rate limits: a request that would be shed pays no round trip.
    pub bulkhead: Option<std::sync::Arc<crate::bulkhead::Bulkhead>>,
}

impl HttpPolicy {
    /// Reads `CORS_ALLOWED_ORIGINS` (comma-separated exact origins) and `MAX_BODY_BYTES`.
    pub fn from_env(service: &'static str, env: &Env<'_>) -> Result<Self, ConfigError> {
        let origins = env.list("CORS_ALLOWED_ORIGINS");
        for origin in &origins {
            let valid = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && !origin.contains('*');
            if !valid {
                return Err(ConfigError::new(
                    "CORS_ALLOWED_ORIGINS",
                    format!("{origin:?} is not an exact origin like https://app.example.com"),
                ));
            }
        }
        let max_body_bytes = env.parse_or("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?;
        if max_body_bytes == 0 || max_body_bytes > 6 * 1024 * 1024 {
            return Err(ConfigError::new(
                "MAX_BODY_BYTES",
                "must be between 1 and 6291456 (Lambda's payload limit)",
            ));
        }
        let slow_request_ms: u32 = env.parse_or("SLOW_REQUEST_MS", 200)?;
        if !(1..=60_000).contains(&slow_request_ms) {
            return Err(ConfigError::new("SLOW_REQUEST_MS", "must be 1 to 60000"));
        }
        Ok(Self {
            service,
            cors_allowed_origins: origins,
            max_body_bytes,
            default_budget: Duration::from_secs(10),
            auth: None,
            limits: None,
            slow_request_ms: f64::from(slow_request_ms),
            bulkhead: None,
        })
    }

    /// The same policy, shedding routes marked [`Route::sheds_when_busy`] when
    /// `bulkhead` is full.
    pub fn with_bulkhead(mut self, bulkhead: std::sync::Arc<crate::bulkhead::Bulkhead>) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// The same policy, enforcing `limits` on every routed request.
    pub fn with_rate_limits(
        mut self,
        limits: std::sync::Arc<crate::ratelimit::RateLimits>,
    ) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The same policy, verifying tokens with `auth`.
    pub fn with_auth(mut self, auth: std::sync::Arc<crate::auth::Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The policy of a function whose routes are protected: [`Self::from_env`],
    /// verified by `auth`, with the rate limits from the environment
    /// ([`crate::ratelimit::RateLimits::from_env`]).
    pub fn protected_from_env(
        service: &'static str,
        env: &Env<'_>,
        auth: std::sync::Arc<crate::auth::Authenticator>,
        dynamodb: aws_sdk_dynamodb::Client,
    ) -> Result<Self, ConfigError> {
        let limits = crate::ratelimit::RateLimits::from_env(env, dynamodb)?;
        Ok(Self::from_env(service, env)?
            .with_auth(auth)
            .with_rate_limits(std::sync::Arc::new(limits)))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.cors_allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
    }
}

/// One route of a function: method, path template (`/v1/jobs/{id}`), the
/// handler's own identifier for it, and the scope a caller's token must carry
/// (`None`: public). Routes are declared with [`Route::public`] or
/// [`Route::protected`], so being public is always a visible decision.
#[derive(Debug, Clone)]
pub struct Route<R> {
    pub method: Method,
    pub template: &'static str,
    pub id: R,
    pub scope: Option<&'static str>,
    /// Takes a slot of the policy's bulkhead before anything else that costs.
    pub sheds_when_busy: bool,
}

impl<R> Route<R> {
    pub const fn public(method: Method, template: &'static str, id: R) -> Self {
        Self {
            method,
            template,
            id,
            scope: None,
            sheds_when_busy: false,
        }
    }

    /// The same route, answered 503 at once (no rate-limit write, no quota
    /// reservation) when the policy's bulkhead is full; the handler gets the slot
    /// as [`ApiRequest::permit`].
    pub const fn sheds_when_busy(mut self) -> Self {
        self.sheds_when_busy = true;
        self
    }

    pub const fn protected(
        method: Method,
        template: &'static str,
        id: R,
        scope: &'static str,
    ) -> Self {
        Self {
            method,
            template,
            id,
            scope: Some(scope),
            sheds_when_busy: false,
        }
    }
}

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
    pub permit: Option<crate::bulkhead::BulkheadPermit>,
}

impl<R> ApiRequest<R> {
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

/// The request path as the client sent it, without the API Gateway stage.
fn request_path(request: &Request) -> String {
    let raw = request.raw_http_path();
    let path = if raw.is_empty() {
        request.uri().path()
    } else {
        raw
    };
    if path.len() > 1 {
        path.trim_end_matches('/').to_owned()
    } else {
        "/".to_owned()
    }
}

enum RouteMatch<'r, R> {
    Found(&'r Route<R>, Vec<(&'static str, String)>),
    WrongMethod(String),
    Missing,
}

fn match_route<'r, R>(routes: &'r [Route<R>], method: &Method, path: &str) -> RouteMatch<'r, R> {
    let mut allowed: Vec<&str> = Vec::new();
    for route in routes {
        let Some(params) = match_template(route.template, path) else {
            continue;
        };
        if route.method == *method {
            return RouteMatch::Found(route, params);
        }
        allowed.push(route.method.as_str());
    }
    if allowed.is_empty() {
        RouteMatch::Missing
    } else {
        allowed.dedup();
        RouteMatch::WrongMethod(allowed.join(", "))
    }
}

fn match_template(template: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let mut params = Vec::new();
    let mut template_parts = template.split('/');
    let mut path_parts = path.split('/');
    loop {
        match (template_parts.next(), path_parts.next()) {
            (None, None) => return Some(params),
            (Some(t), Some(p)) => {
                if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    if p.is_empty() {
                        return None;
                    }
                    params.push((name, p.to_owned()));
                } else if t != p {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// Runs `handler` for `request` inside the pipeline. Never fails: every outcome is
/// an HTTP response.
pub async fn serve<R, F, Fut>(
    policy: &HttpPolicy,
    routes: &[Route<R>],
    request: Request,
    handler: F,
) -> Response<Body>
where
    R: Copy,
    F: FnOnce(ApiRequest<R>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ApiError>>,
{
    let started = Instant::now();
    let lambda = request.lambda_context_ref();
    let request_id = lambda
        .map(|context| context.request_id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let deadline = observability::deadline_from_epoch_ms(
        lambda.map(|context| context.deadline).unwrap_or(0),
        policy.default_budget,
    );
    let xray = lambda.and_then(|context| context.xray_trace_id.clone());
    let ctx = RequestContext {
        request_id,
        correlation_id: observability::correlation_id(request.headers()),
        trace: TraceContext::from_headers(request.headers(), xray.as_deref()),
        deadline,
    };
    let method = request.method().clone();
    let path = request_path(&request);
    let span = tracing::info_span!(
        "request",
        request_id = %ctx.request_id,
        correlation_id = %ctx.correlation_id,
        trace_id = %ctx.trace.trace_id,
        method = %method,
        path = %path,
        tenant = tracing::field::Empty,
    );
    let correlation_id = ctx.correlation_id.clone();
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);

    async move {
        let (template, outcome, limit) =
            route_and_handle(policy, routes, request, ctx, handler).await;
        let mut response = match outcome {
            Ok(response) => response,
            Err(error) => problem_response(&error, &correlation_id, &path),
        };
        finish(policy, &mut response, &correlation_id, origin.as_deref());
        if let Some(limit) = limit {
            rate_limit_headers(&mut response, &limit);
        }
        let status = response.status().as_u16();
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(status, latency_ms, route = template, "request completed");
        request_outcome(policy, template, status, latency_ms)
            .property("correlation_id", correlation_id.as_str())
            .emit();
        response
    }
    .instrument(span)
    .await
}

/// Preflight, size limit, routing and the handler. Returns the metric route label
/// (the template, or a fixed word so unknown paths cannot explode cardinality).
async fn route_and_handle<R, F, Fut>(
    policy: &HttpPolicy,
    routes: &[Route<R>],
    request: Request,
    ctx: RequestContext,
    handler: F,
) -> (
    &'static str,
    Result<Response<Body>, ApiError>,
    Option<Decision>,
)
where
    R: Copy,
    F: FnOnce(ApiRequest<R>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ApiError>>,
{
    let method = request.method().clone();
    let path = request_path(&request);
    let is_preflight = method == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if is_preflight {
        return (
            "preflight",
            preflight(policy, routes, &request, &path),
            None,
        );
    }
    if request.body().len() > policy.max_body_bytes {
        return (
            "rejected",
            Err(ApiError::PayloadTooLarge {
                limit_bytes: policy.max_body_bytes,
            }),
            None,
        );
    }
    let (found, params) = match match_route(routes, &method, &path) {
        RouteMatch::Found(found, params) => (found, params),
        RouteMatch::WrongMethod(allowed) => {
            let error = ApiError::MethodNotAllowed {
                method: method.to_string(),
                allowed,
            };
            return ("unmatched", Err(error), None);
        }
        RouteMatch::Missing => {
            let error = ApiError::RouteNotFound {
                method: method.to_string(),
                path,
            };
            return ("unmatched", Err(error), None);
        }
    };
    let (route, template, scope) = (found.id, found.template, found.scope);
    let principal = match (scope, &policy.auth) {
        (None, _) => None,
        (Some(scope), Some(auth)) => match auth.authenticate(request.headers(), scope).await {
            Ok(principal) => Some(principal),
            Err(error) => {
                // Failed authentications still cost the caller's IP, so floods of
                // forged tokens are throttled like anything else.
                let limit = match &policy.limits {
                    Some(limits) => Some(limits.check(&client_ip(&request), None).await),
                    None => None,
                };
                if let Some(decision) = limit.filter(|d| !d.allowed) {
                    let limited = ApiError::RateLimited {
                        retry_after_secs: decision.retry_after_secs.min(u64::from(u32::MAX)) as u32,
                    };
                    return (template, Err(limited), Some(decision));
                }
                return (template, Err(error), limit);
            }
        },
        (Some(_), None) => {
            let error = ApiError::internal("a protected route is served without an authenticator");
            return (template, Err(error), None);
        }
    };
    if let Some(principal) = &principal {
        tracing::Span::current().record("tenant", principal.tenant.as_str());
    }
    // Before the rate limits and anything the handler reserves: a shed request
    // costs no round trip and holds nothing back (issue 10).
    let permit = match (&policy.bulkhead, found.sheds_when_busy) {
        (Some(bulkhead), true) => match bulkhead.try_enter() {
            Some(permit) => Some(permit),
            None => {
                tracing::warn!(limit = bulkhead.limit(), "bulkhead full: shedding");
                return (template, Err(bulkhead.refusal()), None);
            }
        },
        _ => None,
    };
    let limit = match &policy.limits {
        None => None,
        Some(limits) => {
            let subject = principal.as_ref().map(|p| p.subject.as_str());
            let decision = limits.check(&client_ip(&request), subject).await;
            if !decision.allowed {
                let error = ApiError::RateLimited {
                    retry_after_secs: decision.retry_after_secs.min(u64::from(u32::MAX)) as u32,
                };
                return (template, Err(error), Some(decision));
            }
            Some(decision)
        }
    };
    let query = request.uri().query().map(str::to_owned);
    let (parts, body) = request.into_parts();
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    let api_request = ApiRequest {
        route,
        template,
        method,
        path,
        headers: parts.headers,
        query,
        body,
        params,
        ctx,
        principal,
        permit,
    };
    (template, handler(api_request).await, limit)
}

fn preflight<R: Copy>(
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

/// The caller's address as API Gateway or the function URL saw it. Never taken
/// from `X-Forwarded-For`, which the client controls.
fn client_ip(request: &Request) -> String {
    use lambda_http::request::RequestContext;
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.http.source_ip.clone(),
        _ => None,
    }
    .unwrap_or_else(|| "unknown".to_owned())
}

/// IETF `RateLimit-*` headers (draft-ietf-httpapi-ratelimit-headers).
fn rate_limit_headers(response: &mut Response<Body>, decision: &Decision) {
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

fn finish(
    policy: &HttpPolicy,
    response: &mut Response<Body>,
    correlation_id: &str,
    origin: Option<&str>,
) {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    if let Ok(value) = HeaderValue::from_str(correlation_id) {
        headers.insert(
            HeaderName::from_static(observability::CORRELATION_HEADER),
            value,
        );
    }
    // Caches must not serve one origin's CORS answer to another.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin.filter(|origin| policy.origin_allowed(origin))
        && let Ok(value) = HeaderValue::from_str(origin)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-correlation-id, retry-after"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Id {
        List,
        Get,
        Create,
    }

    const ROUTES: [Route<Id>; 3] = [
        Route::public(Method::GET, "/v1/things", Id::List),
        Route::public(Method::POST, "/v1/things", Id::Create),
        Route::public(Method::GET, "/v1/things/{id}", Id::Get),
    ];

    fn policy() -> HttpPolicy {
        HttpPolicy {
            service: "test",
            cors_allowed_origins: vec!["https://app.example.com".to_owned()],
            max_body_bytes: 64,
            default_budget: Duration::from_secs(1),
            auth: None,
            limits: None,
            slow_request_ms: 200.0,
            bulkhead: None,
        }
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut builder = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::from(body)).unwrap()
    }

    async fn echo(req: Request) -> Response<Body> {
        serve(&policy(), &ROUTES, req, |api| async move {
            let value = match api.route {
                Id::Create => api.json::<serde_json::Value>()?,
                Id::Get => serde_json::json!({ "id": api.param("id") }),
                Id::List => serde_json::json!([]),
            };
            json_response(StatusCode::OK, &value)
        })
        .await
    }

    fn problem(response: &Response<Body>) -> serde_json::Value {
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            PROBLEM_CONTENT_TYPE
        );
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn templates_match_segments() {
        assert!(match_template("/v1/things/{id}", "/v1/things/42").is_some());
        assert!(match_template("/v1/things/{id}", "/v1/things").is_none());
        assert!(match_template("/v1/things/{id}", "/v1/things/42/x").is_none());
        assert!(match_template("/v1/things/{id}", "/v1/things/").is_none());
    }

    #[tokio::test]
    async fn routes_and_extracts_params() {
        let response = echo(request("GET", "/v1/things/abc/", &[], "")).await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["id"], "abc");
    }

    #[tokio::test]
    async fn every_response_has_security_headers_and_correlation_id() {
        for req in [
            request("GET", "/v1/things", &[], ""),
            request("GET", "/nope", &[], ""),
            request(
                "POST",
                "/v1/things",
                &[("content-type", "application/json")],
                "{",
            ),
        ] {
            let response = echo(req).await;
            for (name, value) in SECURITY_HEADERS {
                assert_eq!(response.headers()[name], value);
            }
            assert!(response.headers().contains_key("x-correlation-id"));
        }
    }

    #[tokio::test]
    async fn correlation_id_is_echoed() {
        let response = echo(request(
            "GET",
            "/v1/things",
            &[("x-correlation-id", "abc-1")],
            "",
        ))
        .await;
        assert_eq!(response.headers()["x-correlation-id"], "abc-1");
    }

    #[tokio::test]
    async fn unknown_route_is_404_problem() {
        let response = echo(request(
            "GET",
            "/v2/nothing",
            &[("x-correlation-id", "c-9")],
            "",
        ))
        .await;
        assert_eq!(response.status(), 404);
        let body = problem(&response);
        assert_eq!(body["type"], "urn:sophia:problem:route-not-found");
        assert_eq!(body["correlation_id"], "c-9");
    }

    #[tokio::test]
    async fn wrong_method_is_405_with_allow() {
        let response = echo(request("DELETE", "/v1/things", &[], "")).await;
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
        problem(&response);
    }

    #[tokio::test]
    async fn malformed_json_is_400() {
        let json = [("content-type", "application/json")];
        let response = echo(request("POST", "/v1/things", &json, "{\"a\":")).await;
        assert_eq!(response.status(), 400);
        assert_eq!(
            problem(&response)["type"],
            "urn:sophia:problem:malformed-json"
        );
    }

    #[tokio::test]
    async fn deep_json_is_400() {
        let json = [("content-type", "application/json")];
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let response = serve(
            &HttpPolicy {
                max_body_bytes: 1000,
                ..policy()
            },
            &ROUTES,
            request("POST", "/v1/things", &json, &deep),
            |api| async move { json_response(StatusCode::OK, &api.json::<serde_json::Value>()?) },
        )
        .await;
        assert_eq!(response.status(), 400);
        assert_eq!(
            problem(&response)["type"],
            "urn:sophia:problem:body-too-deep"
        );
    }

    #[tokio::test]
    async fn oversized_body_is_413() {
        let json = [("content-type", "application/json")];
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
        let response = echo(request("POST", "/v1/things", &json, &big)).await;
        assert_eq!(response.status(), 413);
        problem(&response);
    }

    #[tokio::test]
    async fn wrong_content_type_is_415() {
        let text = [("content-type", "text/plain")];
        let response = echo(request("POST", "/v1/things", &text, "{}")).await;
        assert_eq!(response.status(), 415);
        problem(&response);
    }

    #[tokio::test]
    async fn cors_allows_listed_origins_only() {
        let ok = echo(request(
            "GET",
            "/v1/things",
            &[("origin", "https://app.example.com")],
            "",
        ))
        .await;
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        let evil = echo(request(
            "GET",
            "/v1/things",
            &[("origin", "https://evil.example")],
            "",
        ))
        .await;
        assert!(
            !evil
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
    }

    #[tokio::test]
    async fn preflight_answers_allowed_origins_and_refuses_others() {
        let preflight_headers = |origin: &'static str| {
            [
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ]
        };
        let ok = echo(request(
            "OPTIONS",
            "/v1/things",
            &preflight_headers("https://app.example.com"),
            "",
        ))
        .await;
        assert_eq!(ok.status(), 204);
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_METHODS],
            "GET, POST"
        );
        let refused = echo(request(
            "OPTIONS",
            "/v1/things",
            &preflight_headers("https://evil.example"),
            "",
        ))
        .await;
        assert_eq!(refused.status(), 403);
        assert!(
            !refused
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
        problem(&refused);
    }

    #[tokio::test]
    async fn a_full_bulkhead_sheds_before_the_handler_runs() {
        let bulkhead = std::sync::Arc::new(crate::bulkhead::Bulkhead::new("the test fleet", 1));
        let policy = policy().with_bulkhead(bulkhead.clone());
        let routes = [
            Route::public(Method::GET, "/v1/things", Id::List).sheds_when_busy(),
            Route::public(Method::GET, "/v1/things/{id}", Id::Get),
        ];
        let held = bulkhead.try_enter().unwrap();
        let ran = std::sync::atomic::AtomicBool::new(false);
        let ran_ref = &ran;
        let handler = |api: ApiRequest<Id>| async move {
            ran_ref.store(true, std::sync::atomic::Ordering::SeqCst);
            assert_eq!(api.permit.is_some(), api.route == Id::List);
            json_response(StatusCode::OK, &serde_json::json!({}))
        };
        let shed = serve(
            &policy,
            &routes,
            request("GET", "/v1/things", &[], ""),
            handler,
        )
        .await;
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()[header::RETRY_AFTER], "1");
        assert!(
            problem(&shed)["detail"]
                .as_str()
                .unwrap()
                .contains("the test fleet")
        );
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        // Routes that do not shed are served; once a slot is free, so is this one.
        let other = serve(
            &policy,
            &routes,
            request("GET", "/v1/things/1", &[], ""),
            handler,
        )
        .await;
        assert_eq!(other.status(), 200);
        drop(held);
        let admitted = serve(
            &policy,
            &routes,
            request("GET", "/v1/things", &[], ""),
            handler,
        )
        .await;
        assert_eq!(admitted.status(), 200);
        assert_eq!(
            bulkhead.in_flight(),
            0,
            "the slot is freed with the request"
        );
    }

    #[test]
    fn depth_scanner_ignores_brackets_in_strings() {
        assert!(!json_depth_exceeds(br#"{"a":"[[[[[[[[[[[[["}"#, 2));
        assert!(json_depth_exceeds(b"[[[", 2));
        assert!(!json_depth_exceeds(br#"{"a\"[[[":[1]}"#, 2));
    }

    #[test]
    fn policy_rejects_wildcard_origins() {
        let env = [("CORS_ALLOWED_ORIGINS", "https://ok.example, *")];
        assert!(HttpPolicy::from_env("t", &Env::new(&env)).is_err());
        let env = [("MAX_BODY_BYTES", "0")];
        assert!(HttpPolicy::from_env("t", &Env::new(&env)).is_err());
    }
}
