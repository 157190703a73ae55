//! CodeDeploy's `AfterAllowTraffic` hook: once a function's alias carries all
//! traffic, the smoke journey ([`sophia_shared::ops::smoke`]) walks the live
//! API as a client would: token, models, chat (one piece and streamed),
//! embeddings, a job to done, a memory stored, recalled (REST and MCP) and
//! deleted, the tenant's dashboard, the token revoked and refused. A failed step fails the hook, and
//! CodeDeploy rolls the deployment back.
//!
//! The journey needs an API key: the hook creates one for its own tenant
//! (`SMOKE_TENANT`, `smoke`) with the scopes the journey uses, straight in
//! the auth table as api-admin would, and revokes it when the journey ends,
//! whatever its outcome. No key is kept between deployments, so there is no
//! secret to store or rotate. What a run leaves: one finished job and the
//! usage it billed to that tenant.
//!
//! The verdict is reported exactly once ([`sophia_shared::ops::deploy_hook`]);
//! the journey gets the invocation's time minus `HOOK_REPORT_MARGIN_MS`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sophia_shared::auth::store::AuthStore;
use sophia_shared::auth::{SCOPE_ADMIN, SCOPE_CHAT, SCOPE_JOBS, SCOPE_MEMORY, SCOPE_TOOLS};
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::ops::deploy_hook::{
    HookError, HookEvent, codedeploy_client, report, report_margin, verdict, work_until,
};
use sophia_shared::ops::smoke::{self, Journey};
use sophia_shared::outbound::{OutboundClient, OutboundSettings};
use sophia_shared::startup::InitError;

pub const SERVICE: &str = "deploy-post-traffic";

/// What the journey's key may do: exactly what the journey uses (`admin`: its
/// own tenant's dashboard; the key is revoked when the journey ends).
const SCOPES: [&str; 5] = [
    SCOPE_CHAT,
    SCOPE_JOBS,
    SCOPE_MEMORY,
    SCOPE_TOOLS,
    SCOPE_ADMIN,
];

pub struct Deps {
    pub codedeploy: aws_sdk_codedeploy::Client,
    pub auth: AuthStore,
    pub http: OutboundClient,
    /// The live API (the stack's `ApiUrl`).
    pub base: String,
    pub tenant: String,
    pub chat_model: String,
    pub embedding_model: String,
    /// How long a revoked token may still be accepted (the verifiers' cache).
    pub revocation_within: Duration,
    /// Kept back from the invocation's time for the report.
    pub report_margin: Duration,
}

impl Deps {
    pub fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let first = |name: &str| -> Result<String, ConfigError> {
            env.list(name)
                .into_iter()
                .next()
                .ok_or_else(|| ConfigError::new(name, "lists no model"))
        };
        let http = OutboundClient::new(OutboundSettings::from_env(env)?)?;
        Ok(Self {
            codedeploy: codedeploy_client(env, sdk),
            auth: AuthStore::new(
                aws_sdk_dynamodb::Client::new(sdk),
                env.required("AUTH_TABLE")?,
            ),
            http,
            base: env.required("SMOKE_BASE_URL")?,
            tenant: env
                .optional("SMOKE_TENANT")
                .unwrap_or_else(|| "smoke".to_owned()),
            chat_model: first("CHAT_MODELS")?,
            embedding_model: first("EMBEDDING_MODELS")?,
            revocation_within: Duration::from_secs(
                env.parse_or("SMOKE_REVOCATION_WITHIN_SECS", 15u64)?,
            ),
            report_margin: report_margin(env)?,
        })
    }
}

/// Walks the journey, then reports the verdict; `deadline` is the invocation's.
pub async fn handle(deps: &Deps, event: Value, deadline: Instant) -> Result<Value, HookError> {
    let event = HookEvent::parse(event)?;
    let budget = work_until(deadline, deps.report_margin).saturating_duration_since(Instant::now());
    tracing::info!(deployment = %event.deployment_id, base = %deps.base, budget_ms = %budget.as_millis(), "post-traffic smoke journey starting");
    let outcome = journey(deps, &event.deployment_id, budget).await;
    let status = verdict(outcome.is_ok());
    report(&deps.codedeploy, &event, status.clone(), deadline).await?;
    let (steps, failure) = match &outcome {
        Ok(steps) => (*steps, None),
        Err(failure) => (0, Some(failure.as_str())),
    };
    tracing::info!(deployment = %event.deployment_id, status = %status.as_str(), steps, failure, "verdict reported");
    Ok(json!({
        "deployment_id": event.deployment_id,
        "status": status.as_str(),
        "steps": steps,
        "failure": failure,
    }))
}

/// The journey with a key of its own; the number of steps that passed, or why it failed.
async fn journey(deps: &Deps, deployment: &str, budget: Duration) -> Result<usize, String> {
    if budget.is_zero() {
        return Err("no time left for the journey".to_owned());
    }
    let scopes: Vec<String> = SCOPES.iter().map(|s| (*s).to_owned()).collect();
    let (record, key) = deps
        .auth
        .create_api_key(
            &deps.tenant,
            &scopes,
            &format!("post-traffic smoke of {deployment}"),
        )
        .await
        .map_err(|error| format!("creating the journey's API key failed: {error}"))?;
    let journey = Journey {
        base: deps.base.clone(),
        api_key: key,
        chat_model: deps.chat_model.clone(),
        embedding_model: deps.embedding_model.clone(),
        budget,
        revocation_within: deps.revocation_within,
    };
    let outcome = smoke::run(&deps.http, &journey, |passed| {
        tracing::info!(step = passed.step, millis = %passed.took.as_millis(), detail = %passed.detail, "smoke step passed");
    })
    .await;
    // The key lives for this run only, whatever its outcome.
    if let Err(error) = deps.auth.revoke_api_key(&deps.tenant, &record.id).await {
        tracing::error!(%error, key_id = %record.id, "revoking the journey's API key failed");
    }
    match outcome {
        Ok(passed) => Ok(passed.len()),
        Err(failed) => {
            tracing::error!(step = failed.step, reason = %failed.reason, "smoke step failed");
            Err(failed.to_string())
        }
    }
}
