//! Administration, always of the caller's own tenant (taken from the token):
//!
//! | route | scope | what |
//! |---|---|---|
//! | `POST /v1/admin/keys` | admin | create an API key (scopes ⊆ the caller's); the plaintext is shown once |
//! | `GET /v1/admin/keys` | admin | list the tenant's keys (never their hashes) |
//! | `DELETE /v1/admin/keys/{id}` | admin | revoke a key (404 for another tenant's key) |
//! | `GET /v1/admin/quota` | admin | the tenant's daily quota |
//! | `PUT /v1/admin/tenants/{tenant}/quota` | platform | set any tenant's quota |
//! | `GET /v1/admin/budget` | admin | the tenant's cost budget and its spend per period |
//! | `PUT /v1/admin/tenants/{tenant}/budget` | platform | set any tenant's budget (applied at once) |
//! | `DELETE /v1/admin/tenants/{tenant}/budget` | platform | remove it (and any block it made) |
//! | `GET /v1/admin/flags` | admin | the tenant's feature flags |
//! | `PUT /v1/admin/flags/{name}` | admin | set a flag (`{"value": true | 1.5 | "text"}`) |
//! | `GET /v1/admin/audit` | admin | the tenant's audit log |
//! | `GET /v1/admin/audit/verify` | admin | recompute the hash chain; name the first broken entry |
//! | `GET /v1/admin/queues/{queue}/dead-letters` | platform | the dead-letter queue's messages, left in place |
//! | `POST /v1/admin/queues/{queue}/redrive` | platform | move them back to the source queue (audited) |
//! | `GET /v1/admin/mcp-servers` | admin | the tenant's upstream MCP servers (credentials never shown) |
//! | `PUT /v1/admin/mcp-servers/{name}` | admin | register or replace one (credentials to Secrets Manager) |
//! | `GET /v1/admin/mcp-servers/{name}` | admin | one registration |
//! | `DELETE /v1/admin/mcp-servers/{name}` | admin | remove it and its credentials |
//!
//! Every change, and every read of the audit log, is appended to the audit log.

use std::sync::Arc;
use std::time::Duration;

use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use sophia_shared::auth::store::AuthStore;
use sophia_shared::auth::{ALL_SCOPES, Authenticator, Principal, SCOPE_ADMIN, SCOPE_PLATFORM};
use sophia_shared::aws::deadletter::DeadLetterQueue;
use sophia_shared::clock::now_secs;
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::guard::quota::{Quota, Quotas};
use sophia_shared::http::policy::HttpPolicy;
use sophia_shared::http::request::{ApiRequest, json_response};
use sophia_shared::http::routing::Route;
use sophia_shared::http::serve;
use sophia_shared::inference::budget::{Budget, Budgets};
use sophia_shared::mcp::McpSettings;
use sophia_shared::mcp::registry::{Registration, Registry};
use sophia_shared::ops::audit::{AuditLog, Event};
use sophia_shared::ops::flags::{FlagValue, Flags, valid_name};
use sophia_shared::problem::ApiError;

pub const SERVICE: &str = "api-admin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRoute {
    CreateKey,
    ListKeys,
    RevokeKey,
    OwnQuota,
    SetQuota,
    OwnBudget,
    SetBudget,
    DeleteBudget,
    ListFlags,
    SetFlag,
    ReadAudit,
    VerifyAudit,
    ListDeadLetters,
    Redrive,
    ListMcpServers,
    PutMcpServer,
    GetMcpServer,
    DeleteMcpServer,
}

