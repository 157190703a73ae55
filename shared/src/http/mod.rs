//! The pipeline every API function runs its handler in.
//!
//! In order: request identity (correlation ID, trace, deadline) and a span around
//! everything; CORS preflight against the allow-list; the body size limit; routing
//! (unknown path → 404, wrong method → 405, both problem+json); the handler; then on
//! every response, success or error, the security headers, the correlation ID, the
//! CORS headers for allowed origins, one access log line and one EMF metric line.
//! Handlers return `Result<Response, ApiError>` and never build error responses
//! themselves, so every error looks the same to clients.
//!
//! - [`policy`]: per-function settings ([`policy::HttpPolicy`]);
//! - [`routing`]: routes and matching ([`routing::Route`]);
//! - [`request`]: the request a handler gets ([`request::ApiRequest`]) and body parsing;
//! - [`cors`]: the origin allow-list and preflights;
//! - [`response`]: security headers, rate-limit headers, problem responses.

pub mod cors;
pub mod policy;
pub mod request;
pub mod response;
pub mod routing;

use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use http::header;
use lambda_http::{Body, Request, RequestExt, Response};
use tracing::Instrument;

use crate::guard::ratelimit::{Decision, PendingDecision};
use crate::observability::{self, MetricSet, RequestContext, TraceContext, otel};
use crate::problem::ApiError;
use policy::HttpPolicy;
use request::{ApiRequest, client_ip};
use response::{finish, problem_response, rate_limit_headers};
use routing::{Route, RouteMatch, match_route, request_path};

pub const METRICS_NAMESPACE: &str = "Sophia";

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
    let mut ctx = RequestContext {
        request_id,
        correlation_id: observability::correlation_id(request.headers()),
        trace: TraceContext::from_headers(request.headers(), xray.as_deref()),
        deadline,
    };
    let method = request.method().clone();
    let path = request_path(&request);
    let span = tracing::info_span!(
        "request",
        // Renamed after the route template once routed: paths carry IDs.
        otel.name = %method,
        otel.kind = "server",
        request_id = %ctx.request_id,
        correlation_id = %ctx.correlation_id,
        trace_id = tracing::field::Empty,
        method = %method,
        path = %path,
        route = tracing::field::Empty,
        tenant = tracing::field::Empty,
    );
    // Exported spans continue the caller's trace, and the IDs in logs and in
    // every `traceparent` sent on are the exported span's.
    otel::continue_trace(&span, &ctx.trace);
    ctx.trace.adopt(&span);
    span.record("trace_id", ctx.trace.trace_id.as_str());
    let correlation_id = ctx.correlation_id.clone();
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);

    async move {
        let (template, outcome, limit) =
            route_and_handle(policy, routes, request, ctx, handler).await;
        let span = tracing::Span::current();
        otel::rename(&span, || format!("{method} {template}"));
        span.record("route", template);
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
            cors::preflight(policy, routes, &request, &path),
            None,
        );
    }
    if policy.reject_unknown_origins
        && let Some(origin) = request.headers().get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or_default();
        if !policy.origin_allowed(origin) {
            let error = ApiError::OriginNotAllowed {
                origin: origin.chars().take(100).collect(),
            };
            return ("rejected", Err(error), None);
        }
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
                if let Some(decision) = limit
                    && let Err(denied) = limited(decision)
                {
                    return (template, Err(denied), Some(decision));
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
    let subject = principal.as_ref().map(|p| p.subject.clone());
    let (limit, pending_limit) = match &policy.limits {
        None => (None, None),
        Some(limits) if found.rate_limited_alongside => {
            let ip = client_ip(&request);
            let pending = PendingDecision::start(limits.clone(), ip, subject);
            (None, Some(pending))
        }
        Some(limits) => {
            let decision = limits.check(&client_ip(&request), subject.as_deref()).await;
            if let Err(error) = limited(decision) {
                return (template, Err(error), Some(decision));
            }
            (Some(decision), None)
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
        pending_limit: pending_limit.clone(),
    };
    let outcome = handler(api_request).await;
    match pending_limit {
        None => (template, outcome, limit),
        Some(pending) => {
            // Whatever the handler answered (a 400 included), a denied request is a 429.
            let decision = pending.decision().await;
            match limited(decision) {
                Ok(()) => (template, outcome, Some(decision)),
                Err(error) => (template, Err(error), Some(decision)),
            }
        }
    }
}

/// A rate-limit decision as an answer: 429 (with its `Retry-After`) when denied.
pub fn limited(decision: Decision) -> Result<(), ApiError> {
    if decision.allowed {
        return Ok(());
    }
    Err(ApiError::RateLimited {
        retry_after_secs: decision.retry_after_secs.min(u64::from(u32::MAX)) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::json_response;
    use crate::http::response::SECURITY_HEADERS;
    use crate::problem::PROBLEM_CONTENT_TYPE;
    use http::StatusCode;
    use std::time::Duration;

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
            reject_unknown_origins: false,
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
    async fn an_unknown_origin_is_refused_on_every_request_when_the_policy_says_so() {
        let strict = policy().rejecting_unknown_origins();
        let send = |origin: Option<&'static str>| {
            let strict = strict.clone();
            async move {
                let headers: Vec<(&str, &str)> =
                    origin.map(|o| ("origin", o)).into_iter().collect();
                let req = request("GET", "/v1/things", &headers, "");
                serve(&strict, &ROUTES, req, |_| async {
                    json_response(StatusCode::OK, &serde_json::json!([]))
                })
                .await
            }
        };
        let refused = send(Some("https://evil.example")).await;
        assert_eq!(refused.status(), 403);
        assert_eq!(
            problem(&refused)["type"],
            "urn:sophia:problem:origin-not-allowed"
        );
        assert_eq!(send(Some("https://app.example.com")).await.status(), 200);
        // Clients that are not browsers send no Origin.
        assert_eq!(send(None).await.status(), 200);
        // Without the option only preflights are checked.
        let lenient = echo(request(
            "GET",
            "/v1/things",
            &[("origin", "https://evil.example")],
            "",
        ))
        .await;
        assert_eq!(lenient.status(), 200);
    }

    #[tokio::test]
    async fn a_full_bulkhead_sheds_before_the_handler_runs() {
        let bulkhead =
            std::sync::Arc::new(crate::guard::bulkhead::Bulkhead::new("the test fleet", 1));
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
}
