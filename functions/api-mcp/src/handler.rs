//! The MCP gateway (scope `tools`):
//!
//! | route | what |
//! |---|---|
//! | `POST /mcp` | MCP Streamable HTTP, stateless: revisions 2026-07-28 (`server/discover`) and 2025-11-25/2025-06-18 (`initialize`, no session issued) |
//! | `GET /.well-known/oauth-protected-resource[/mcp]` | RFC 9728 protected-resource metadata (public) |
//!
//! `GET` and `DELETE /mcp` are 405 (no stream, no session). The pipeline runs
//! first: `Origin` (403 unless allowed), the bearer token (401 with
//! `WWW-Authenticate: Bearer resource_metadata="…"`, its audience checked by
//! the shared verification), rate limits; then [`crate::envelope`], then rmcp
//! ([`crate::server`]), then the gateway (`sophia_shared::mcp`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use lambda_http::http::{HeaderValue, Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::json;
use sophia_shared::auth::{ALL_SCOPES, Authenticator, SCOPE_TOOLS};
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::guard::ratelimit::{Limiter, lease_ttl_from_env};
use sophia_shared::http::policy::HttpPolicy;
use sophia_shared::http::request::{ApiRequest, json_response};
use sophia_shared::http::routing::Route;
use sophia_shared::http::serve;
use sophia_shared::inference::Inference;
use sophia_shared::jobs::store::JobStore;
use sophia_shared::mcp::McpSettings;
use sophia_shared::mcp::builtin::Builtins;
use sophia_shared::mcp::gateway::Gateway;
use sophia_shared::mcp::registry::Registry;
use sophia_shared::mcp::upstream::UpstreamClient;
use sophia_shared::memory::model::MemorySettings;
use sophia_shared::memory::service::MemoryService;
use sophia_shared::ops::audit::AuditLog;
use sophia_shared::outbound::{OutboundClient, OutboundSettings};
use sophia_shared::problem::ApiError;
use sophia_shared::startup::InitError;
use tower_service::Service;

use crate::envelope;
use crate::server::{Invocation, McpService, SUPPORTED_VERSIONS, service};

pub const SERVICE: &str = "api-mcp";
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpRoute {
    Endpoint,
    ResourceMetadata,
}

pub const ROUTES: [Route<McpRoute>; 3] = [
    Route::protected(Method::POST, "/mcp", McpRoute::Endpoint, SCOPE_TOOLS),
    Route::public(Method::GET, METADATA_PATH, McpRoute::ResourceMetadata),
    Route::public(
        Method::GET,
        "/.well-known/oauth-protected-resource/mcp",
        McpRoute::ResourceMetadata,
    ),
];

pub struct Deps {
    pub http: HttpPolicy,
    pub gateway: Arc<Gateway>,
    pub mcp: McpService,
    /// `PUBLIC_BASE_URL`: the API's base URL as clients see it; derived from
    /// the request (Host and stage) when unset.
    pub public_base_url: Option<String>,
}

impl Deps {
    /// Everything the tools need: memory (`MEMORY_*`, `MEMORY_TABLE`, the embed
    /// queue), jobs (`JOBS_*`), inference (`FLEET_*`, models, prices, quotas),
    /// `AUDIT_TABLE`, `STATE_TABLE` (per-tool rate limits), `AUTH_TABLE` (the
    /// registry) and `MCP_*`.
    pub async fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        // The tools (the fleet client, their schemas) are built while the
        // signing keys are read.
        let (auth, gateway) =
            Authenticator::from_env_while(env, sdk, || Self::gateway(env, sdk)).await?;
        Self::with_gateway(env, sdk, auth, gateway)
    }

    pub fn with_authenticator(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        auth: Arc<Authenticator>,
    ) -> Result<Self, InitError> {
        Self::with_gateway(env, sdk, auth, Self::gateway(env, sdk)?)
    }

    fn gateway(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Arc<Gateway>, InitError> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let settings = McpSettings::from_env(env)?;
        // One HTTP pool for the fleet and the upstream MCP servers.
        let outbound = OutboundClient::new(OutboundSettings::from_env(env)?)?;
        let inference = Arc::new(Inference::from_env_sharing(SERVICE, env, sdk, &outbound)?);
        let audit = AuditLog::new(dynamodb.clone(), env.required("AUDIT_TABLE")?);
        let memory = Arc::new(MemoryService::new(
            MemorySettings::from_env(env)?,
            dynamodb.clone(),
            aws_sdk_sqs::Client::new(sdk),
            inference.clone(),
            audit.clone(),
        ));
        let builtins = Builtins::new(memory, JobStore::from_env(env, sdk)?, inference, SERVICE)
            .map_err(|error| ConfigError::new("api/openapi.json", error.to_string()))?;
        let registry = Registry::new(
            dynamodb.clone(),
            aws_sdk_secretsmanager::Client::new(sdk),
            env.required("AUTH_TABLE")?,
            settings.clone(),
        );
        Ok(Arc::new(Gateway::new(
            builtins,
            registry,
            UpstreamClient::new(outbound, settings),
            Limiter::new(dynamodb.clone(), env.required("STATE_TABLE")?)
                .with_lease_ttl(lease_ttl_from_env(env)?),
            audit,
            SERVICE,
        )))
    }

    fn with_gateway(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        auth: Arc<Authenticator>,
        gateway: Arc<Gateway>,
    ) -> Result<Self, InitError> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        Ok(Self {
            http: HttpPolicy::protected_from_env(SERVICE, env, auth, dynamodb)?
                .rejecting_unknown_origins(),
            mcp: service(gateway.clone()),
            gateway,
            public_base_url: env
                .optional("PUBLIC_BASE_URL")
                .map(|url| url.trim_end_matches('/').to_owned()),
        })
    }
}

pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    let base = base_url(deps, &request);
    let mut response = serve(&deps.http, &ROUTES, request, |api| route(deps, api, &base)).await;
    // RFC 9728 §5.1: a 401 says where the resource's metadata is.
    if response.status() == StatusCode::UNAUTHORIZED {
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(r#"Bearer realm="sophia""#)
            .to_owned();
        let metadata = format!("{base}{METADATA_PATH}/mcp");
        if let Ok(value) =
            HeaderValue::from_str(&format!(r#"{challenge}, resource_metadata="{metadata}""#))
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

/// The API's base URL as the client called it: `PUBLIC_BASE_URL`, else the
/// Host with the REST API's stage (plain http only for loopback).
fn base_url(deps: &Deps, request: &Request) -> String {
    if let Some(base) = &deps.public_base_url {
        return base.clone();
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let loopback = host.starts_with("127.0.0.1") || host.starts_with("localhost");
    let scheme = if loopback { "http" } else { "https" };
    let stage = match request.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV1(context)) => {
            context.stage.clone().filter(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
        }
        _ => None,
    };
    match stage {
        Some(stage) => format!("{scheme}://{host}/{stage}"),
        None => format!("{scheme}://{host}"),
    }
}

async fn route(
    deps: &Deps,
    api: ApiRequest<McpRoute>,
    base: &str,
) -> Result<Response<Body>, ApiError> {
    match api.route {
        McpRoute::ResourceMetadata => json_response(
            StatusCode::OK,
            &json!({
                "resource": format!("{base}/mcp"),
                "scopes_supported": ALL_SCOPES,
                "bearer_methods_supported": ["header"],
                "resource_name": "Sophia MCP gateway",
                "resource_documentation": format!("{base}/openapi.json"),
            }),
        ),
        McpRoute::Endpoint => endpoint(deps, api).await,
    }
}

async fn endpoint(deps: &Deps, api: ApiRequest<McpRoute>) -> Result<Response<Body>, ApiError> {
    if let Some(refusal) = envelope::check(&api.headers, &api.body, &SUPPORTED_VERSIONS) {
        return json_response(refusal.status, &refusal.body);
    }
    let invocation = Invocation {
        principal: api.principal()?.clone(),
        ctx: api.ctx.clone(),
    };
    let mut builder = http::Request::builder().method(Method::POST).uri("/mcp");
    for (name, value) in &api.headers {
        builder = builder.header(name, value);
    }
    if !api.headers.contains_key(header::HOST) {
        builder = builder.header(header::HOST, "localhost");
    }
    let mut request = builder
        .body(Full::new(api.body.clone()))
        .map_err(|error| ApiError::internal(format!("building the MCP request: {error}")))?;
    request.extensions_mut().insert(invocation);
    let mut mcp = deps.mcp.clone();
    let budget = api.ctx.remaining(Duration::from_millis(100));
    let answered = tokio::time::timeout(budget, async {
        let response = match mcp.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        body.collect()
            .await
            .map(|collected| (parts, collected.to_bytes()))
            .map_err(|error| ApiError::internal(format!("reading the MCP answer: {error}")))
    })
    .await;
    let (parts, bytes) = match answered {
        Ok(answer) => answer?,
        Err(_) => return Err(ApiError::DeadlineExceeded),
    };
    translate(parts, bytes)
}

/// rmcp's answer as ours: JSON-RPC and SSE pass as they are; its plain-text
/// refusals (content negotiation) become problems like every other 4xx.
fn translate(parts: http::response::Parts, bytes: Bytes) -> Result<Response<Body>, ApiError> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let status = parts.status;
    let rpc = content_type.starts_with("application/json")
        || content_type.starts_with("text/event-stream");
    if rpc || status == StatusCode::ACCEPTED {
        let mut response = Response::builder().status(status);
        if !content_type.is_empty() {
            response = response.header(header::CONTENT_TYPE, content_type);
        }
        let body = if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Binary(bytes.to_vec())
        };
        return response
            .body(body)
            .map_err(|error| ApiError::internal(format!("building the MCP answer: {error}")));
    }
    let text = String::from_utf8_lossy(&bytes)
        .chars()
        .take(300)
        .collect::<String>();
    Err(match status {
        StatusCode::NOT_ACCEPTABLE => ApiError::NotAcceptable {
            reason: "Accept must list both application/json and text/event-stream".to_owned(),
        },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        status if status.is_client_error() => ApiError::invalid(text),
        status => ApiError::internal(format!("the MCP service answered {status}: {text}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_refusals_become_problems() {
        let parts = |status: u16, content_type: &str| {
            let (mut parts, ()) = http::Response::new(()).into_parts();
            parts.status = StatusCode::from_u16(status).unwrap();
            if !content_type.is_empty() {
                parts
                    .headers
                    .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
            }
            parts
        };
        let error = translate(parts(406, ""), Bytes::from_static(b"Not Acceptable")).unwrap_err();
        assert_eq!(error.status(), StatusCode::NOT_ACCEPTABLE);
        let error = translate(parts(415, ""), Bytes::new()).unwrap_err();
        assert_eq!(error.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let passed = translate(
            parts(400, "application/json"),
            Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32020,"message":"x"}}"#,
            ),
        )
        .unwrap();
        assert_eq!(passed.status(), StatusCode::BAD_REQUEST);
        let accepted = translate(parts(202, ""), Bytes::new()).unwrap();
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    }
}
