//! The assistant's memory, per user (scope `memory`):
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/memory` | store one memory: 201, or 200 with the existing memory it duplicates (updated; its history keeps the old text); `Idempotency-Key` honoured |
//! | `POST /v1/memory/search` | hybrid recall: vector, lexical and recency, fused; filters by namespace, tags, metadata and time; `degraded` when the fleet could not embed the query |
//! | `GET /v1/memory/{id}` | one memory with its history |
//! | `PATCH /v1/memory/{id}` | change text, metadata, tags or expiry; the previous version goes to the history |
//! | `DELETE /v1/memory/{id}` | delete one memory, its vector and history |
//! | `DELETE /v1/memory` | forget everything of the caller (audited) |
//! | `GET /v1/memory/export` | every memory with its latest 10 earlier versions, 10 per page (`?cursor=`) |
//!
//! The owner is the token's (tenant, subject); another user's memory is a 404
//! like a missing one. The logic is `sophia_shared::memory`, shared with the
//! MCP tools.

use std::sync::Arc;

use lambda_http::http::{HeaderValue, Method, StatusCode, header};
use lambda_http::{Body, Request, Response};
use serde_json::json;
use sophia_shared::auth::{Authenticator, SCOPE_MEMORY};
use sophia_shared::config::Env;
use sophia_shared::http::policy::HttpPolicy;
use sophia_shared::http::request::{ApiRequest, json_response};
use sophia_shared::http::routing::Route;
use sophia_shared::http::serve;
use sophia_shared::inference::Inference;
use sophia_shared::jobs::idempotency_key;
use sophia_shared::memory::model::{MemoryPatch, MemorySettings, NewMemory, Owner, RecallQuery};
use sophia_shared::memory::service::{MemoryService, Merge};
use sophia_shared::ops::audit::AuditLog;
use sophia_shared::problem::ApiError;
use sophia_shared::startup::InitError;

pub const SERVICE: &str = "api-memory";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryRoute {
    Store,
    ForgetAll,
    Search,
    Export,
    Get,
    Patch,
    Delete,
}

/// Specific paths before `{id}`: the first template that matches wins.
pub const ROUTES: [Route<MemoryRoute>; 7] = [
    Route::protected(Method::POST, "/v1/memory", MemoryRoute::Store, SCOPE_MEMORY),
    Route::protected(
        Method::DELETE,
        "/v1/memory",
        MemoryRoute::ForgetAll,
        SCOPE_MEMORY,
    ),
    Route::protected(
        Method::POST,
        "/v1/memory/search",
        MemoryRoute::Search,
        SCOPE_MEMORY,
    ),
    Route::protected(
        Method::GET,
        "/v1/memory/export",
        MemoryRoute::Export,
        SCOPE_MEMORY,
    ),
    Route::protected(
        Method::GET,
        "/v1/memory/{id}",
        MemoryRoute::Get,
        SCOPE_MEMORY,
    ),
    Route::protected(
        Method::PATCH,
        "/v1/memory/{id}",
        MemoryRoute::Patch,
        SCOPE_MEMORY,
    ),
    Route::protected(
        Method::DELETE,
        "/v1/memory/{id}",
        MemoryRoute::Delete,
        SCOPE_MEMORY,
    ),
];

pub struct Deps {
    pub http: HttpPolicy,
    pub memory: Arc<MemoryService>,
}

impl Deps {
    /// The memory settings (`MEMORY_*`), inference for embeddings (models,
    /// prices, the fleet), `AUDIT_TABLE` and the HTTP policy.
    pub async fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        // The fleet client is built while the signing keys are read.
        let (auth, inference) =
            Authenticator::from_env_while(env, sdk, || Inference::from_env(SERVICE, env, sdk))
                .await?;
        Self::with_parts(env, sdk, auth, inference)
    }

    pub fn with_authenticator(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        auth: Arc<Authenticator>,
    ) -> Result<Self, InitError> {
        Self::with_parts(env, sdk, auth, Inference::from_env(SERVICE, env, sdk)?)
    }

    fn with_parts(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        auth: Arc<Authenticator>,
        inference: Inference,
    ) -> Result<Self, InitError> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let inference = Arc::new(inference);
        let memory = MemoryService::new(
            MemorySettings::from_env(env)?,
            dynamodb.clone(),
            aws_sdk_sqs::Client::new(sdk),
            inference,
            AuditLog::new(dynamodb.clone(), env.required("AUDIT_TABLE")?),
        );
        Ok(Self {
            http: HttpPolicy::protected_from_env(SERVICE, env, auth, dynamodb)?,
            memory: Arc::new(memory),
        })
    }
}

pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    serve(&deps.http, &ROUTES, request, |api| route(deps, api)).await
}

/// `cursor` from the query string (IDs are plain ASCII: no decoding needed).
fn cursor(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut cursor = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("cursor", value)) => cursor = Some(value.to_owned()),
            _ => {
                return Err(ApiError::invalid("the only query parameter here is cursor"));
            }
        }
    }
    Ok(cursor)
}

async fn route(deps: &Deps, api: ApiRequest<MemoryRoute>) -> Result<Response<Body>, ApiError> {
    let owner = Owner::of(api.principal()?);
    let memory = &deps.memory;
    let id = || api.param("id").unwrap_or_default();
    match api.route {
        MemoryRoute::Store => {
            let new: NewMemory = api.json()?;
            let key = idempotency_key(&api.headers)?;
            let stored = memory.store(&owner, &new, key.as_deref(), &api.ctx).await?;
            let mut body = stored.memory.to_public_json();
            if let Some(merge) = stored.merged {
                body["merged"] = json!(match merge {
                    Merge::Exact => "exact",
                    Merge::Near => "near",
                });
            }
            let status = if stored.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut response = json_response(status, &body)?;
            let headers = response.headers_mut();
            if let Ok(location) = HeaderValue::from_str(&format!("/v1/memory/{}", stored.memory.id))
            {
                headers.insert(header::LOCATION, location);
            }
            if stored.replayed {
                headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        MemoryRoute::Search => {
            let query: RecallQuery = api.json()?;
            let recall = memory.recall(&owner, &query, &api.ctx).await?;
            json_response(StatusCode::OK, &recall.to_json())
        }
        MemoryRoute::Get => {
            let (found, history) = memory.get_with_history(&owner, id()).await?;
            let mut body = found.to_public_json();
            body["history"] = json!(history.versions);
            body["history_truncated"] = json!(history.truncated);
            json_response(StatusCode::OK, &body)
        }
        MemoryRoute::Patch => {
            let patch: MemoryPatch = api.json()?;
            let patched = memory.patch(&owner, id(), &patch, &api.ctx).await?;
            json_response(StatusCode::OK, &patched.to_public_json())
        }
        MemoryRoute::Delete => {
            memory.delete(&owner, id()).await?;
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Body::Empty)
                .map_err(|error| ApiError::internal(error.to_string()))
        }
        MemoryRoute::ForgetAll => {
            let forgotten = memory.forget_all(&owner, &api.ctx.correlation_id).await?;
            json_response(
                StatusCode::OK,
                &json!({"forgotten": forgotten, "object": "memory.forget_all"}),
            )
        }
        MemoryRoute::Export => {
            let page = memory
                .export(&owner, cursor(api.query.as_deref())?.as_deref())
                .await?;
            let data: Vec<serde_json::Value> = page
                .memories
                .iter()
                .map(|(found, history)| {
                    let mut item = found.to_public_json();
                    item["history"] = json!(history.versions);
                    item["history_truncated"] = json!(history.truncated);
                    item
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data, "next_cursor": page.next}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_is_the_only_query_parameter() {
        assert_eq!(cursor(None).unwrap(), None);
        assert_eq!(
            cursor(Some("cursor=mem_0123")).unwrap().as_deref(),
            Some("mem_0123")
        );
        assert!(cursor(Some("page=2")).is_err());
    }
}
