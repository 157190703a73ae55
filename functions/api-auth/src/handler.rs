//! `POST /v1/auth/token`: an API key for an access token (minutes) and a refresh
//! token (days). `POST /v1/auth/refresh`: a refresh token for a new pair; the
//! presented refresh token is spent, and presenting a spent one again revokes
//! the whole family (both the thief's and the owner's tokens stop working).
//! `POST /v1/auth/revoke`: revokes the family of a refresh token (RFC 7009:
//! answers 200 whether or not the token was valid, so it reveals nothing).
//!
//! Credentials travel in JSON bodies and are never logged; failures answer 401
//! with one generic sentence so a caller cannot probe which part was wrong.

use std::sync::Arc;

use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};
use sophia_shared::auth::store::{AuthStore, Rotation};
use sophia_shared::auth::tokens::{API_KEY_PREFIX, Opaque, REFRESH_PREFIX};
use sophia_shared::auth::{AuthSettings, KeySource};
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::guard::ratelimit::RateLimits;
use sophia_shared::http::policy::HttpPolicy;
use sophia_shared::http::request::{ApiRequest, json_response};
use sophia_shared::http::routing::Route;
use sophia_shared::http::serve;
use sophia_shared::ops::audit::{AuditLog, Event};
use sophia_shared::problem::ApiError;

pub const SERVICE: &str = "api-auth";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRoute {
    Token,
    Refresh,
    Revoke,
}

/// Public: these routes are how a caller gets a token in the first place.
pub const ROUTES: [Route<AuthRoute>; 3] = [
    Route::public(Method::POST, "/v1/auth/token", AuthRoute::Token),
    Route::public(Method::POST, "/v1/auth/refresh", AuthRoute::Refresh),
    Route::public(Method::POST, "/v1/auth/revoke", AuthRoute::Revoke),
];

pub struct Deps {
    pub http: HttpPolicy,
    pub settings: AuthSettings,
    pub keys: Arc<KeySource>,
    pub store: AuthStore,
    pub audit: AuditLog,
}

impl Deps {
    pub async fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, ConfigError> {
        let settings = AuthSettings::from_env(env)?;
        let keys = KeySource::load(
            aws_sdk_secretsmanager::Client::new(sdk),
            settings.signing_keys_secret.clone(),
        )
        .await
        .map_err(|problem| ConfigError::new("SIGNING_KEYS_SECRET", problem))?;
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        // Per-IP limits here slow down API-key guessing across every instance.
        let limits = Arc::new(RateLimits::from_env(env, dynamodb.clone())?);
        Ok(Self {
            http: HttpPolicy::from_env(SERVICE, env)?.with_rate_limits(limits),
            store: AuthStore::new(dynamodb.clone(), settings.table.clone()),
            audit: AuditLog::new(dynamodb, env.required("AUDIT_TABLE")?),
            settings,
            keys: Arc::new(keys),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    api_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: String,
}

/// RFC 6749 §5.1 token response.
#[derive(Debug, Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
    scope: String,
}

pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    serve(&deps.http, &ROUTES, request, |api| route(deps, api)).await
}

fn refused() -> ApiError {
    ApiError::Unauthorized {
        reason: "the credentials are invalid, expired or revoked".to_owned(),
        invalid_token: true,
    }
}

fn store_failed(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "auth store failed");
    ApiError::DependencyUnavailable {
        dependency: "authentication",
        retry_after_secs: 2,
    }
}

