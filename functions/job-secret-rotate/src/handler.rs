//! Secrets Manager's four-step rotation for the secrets Sophia owns.
//!
//! The `ClientRequestToken` is the new version's ID, so every step is
//! idempotent: a replayed step finds its work done and changes nothing.
//!
//! | step | signing key ring (`SIGNING_KEYS_SECRET`) | fleet token (`FLEET_TOKEN_SECRET`) |
//! |---|---|---|
//! | createSecret | new random key becomes current, the old current stays as previous → AWSPENDING | new random token → AWSPENDING |
//! | setSecret | nothing outside Secrets Manager holds the keys | every endpoint accepts new **and** current (fleet admin endpoint) |
//! | testSecret | a token signed with the new ring verifies, and so does one signed before | a real one-token completion with the new token on every endpoint |
//! | finishSecret | AWSCURRENT moves to the new version (the old becomes AWSPREVIOUS); audited | same |
//!
//! So tokens signed before the rotation keep verifying until they expire, new
//! tokens carry the new `kid`, and no fleet call fails in between: clients still
//! holding the old fleet token are accepted until the next rotation, and re-read
//! the secret on their first 401 after that.

use std::time::Duration;

use aws_sdk_secretsmanager::Client as Secrets;
use lambda_runtime::Diagnostic;
use serde::{Deserialize, Serialize};
use sophia_shared::auth::tokens::{KeyRing, TokenPolicy, random_hex};
pub use sophia_shared::aws::secrets::MAX_AGE_TAG;
use sophia_shared::aws::secrets::{SecretToken, ages, token_from_secret};
use sophia_shared::config::Env;
use sophia_shared::fleet::settings::{Endpoint, parse_endpoints};
use sophia_shared::ops::alerts::{Alerter, Sent};
use sophia_shared::ops::audit::{AuditLog, Event};
use sophia_shared::outbound::{OutboundClient, OutboundError, OutboundSettings};
use sophia_shared::startup::InitError;

const PENDING: &str = "AWSPENDING";
const CURRENT: &str = "AWSCURRENT";

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RotationEvent {
    #[serde(rename = "SecretId")]
    pub secret_id: String,
    #[serde(rename = "ClientRequestToken")]
    pub token: String,
    #[serde(rename = "Step")]
    pub step: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("{0}")]
    Invalid(String),
    #[error("secrets manager: {0}")]
    Secrets(String),
    #[error("the new secret failed its test: {0}")]
    TestFailed(String),
    #[error("audit: {0}")]
    Audit(String),
}

impl From<RotationError> for Diagnostic {
    fn from(error: RotationError) -> Self {
        let error_type = match error {
            RotationError::Invalid(_) => "NonRetryable.Invalid",
            RotationError::Secrets(_) | RotationError::Audit(_) => "Retryable.Storage",
            RotationError::TestFailed(_) => "Retryable.TestFailed",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SigningKeys,
    FleetToken,
}

pub struct Deps {
    pub alerts: Alerter,
    pub secrets: Secrets,
    pub signing_keys_secret: String,
    pub fleet_token_secret: String,
    pub fleet: Vec<Endpoint>,
    pub admin_path: String,
    pub outbound: OutboundClient,
    pub audit: AuditLog,
    pub model: String,
}

impl Deps {
    /// `SIGNING_KEYS_SECRET`, `FLEET_TOKEN_SECRET`, `FLEET_ENDPOINTS`,
    /// `AUDIT_TABLE`; `FLEET_TOKEN_ADMIN_PATH` (`/admin/tokens`), `PROBE_MODEL`.
    pub fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let outbound = OutboundClient::new(OutboundSettings::from_env(env)?)?;
        let webhook = env
            .optional("ALERT_WEBHOOK_SECRET")
            .map(|id| SecretToken::new(Secrets::new(sdk), id, Duration::from_secs(300)));
        Ok(Self {
            alerts: Alerter::new(
                aws_sdk_dynamodb::Client::new(sdk),
                env.required("STATE_TABLE")?,
                outbound.clone(),
                webhook,
                "job-secret-rotate",
            ),
            secrets: Secrets::new(sdk),
            signing_keys_secret: env.required("SIGNING_KEYS_SECRET")?,
            fleet_token_secret: env.required("FLEET_TOKEN_SECRET")?,
            fleet: parse_endpoints("FLEET_ENDPOINTS", &env.list("FLEET_ENDPOINTS"))?,
            admin_path: env
                .optional("FLEET_TOKEN_ADMIN_PATH")
                .unwrap_or_else(|| "/admin/tokens".to_owned()),
            outbound,
            audit: AuditLog::new(
                aws_sdk_dynamodb::Client::new(sdk),
                env.required("AUDIT_TABLE")?,
            ),
            model: env
                .optional("PROBE_MODEL")
                .or_else(|| env.list("CHAT_MODELS").into_iter().next())
                .unwrap_or_else(|| "sophia-small".to_owned()),
        })
    }
}

fn secrets_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    error: aws_sdk_secretsmanager::error::SdkError<E, R>,
) -> RotationError {
    RotationError::Secrets(aws_sdk_secretsmanager::error::DisplayErrorContext(error).to_string())
}

