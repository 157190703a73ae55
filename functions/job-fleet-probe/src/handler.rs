//! Probes every fleet endpoint — `GET /health`, then a one-token completion with
//! the fleet token — concurrently, each under `PROBE_TIMEOUT_MS`, and writes each
//! endpoint's record to the shared health the fleet client reads.
//!
//! Hysteresis: the published status flips only after `PROBE_FLIP_AFTER`
//! (default 2) consecutive results disagree with it, so one lost probe does not
//! flap an endpoint. Idempotent: the schedule passes its scheduled time as
//! `run`; a retried run whose results were already counted changes nothing.
//!
//! Failures to write health are returned to Lambda as `Retryable` (the schedule
//! retries, then its dead-letter queue keeps the event); bad input is `Invalid`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lambda_runtime::Diagnostic;
use serde::{Deserialize, Serialize};
use sophia_shared::aws::secrets::SecretToken;
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::fleet::health::{EndpointStatus, HealthRecord, SharedHealth, next_record};
use sophia_shared::fleet::settings::{Endpoint, parse_endpoints};
use sophia_shared::observability::MetricSet;
use sophia_shared::outbound::{OutboundClient, OutboundSettings};
use sophia_shared::startup::InitError;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the event is not a probe event: {0}")]
    Invalid(String),
    #[error("shared health could not be read or written: {0}")]
    Storage(String),
}

impl From<ProbeError> for Diagnostic {
    fn from(error: ProbeError) -> Self {
        let error_type = match error {
            ProbeError::Invalid(_) => "NonRetryable.Invalid",
            ProbeError::Storage(_) => "Retryable.Storage",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

pub struct Deps {
    pub endpoints: Vec<Endpoint>,
    pub health: SharedHealth,
    pub outbound: OutboundClient,
    pub token: Option<Arc<SecretToken>>,
    pub timeout: Duration,
    pub flip_after: u32,
    pub model: String,
}

impl Deps {
    /// `FLEET_ENDPOINTS`, `STATE_TABLE`; `FLEET_TOKEN_SECRET` (optional),
    /// `PROBE_TIMEOUT_MS` (2000), `PROBE_FLIP_AFTER` (2), `PROBE_MODEL` (the first
    /// of `CHAT_MODELS`, else `sophia-small`).
    pub fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let endpoints = parse_endpoints("FLEET_ENDPOINTS", &env.list("FLEET_ENDPOINTS"))?;
        if endpoints.is_empty() {
            return Err(ConfigError::new("FLEET_ENDPOINTS", "is required").into());
        }
        let flip_after: u32 = env.parse_or("PROBE_FLIP_AFTER", 2)?;
        if !(1..=10).contains(&flip_after) {
            return Err(ConfigError::new("PROBE_FLIP_AFTER", "must be between 1 and 10").into());
        }
        let token = env.optional("FLEET_TOKEN_SECRET").map(|id| {
            Arc::new(SecretToken::new(
                aws_sdk_secretsmanager::Client::new(sdk),
                id,
                Duration::from_secs(60),
            ))
        });
        Ok(Self {
            endpoints,
            health: SharedHealth::new(
                aws_sdk_dynamodb::Client::new(sdk),
                env.required("STATE_TABLE")?,
                Duration::ZERO,
            ),
            outbound: OutboundClient::new(OutboundSettings::from_env(env)?)?,
            token,
            timeout: env.millis_or("PROBE_TIMEOUT_MS", 2_000, 30_000)?,
            flip_after,
            model: env
                .optional("PROBE_MODEL")
                .or_else(|| env.list("CHAT_MODELS").into_iter().next())
                .unwrap_or_else(|| "sophia-small".to_owned()),
        })
    }
}

/// The scheduler's input: `{"run": "<aws.scheduler.scheduled-time>"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeEvent {
    #[serde(default)]
    run: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub run: String,
    pub endpoints: Vec<EndpointReport>,
}

#[derive(Debug, Serialize)]
pub struct EndpointReport {
    pub name: String,
    pub probe_ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<&'static str>,
    pub latency_ms: f64,
    pub status: &'static str,
    pub streak: u32,
    /// A retried run: the result was already counted.
    pub already_counted: bool,
}

pub async fn handle(deps: &Deps, event: serde_json::Value) -> Result<ProbeReport, ProbeError> {
    let event: ProbeEvent =
        serde_json::from_value(event).map_err(|e| ProbeError::Invalid(e.to_string()))?;
    // Without a scheduled time (a manual run) every run counts.
    let run = event
        .run
        .unwrap_or_else(|| format!("manual-{}", sophia_shared::auth::tokens::random_hex(6)));
    let previous = deps.health.read_all().await.map_err(ProbeError::Storage)?;
    let probes =
        futures_util::future::join_all(deps.endpoints.iter().map(|endpoint| probe(deps, endpoint)))
            .await;
    let mut reports = Vec::new();
    for (endpoint, (outcome, latency)) in deps.endpoints.iter().zip(probes) {
        let before = previous.get(&endpoint.name);
        let already_counted = before.is_some_and(|record| record.run == run);
        let record: HealthRecord = if already_counted {
            before
                .cloned()
                .ok_or_else(|| ProbeError::Storage("record vanished".to_owned()))?
        } else {
            let latency_ms = outcome.is_ok().then_some(latency);
            let record = next_record(
                before,
                &endpoint.name,
                outcome.is_ok(),
                latency_ms,
                deps.flip_after,
                &run,
            );
            deps.health
                .write(&record)
                .await
                .map_err(ProbeError::Storage)?;
            record
        };
        if before.is_some_and(|b| b.status != record.status) {
            tracing::warn!(endpoint = %endpoint.name, status = record.status.as_str(), "fleet endpoint changed state");
        }
        MetricSet::new("Sophia")
            .dimension("Endpoint", endpoint.name.as_str())
            .count(
                "FleetEndpointUp",
                f64::from(u8::from(record.status == EndpointStatus::Up)),
            )
            .millis("FleetProbeLatency", latency)
            .emit();
        reports.push(EndpointReport {
            name: endpoint.name.clone(),
            probe_ok: outcome.is_ok(),
            failure: outcome.err(),
            latency_ms: (latency * 100.0).round() / 100.0,
            status: record.status.as_str(),
            streak: record.streak,
            already_counted,
        });
    }
    tracing::info!(run = %run, endpoints = reports.len(), "fleet probed");
    Ok(ProbeReport {
        run,
        endpoints: reports,
    })
}

/// `/health`, then a one-token completion: a server that answers health but
/// cannot generate is not up.
async fn probe(deps: &Deps, endpoint: &Endpoint) -> (Result<(), &'static str>, f64) {
    let started = Instant::now();
    let outcome = async {
        deps.outbound
            .get_ok(&format!("{}/health", endpoint.base_url), deps.timeout, None)
            .await
            .map_err(|e| e.kind())?;
        let token = match &deps.token {
            None => None,
            Some(secret) => Some(secret.get().await.map_err(|_| "credentials")?),
        };
        let body = serde_json::json!({
            "model": deps.model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        });
        let left = deps.timeout.saturating_sub(started.elapsed());
        deps.outbound
            .post_json_ok(
                &format!("{}/v1/chat/completions", endpoint.base_url),
                &body,
                token.as_deref(),
                left,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.kind())
    }
    .await;
    (outcome, started.elapsed().as_secs_f64() * 1000.0)
}