async fn route(deps: &Deps, api: ApiRequest<AuthRoute>) -> Result<Response<Body>, ApiError> {
    match api.route {
        AuthRoute::Token => {
            let request: TokenRequest = api.json()?;
            let key =
                Opaque::parse(API_KEY_PREFIX, request.api_key.trim(), 1).ok_or_else(refused)?;
            let record = deps
                .store
                .api_key(&key.ids[0])
                .await
                .map_err(store_failed)?
                .ok_or_else(refused)?;
            if record.revoked
                || !sophia_shared::auth::tokens::secret_matches(&key.secret, &record.hash)
            {
                tracing::info!(key_id = %record.id, "token request refused");
                return Err(refused());
            }
            let subject = format!("key:{}", record.id);
            let (family, refresh) = deps
                .store
                .create_family(
                    &record.tenant,
                    &subject,
                    &record.scopes,
                    deps.settings.policy.refresh_ttl_secs,
                )
                .await
                .map_err(store_failed)?;
            tracing::info!(key_id = %record.id, tenant = %record.tenant, family = %family.id, "access token issued");
            issue(
                deps,
                &family.tenant,
                &subject,
                &family.scopes,
                &family.id,
                &refresh,
            )
            .await
        }
        AuthRoute::Refresh => {
            let request: RefreshRequest = api.json()?;
            let presented = Opaque::parse(REFRESH_PREFIX, request.refresh_token.trim(), 2)
                .ok_or_else(refused)?;
            let policy = &deps.settings.policy;
            match deps
                .store
                .rotate(&presented, policy.refresh_ttl_secs, policy.access_ttl_secs)
                .await
                .map_err(store_failed)?
            {
                Rotation::Rotated(family, next) => {
                    // A revoked API key takes its refresh tokens with it.
                    if let Some(key_id) = family.subject.strip_prefix("key:") {
                        let key = deps.store.api_key(key_id).await.map_err(store_failed)?;
                        if key.is_none_or(|key| key.revoked) {
                            deps.store
                                .revoke_family(&family, policy.access_ttl_secs)
                                .await
                                .map_err(store_failed)?;
                            tracing::info!(family = %family.id, key_id, "refresh refused: the API key is revoked");
                            return Err(refused());
                        }
                    }
                    tracing::info!(family = %family.id, tenant = %family.tenant, "refresh token rotated");
                    issue(
                        deps,
                        &family.tenant,
                        &family.subject,
                        &family.scopes,
                        &family.id,
                        &next,
                    )
                    .await
                }
                Rotation::ReuseDetected(family) => {
                    tracing::warn!(family = %family.id, tenant = %family.tenant, "refresh token reuse: family revoked");
                    let details = serde_json::json!({ "reason": "refresh token reuse" });
                    audit_revocation(deps, &api, &family, details).await?;
                    Err(refused())
                }
                Rotation::Revoked | Rotation::Invalid => Err(refused()),
            }
        }
        AuthRoute::Revoke => {
            let request: RefreshRequest = api.json()?;
            if let Some(presented) = Opaque::parse(REFRESH_PREFIX, request.refresh_token.trim(), 2)
                && let Some(family) = deps
                    .store
                    .revoke_presented(&presented, deps.settings.policy.access_ttl_secs)
                    .await
                    .map_err(store_failed)?
            {
                tracing::info!(family = %family.id, tenant = %family.tenant, "token family revoked on request");
                let details = serde_json::json!({ "reason": "revoked by its holder" });
                audit_revocation(deps, &api, &family, details).await?;
            }
            json_response(StatusCode::OK, &serde_json::json!({ "revoked": true }))
        }
    }
}

/// Token family revocations are sensitive: they go to the tenant's audit log.
async fn audit_revocation(
    deps: &Deps,
    api: &ApiRequest<AuthRoute>,
    family: &sophia_shared::auth::store::FamilyRecord,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let event = Event {
        actor: &family.subject,
        action: "token_family.revoked",
        target: &format!("family:{}", family.id),
        correlation_id: &api.ctx.correlation_id,
        details,
    };
    deps.audit
        .append(&family.tenant, &event)
        .await
        .map(|_| ())
        .map_err(store_failed)
}

async fn issue(
    deps: &Deps,
    tenant: &str,
    subject: &str,
    scopes: &[String],
    family: &str,
    refresh: &Opaque,
) -> Result<Response<Body>, ApiError> {
    let policy = &deps.settings.policy;
    let ring = deps.keys.current().await;
    let access_token = policy
        .sign(&ring, &policy.claims(subject, tenant, scopes, family))
        .map_err(ApiError::internal)?;
    json_response(
        StatusCode::OK,
        &TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: policy.access_ttl_secs,
            refresh_token: refresh.render(REFRESH_PREFIX),
            scope: scopes.join(" "),
        },
    )
}