/// `arn:…:secret:name-AbCdEf` and `name` name the same secret.
fn same_secret(configured: &str, given: &str, arn: &str, name: &str) -> bool {
    [given, arn, name].contains(&configured)
}

/// What the function is invoked with: a rotation step from Secrets Manager, or
/// the daily age audit from EventBridge Scheduler (`{"audit": "secret-ages"}`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Invocation {
    Rotation(RotationEvent),
    Audit { audit: String },
}

pub async fn handle_invocation(
    deps: &Deps,
    invocation: Invocation,
) -> Result<serde_json::Value, RotationError> {
    match invocation {
        Invocation::Rotation(event) => handle(deps, event).await,
        Invocation::Audit { audit } if audit == "secret-ages" => audit_ages(deps).await,
        Invocation::Audit { audit } => {
            Err(RotationError::Invalid(format!("unknown audit {audit:?}")))
        }
    }
}

/// Every secret with a [`MAX_AGE_TAG`] ([`ages`]): its age since the last
/// rotation (or creation) against the policy; overdue ones fire an alert,
/// repaired ones resolve it.
async fn audit_ages(deps: &Deps) -> Result<serde_json::Value, RotationError> {
    let now = sophia_shared::clock::now_secs() as i64;
    let mut report = Vec::new();
    for age in ages(&deps.secrets, now)
        .await
        .map_err(RotationError::Secrets)?
    {
        let summary = format!(
            "secret {} is {} days old; policy allows {}",
            age.secret, age.age_days, age.max_age_days
        );
        let sent = deps
            .alerts
            .update(&format!("secret-age#{}", age.secret), age.overdue, &summary)
            .await
            .map_err(RotationError::Secrets)?;
        report.push(serde_json::json!({
            "secret": age.secret,
            "age_days": age.age_days,
            "max_age_days": age.max_age_days,
            "overdue": age.overdue,
            "alert": sent.map(|s| if s == Sent::Fired { "fired" } else { "resolved" }),
        }));
    }
    Ok(serde_json::json!({ "secrets": report }))
}