pub const ROUTES: [Route<AdminRoute>; 18] = [
    Route::protected(
        Method::POST,
        "/v1/admin/keys",
        AdminRoute::CreateKey,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::GET,
        "/v1/admin/keys",
        AdminRoute::ListKeys,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::DELETE,
        "/v1/admin/keys/{id}",
        AdminRoute::RevokeKey,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::GET,
        "/v1/admin/quota",
        AdminRoute::OwnQuota,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::PUT,
        "/v1/admin/tenants/{tenant}/quota",
        AdminRoute::SetQuota,
        SCOPE_PLATFORM,
    ),
    Route::protected(
        Method::GET,
        "/v1/admin/budget",
        AdminRoute::OwnBudget,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::PUT,
        "/v1/admin/tenants/{tenant}/budget",
        AdminRoute::SetBudget,
        SCOPE_PLATFORM,
    ),
    Route::protected(
        Method::DELETE,
        "/v1/admin/tenants/{tenant}/budget",
        AdminRoute::DeleteBudget,
        SCOPE_PLATFORM,
    ),
    Route::protected(
        Method::GET,
        "/v1/admin/flags",
        AdminRoute::ListFlags,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::PUT,
        "/v1/admin/flags/{name}",
        AdminRoute::SetFlag,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::GET,
        "/v1/admin/audit",
        AdminRoute::ReadAudit,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::GET,
        "/v1/admin/audit/verify",
        AdminRoute::VerifyAudit,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::GET,
        "/v1/admin/queues/{queue}/dead-letters",
        AdminRoute::ListDeadLetters,
        SCOPE_PLATFORM,
    ),
    Route::protected(
        Method::POST,
        "/v1/admin/queues/{queue}/redrive",
        AdminRoute::Redrive,
        SCOPE_PLATFORM,
    ),
    Route::protected(
        Method::GET,
        "/v1/admin/mcp-servers",
        AdminRoute::ListMcpServers,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::PUT,
        "/v1/admin/mcp-servers/{name}",
        AdminRoute::PutMcpServer,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::GET,
        "/v1/admin/mcp-servers/{name}",
        AdminRoute::GetMcpServer,
        SCOPE_ADMIN,
    ),
    Route::protected(
        Method::DELETE,
        "/v1/admin/mcp-servers/{name}",
        AdminRoute::DeleteMcpServer,
        SCOPE_ADMIN,
    ),
];

pub struct Deps {
    pub http: HttpPolicy,
    pub store: AuthStore,
    pub quotas: Arc<Quotas>,
    /// Cost budgets; setting one applies its block (or lifts it) at once.
    pub budgets: Budgets,
    pub flags: Flags,
    pub audit: AuditLog,
    /// Dead-letter queues by name (`jobs`).
    pub dead_letters: Vec<DeadLetterQueue>,
    /// The tenants' upstream MCP servers (api-mcp federates them).
    pub mcp_servers: Registry,
}

impl Deps {
    /// `AUTH_TABLE`, `AUDIT_TABLE`, `USAGE_TABLE`, `STATE_TABLE`, `SIGNING_KEYS_SECRET`,
    /// `JOBS_QUEUE_URL`, `JOBS_DLQ_URL`, `MEMORY_EMBED_QUEUE_URL` and
    /// `MEMORY_EMBED_DLQ_URL` (the queues whose dead letters it lists and redrives),
    /// `MCP_*` (the MCP server registry's rules and `MCP_SECRET_PREFIX`).
    pub async fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, ConfigError> {
        let auth = Authenticator::from_env(env, sdk).await?;
        Self::with_authenticator(env, sdk, auth)
    }

    pub fn with_authenticator(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        auth: Arc<Authenticator>,
    ) -> Result<Self, ConfigError> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let auth_table = env.required("AUTH_TABLE")?;
        let quotas = Arc::new(Quotas::from_env(env, dynamodb.clone())?);
        Ok(Self {
            http: HttpPolicy::protected_from_env(SERVICE, env, auth, dynamodb.clone())?,
            store: AuthStore::new(dynamodb.clone(), auth_table.clone()),
            mcp_servers: Registry::new(
                dynamodb.clone(),
                aws_sdk_secretsmanager::Client::new(sdk),
                auth_table.clone(),
                McpSettings::from_env(env)?,
            ),
            budgets: Budgets::new(
                dynamodb.clone(),
                auth_table.clone(),
                env.required("USAGE_TABLE")?,
                quotas.clone(),
            ),
            quotas,
            flags: Flags::new(dynamodb.clone(), auth_table, Duration::from_secs(5)),
            audit: AuditLog::new(dynamodb, env.required("AUDIT_TABLE")?),
            dead_letters: vec![
                DeadLetterQueue::new(
                    aws_sdk_sqs::Client::new(sdk),
                    "jobs",
                    env.required("JOBS_DLQ_URL")?,
                    env.required("JOBS_QUEUE_URL")?,
                ),
                DeadLetterQueue::new(
                    aws_sdk_sqs::Client::new(sdk),
                    "memory-embed",
                    env.required("MEMORY_EMBED_DLQ_URL")?,
                    env.required("MEMORY_EMBED_QUEUE_URL")?,
                ),
            ],
        })
    }
}

pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    serve(&deps.http, &ROUTES, request, |api| route(deps, api)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFlag {
    value: FlagValue,
}

/// `?after=<sequence number>&limit=<1..1000>` of the audit log (defaults 0, 100).
fn audit_page(query: Option<&str>) -> Result<(u64, usize), ApiError> {
    let (mut after, mut limit) = (0u64, 100usize);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let parsed = match pair.split_once('=') {
            Some(("after", value)) => value.parse().map(|v| after = v).is_ok(),
            Some(("limit", value)) => value
                .parse()
                .ok()
                .filter(|v| (1..=1000).contains(v))
                .map(|v| limit = v)
                .is_some(),
            _ => false,
        };
        if !parsed {
            return Err(ApiError::invalid(
                "the audit log takes after (a sequence number) and limit (1 to 1000)",
            ));
        }
    }
    Ok((after, limit))
}

fn storage(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "admin storage failed");
    ApiError::DependencyUnavailable {
        dependency: "administration storage",
        retry_after_secs: 2,
    }
}

/// At most this many messages are listed, and moved per redrive call (a bigger
/// backlog takes more calls; each says how many it moved).
const MAX_LISTED: usize = 100;
const MAX_REDRIVE: usize = 1000;
/// Leaves time to answer within API Gateway's 30 s.
const REDRIVE_BUDGET: Duration = Duration::from_secs(20);

fn dead_letter_queue<'a>(
    deps: &'a Deps,
    api: &ApiRequest<AdminRoute>,
) -> Result<&'a DeadLetterQueue, ApiError> {
    let name = api.param("queue").unwrap_or_default();
    deps.dead_letters
        .iter()
        .find(|queue| queue.name == name)
        .ok_or(ApiError::NotFound { what: "queue" })
}

fn queues(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "queue operation failed");
    ApiError::DependencyUnavailable {
        dependency: "queue service",
        retry_after_secs: 2,
    }
}

/// The `{tenant}` a platform route names.
fn target_tenant(api: &ApiRequest<AdminRoute>) -> Result<String, ApiError> {
    let target = api.param("tenant").unwrap_or_default();
    let valid = (1..=64).contains(&target.len())
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !valid {
        return Err(ApiError::invalid(
            "tenant names have 1 to 64 letters, digits, '-' or '_'",
        ));
    }
    Ok(target.to_owned())
}

fn actor(principal: &Principal) -> String {
    format!("{}@{}", principal.subject, principal.tenant)
}

/// Appends to `tenant`'s audit log; an operation that cannot be audited fails.
async fn record(
    deps: &Deps,
    api: &ApiRequest<AdminRoute>,
    tenant: &str,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let principal = api.principal()?;
    let event = Event {
        actor: &actor(principal),
        action,
        target,
        correlation_id: &api.ctx.correlation_id,
        details,
    };
    deps.audit
        .append(tenant, &event)
        .await
        .map(|_| ())
        .map_err(storage)
}

async fn route(deps: &Deps, api: ApiRequest<AdminRoute>) -> Result<Response<Body>, ApiError> {
    let principal = api.principal()?.clone();
    let tenant = principal.tenant.as_str();
    match api.route {
        AdminRoute::CreateKey => {
            let request: NewKey = api.json()?;
            let name = request.name.trim();
            if name.is_empty() || name.chars().count() > 100 {
                return Err(ApiError::invalid("name must have 1 to 100 characters"));
            }
            let mut scopes = request.scopes.clone();
            scopes.sort();
            scopes.dedup();
            if scopes.is_empty() {
                return Err(ApiError::invalid("scopes must not be empty"));
            }
            for scope in &scopes {
                if !ALL_SCOPES.contains(&scope.as_str()) {
                    return Err(ApiError::invalid(format!(
                        "unknown scope {scope:?}; known: {}",
                        ALL_SCOPES.join(", ")
                    )));
                }
                // No key may carry more power than the admin creating it.
                if !principal.scopes.contains(scope) {
                    return Err(ApiError::Forbidden {
                        scope: scope.clone(),
                    });
                }
            }
            let (key, plaintext) = deps
                .store
                .create_api_key(tenant, &scopes, name)
                .await
                .map_err(storage)?;
            record(
                deps,
                &api,
                tenant,
                "api_key.created",
                &format!("apikey:{}", key.id),
                serde_json::json!({ "name": name, "scopes": scopes }),
            )
            .await?;
            json_response(
                StatusCode::CREATED,
                &serde_json::json!({ "id": key.id, "name": key.name, "scopes": key.scopes, "api_key": plaintext, "created_at": key.created_at }),
            )
        }
        AdminRoute::ListKeys => {
            let keys = deps.store.list_api_keys(tenant).await.map_err(storage)?;
            let keys: Vec<_> = keys
                .iter()
                .map(|k| serde_json::json!({ "id": k.id, "name": k.name, "scopes": k.scopes, "revoked": k.revoked, "created_at": k.created_at }))
                .collect();
            json_response(StatusCode::OK, &serde_json::json!({ "keys": keys }))
        }
        AdminRoute::RevokeKey => {
            let id = api.param("id").unwrap_or_default();
            let valid_id = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid_id
                || !deps
                    .store
                    .revoke_api_key(tenant, id)
                    .await
                    .map_err(storage)?
            {
                return Err(ApiError::RouteNotFound {
                    method: "DELETE".to_owned(),
                    path: api.path.clone(),
                });
            }
            record(
                deps,
                &api,
                tenant,
                "api_key.revoked",
                &format!("apikey:{id}"),
                serde_json::json!({}),
            )
            .await?;
            Ok(Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Body::Empty)
                .map_err(|e| ApiError::internal(e.to_string()))?)
        }
        AdminRoute::OwnQuota => {
            let quota = deps.quotas.quota(tenant).await.map_err(storage)?;
            json_response(StatusCode::OK, &quota)
        }
        AdminRoute::SetQuota => {
            let target = target_tenant(&api)?;
            let quota: Quota = api.json()?;
            if quota.requests_per_day > 100_000_000 || quota.tokens_per_day > 1_000_000_000_000 {
                return Err(ApiError::invalid("quota out of range"));
            }
            let before = deps.quotas.quota(&target).await.map_err(storage)?;
            deps.quotas.set(&target, quota).await.map_err(storage)?;
            let details = serde_json::json!({ "before": before, "after": quota });
            record(
                deps,
                &api,
                &target,
                "quota.changed",
                &format!("tenant:{target}"),
                details,
            )
            .await?;
            json_response(StatusCode::OK, &quota)
        }
        AdminRoute::OwnBudget => {
            let budget = deps.budgets.get(tenant).await.map_err(storage)?;
            let budget = budget.ok_or(ApiError::NotFound { what: "budget" })?;
            let status = deps
                .budgets
                .status(tenant, &budget, now_secs())
                .await
                .map_err(storage)?;
            json_response(StatusCode::OK, &status)
        }
        AdminRoute::SetBudget | AdminRoute::DeleteBudget => {
            let target = target_tenant(&api)?;
            let budget: Option<Budget> = match api.route {
                AdminRoute::SetBudget => Some(api.json::<Budget>()?.normalized()),
                _ => None,
            };
            if let Some(problem) = budget.as_ref().and_then(Budget::problem) {
                return Err(ApiError::invalid(problem));
            }
            let before = deps.budgets.get(&target).await.map_err(storage)?;
            if budget.is_none() && before.is_none() {
                return Err(ApiError::NotFound { what: "budget" });
            }
            let status = deps
                .budgets
                .set(&target, budget.as_ref(), now_secs())
                .await
                .map_err(storage)?;
            let details = serde_json::json!({ "before": before, "after": budget });
            record(
                deps,
                &api,
                &target,
                "budget.changed",
                &format!("tenant:{target}"),
                details,
            )
            .await?;
            match status {
                Some(status) => json_response(StatusCode::OK, &status),
                None => Ok(Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Body::Empty)
                    .map_err(|e| ApiError::internal(e.to_string()))?),
            }
        }
        AdminRoute::ListFlags => {
            let flags = deps.flags.all(tenant).await.map_err(storage)?;
            json_response(StatusCode::OK, &serde_json::json!({ "flags": flags }))
        }
        AdminRoute::SetFlag => {
            let name = api.param("name").unwrap_or_default().to_owned();
            if !valid_name(&name) {
                return Err(ApiError::invalid(
                    "flag names have 1 to 64 of a-z, 0-9, '.', '_', '-'",
                ));
            }
            let request: NewFlag = api.json()?;
            let before = deps
                .flags
                .set(tenant, &name, &request.value)
                .await
                .map_err(storage)?;
            let details = serde_json::json!({ "before": before, "after": request.value });
            record(
                deps,
                &api,
                tenant,
                "flag.changed",
                &format!("flag:{name}"),
                details,
            )
            .await?;
            json_response(
                StatusCode::OK,
                &serde_json::json!({ "name": name, "value": request.value }),
            )
        }
        AdminRoute::ListMcpServers => {
            let servers = deps
                .mcp_servers
                .list(tenant)
                .await
                .map_err(|e| e.to_api_error())?;
            let servers: Vec<_> = servers.iter().map(|s| s.to_public_json()).collect();
            json_response(StatusCode::OK, &serde_json::json!({ "servers": servers }))
        }
        AdminRoute::GetMcpServer => {
            let name = api.param("name").unwrap_or_default();
            match deps
                .mcp_servers
                .get(tenant, name)
                .await
                .map_err(|e| e.to_api_error())?
            {
                Some(server) => json_response(StatusCode::OK, &server.to_public_json()),
                None => Err(ApiError::NotFound { what: "MCP server" }),
            }
        }
        AdminRoute::PutMcpServer => {
            let name = api.param("name").unwrap_or_default().to_owned();
            let registration: Registration = api.json()?;
            let server = deps.mcp_servers.put(tenant, &name, &registration).await?;
            // Never the credentials, only whether there are some.
            let details = serde_json::json!({
                "url": server.url,
                "allowed_tools": server.allowed_tools,
                "timeout_ms": server.timeout_ms,
                "has_credentials": server.secret_id.is_some(),
            });
            record(
                deps,
                &api,
                tenant,
                "mcp_server.registered",
                &format!("mcp-server:{name}"),
                details,
            )
            .await?;
            json_response(StatusCode::OK, &server.to_public_json())
        }
        AdminRoute::DeleteMcpServer => {
            let name = api.param("name").unwrap_or_default().to_owned();
            let removed = deps
                .mcp_servers
                .delete(tenant, &name)
                .await
                .map_err(|e| e.to_api_error())?;
            if !removed {
                return Err(ApiError::NotFound { what: "MCP server" });
            }
            record(
                deps,
                &api,
                tenant,
                "mcp_server.removed",
                &format!("mcp-server:{name}"),
                serde_json::json!({}),
            )
            .await?;
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Body::Empty)
                .map_err(|error| ApiError::internal(error.to_string()))
        }
        AdminRoute::ReadAudit => {
            let (after, limit) = audit_page(api.query.as_deref())?;
            let (entries, next) = deps
                .audit
                .page(tenant, after, limit)
                .await
                .map_err(storage)?;
            record(
                deps,
                &api,
                tenant,
                "audit.read",
                "audit",
                serde_json::json!({ "entries": entries.len(), "after": after }),
            )
            .await?;
            json_response(
                StatusCode::OK,
                &serde_json::json!({ "entries": entries, "next_after": next }),
            )
        }
        AdminRoute::VerifyAudit => {
            let verification = deps.audit.verify(tenant).await.map_err(storage)?;
            record(
                deps,
                &api,
                tenant,
                "audit.verified",
                "audit",
                serde_json::json!({ "intact": verification.intact }),
            )
            .await?;
            json_response(StatusCode::OK, &verification)
        }
        AdminRoute::ListDeadLetters => {
            let queue = dead_letter_queue(deps, &api)?;
            let (depth, letters) = futures_util::join!(queue.depth(), queue.peek(MAX_LISTED));
            let letters = letters.map_err(queues)?;
            let messages: Vec<_> = letters
                .iter()
                .map(|letter| {
                    let body = serde_json::from_str::<serde_json::Value>(&letter.body)
                        .unwrap_or_else(|_| serde_json::Value::String(letter.body.clone()));
                    serde_json::json!({
                        "message_id": letter.message_id,
                        "body": body,
                        "receive_count": letter.receive_count,
                        "sent_at_ms": letter.sent_at_ms,
                    })
                })
                .collect();
            json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "queue": queue.name,
                    "approximate_depth": depth.ok(),
                    "listed": messages.len(),
                    "messages": messages,
                }),
            )
        }
        AdminRoute::Redrive => {
            let queue = dead_letter_queue(deps, &api)?;
            let report = queue
                .redrive(MAX_REDRIVE, REDRIVE_BUDGET)
                .await
                .map_err(queues)?;
            record(
                deps,
                &api,
                tenant,
                "queue.redriven",
                &format!("queue:{}", queue.name),
                serde_json::to_value(&report).unwrap_or_default(),
            )
            .await?;
            json_response(StatusCode::OK, &report)
        }
    }
}