pub async fn handle(deps: &Deps, event: RotationEvent) -> Result<serde_json::Value, RotationError> {
    let described = deps
        .secrets
        .describe_secret()
        .secret_id(&event.secret_id)
        .send()
        .await
        .map_err(secrets_error)?;
    let (arn, name) = (
        described.arn().unwrap_or_default(),
        described.name().unwrap_or_default(),
    );
    let kind = if same_secret(&deps.signing_keys_secret, &event.secret_id, arn, name) {
        Kind::SigningKeys
    } else if same_secret(&deps.fleet_token_secret, &event.secret_id, arn, name) {
        Kind::FleetToken
    } else {
        return Err(RotationError::Invalid(format!(
            "{} is not a secret this function rotates",
            event.secret_id
        )));
    };
    let stages = described
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default();
    let current_version = stages
        .iter()
        .find(|(_, labels)| labels.iter().any(|l| l == CURRENT))
        .map(|(id, _)| id.clone())
        .ok_or_else(|| RotationError::Invalid("the secret has no AWSCURRENT version".to_owned()))?;
    let token_stages = stages.get(&event.token).cloned();
    if event.step != "createSecret" && token_stages.is_none() {
        return Err(RotationError::Invalid(format!(
            "version {} does not exist; run createSecret first",
            event.token
        )));
    }
    let done = serde_json::json!({ "step": event.step, "secret": name, "version": event.token });
    // A rotation that already finished (its version is AWSCURRENT): every replayed
    // step is a no-op, as in AWS's rotation templates.
    if token_stages
        .as_ref()
        .is_some_and(|labels| labels.iter().any(|label| label == CURRENT))
    {
        tracing::info!(secret = name, version = %event.token, step = %event.step, "version is already current; nothing to do");
        return Ok(done);
    }
    match event.step.as_str() {
        "createSecret" => {
            if token_stages.is_some() {
                return Ok(done);
            }
            let current = value(deps, &event.secret_id, CURRENT, None).await?;
            let next = match kind {
                Kind::SigningKeys => {
                    let ring = KeyRing::from_json(&current).map_err(RotationError::Invalid)?;
                    let kid: String = event
                        .token
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(12)
                        .collect();
                    ring.rotated(&format!("k{kid}"))
                        .map_err(RotationError::Invalid)?
                        .to_json()
                }
                Kind::FleetToken => random_hex(24),
            };
            deps.secrets
                .put_secret_value()
                .secret_id(&event.secret_id)
                .client_request_token(&event.token)
                .secret_string(next)
                .version_stages(PENDING)
                .send()
                .await
                .map_err(secrets_error)?;
            tracing::info!(secret = name, version = %event.token, "pending version created");
        }
        "setSecret" => {
            if kind == Kind::FleetToken {
                let pending = fleet_token(
                    &value(deps, &event.secret_id, PENDING, Some(&event.token)).await?,
                )?;
                let current = fleet_token(&value(deps, &event.secret_id, CURRENT, None).await?)?;
                let body = serde_json::json!({ "tokens": [pending, current] });
                for endpoint in &deps.fleet {
                    // Accepting both is the target state; a replay finds it set.
                    let url = format!("{}{}", endpoint.base_url, deps.admin_path);
                    let mut outcome = deps
                        .outbound
                        .send_json_ok(
                            http::Method::PUT,
                            &url,
                            &body,
                            Some(&current),
                            Duration::from_secs(5),
                        )
                        .await;
                    if matches!(outcome, Err(OutboundError::Status(status)) if status.as_u16() == 401)
                    {
                        outcome = deps
                            .outbound
                            .send_json_ok(
                                http::Method::PUT,
                                &url,
                                &body,
                                Some(&pending),
                                Duration::from_secs(5),
                            )
                            .await;
                    }
                    outcome.map_err(|e| {
                        RotationError::TestFailed(format!(
                            "{} did not take the new token: {e}",
                            endpoint.name
                        ))
                    })?;
                }
            }
        }
        "testSecret" => {
            let pending = value(deps, &event.secret_id, PENDING, Some(&event.token)).await?;
            match kind {
                Kind::SigningKeys => test_ring(
                    &pending,
                    &value(deps, &event.secret_id, CURRENT, None).await?,
                )?,
                Kind::FleetToken => {
                    let token = fleet_token(&pending)?;
                    let body = serde_json::json!({ "model": deps.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1 });
                    for endpoint in &deps.fleet {
                        let url = format!("{}/v1/chat/completions", endpoint.base_url);
                        deps.outbound
                            .post_json_ok(&url, &body, Some(&token), Duration::from_secs(10))
                            .await
                            .map_err(|e| {
                                RotationError::TestFailed(format!(
                                    "{} refused the new token: {e}",
                                    endpoint.name
                                ))
                            })?;
                    }
                }
            }
        }
        "finishSecret" => {
            if current_version == event.token {
                return Ok(done);
            }
            deps.secrets
                .update_secret_version_stage()
                .secret_id(&event.secret_id)
                .version_stage(CURRENT)
                .move_to_version_id(&event.token)
                .remove_from_version_id(&current_version)
                .send()
                .await
                .map_err(secrets_error)?;
            if token_stages.is_some_and(|labels| labels.iter().any(|l| l == PENDING)) {
                deps.secrets
                    .update_secret_version_stage()
                    .secret_id(&event.secret_id)
                    .version_stage(PENDING)
                    .remove_from_version_id(&event.token)
                    .send()
                    .await
                    .map_err(secrets_error)?;
            }
            let audit = Event {
                actor: "job-secret-rotate",
                action: "secret.rotated",
                target: &format!("secret:{name}"),
                correlation_id: &event.token,
                details: serde_json::json!({ "from_version": current_version, "to_version": event.token }),
            };
            deps.audit
                .append("platform", &audit)
                .await
                .map_err(|e| RotationError::Audit(e.to_string()))?;
            tracing::info!(secret = name, version = %event.token, "rotation finished");
        }
        other => {
            return Err(RotationError::Invalid(format!(
                "unknown rotation step {other:?}"
            )));
        }
    }
    Ok(done)
}

async fn value(
    deps: &Deps,
    secret_id: &str,
    stage: &str,
    version: Option<&str>,
) -> Result<String, RotationError> {
    let mut request = deps
        .secrets
        .get_secret_value()
        .secret_id(secret_id)
        .version_stage(stage);
    if let Some(version) = version {
        request = request.version_id(version);
    }
    let output = request.send().await.map_err(secrets_error)?;
    output
        .secret_string()
        .map(str::to_owned)
        .ok_or_else(|| RotationError::Invalid(format!("the {stage} version holds no string")))
}

fn fleet_token(raw: &str) -> Result<String, RotationError> {
    token_from_secret(raw)
        .ok_or_else(|| RotationError::Invalid("the fleet token secret holds no token".to_owned()))
}

/// The new ring must sign tokens it verifies, and verify tokens the current
/// ring signed (so no live token breaks).
fn test_ring(pending: &str, current: &str) -> Result<(), RotationError> {
    let policy = TokenPolicy {
        issuer: "rotation-test".to_owned(),
        audience: "rotation-test".to_owned(),
        access_ttl_secs: 60,
        refresh_ttl_secs: 60,
        leeway_secs: 0,
    };
    let pending = KeyRing::from_json(pending).map_err(RotationError::TestFailed)?;
    let current = KeyRing::from_json(current).map_err(RotationError::TestFailed)?;
    for (signer, name) in [(&pending, "the new key"), (&current, "the current key")] {
        let token = policy
            .sign(signer, &policy.claims("rotation", "platform", &[], "test"))
            .map_err(RotationError::TestFailed)?;
        policy.verify(&pending, &token).map_err(|e| {
            RotationError::TestFailed(format!("a token signed with {name} does not verify: {e}"))
        })?;
    }
    Ok(())
}
