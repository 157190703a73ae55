//! The resilient client for the inference fleet and the fallback provider.
//!
//! One call reads, from the outside in (as tower layers would):
//!
//! 1. overall bulkhead: beyond `total_concurrency` calls in flight, shed at once
//!    (callers take the slot first, [`FleetClient::admit`]; the HTTP pipeline does
//!    it before any DynamoDB round trip, and a stream holds it until it ends);
//! 2. overall deadline: the invocation's deadline minus a margin; nothing outlives it;
//! 3. ordered failover over the endpoints (fleet in priority order, then the
//!    fallback provider), in passes, until `max_attempts` attempts were made;
//!    an endpoint is skipped without an attempt when the shared health (written
//!    by the probe job) says it is down, while it is cooling down after a 429's
//!    `Retry-After`, when its breaker is open, or when its own bulkhead is full;
//! 4. every attempt after the first draws on the retry budget (tower's
//!    `TpsBudget`: a share of recent requests plus a small floor), so an outage
//!    cannot multiply the load; retrying an endpoint already tried in this call
//!    first sleeps an exponential backoff with full jitter, while failing over to
//!    another endpoint does not wait;
//! 5. each attempt runs under its own timeout (`attempt_timeout`, or for streams
//!    `ttft_timeout` until the first chunk), capped by the time left;
//! 6. a 401 re-reads the credential once and retries the same endpoint, so a
//!    rotated token never fails a request.
//!
//! Only connect errors, timeouts, broken connections, 429 and 502/503/504 are
//! retried. Other 4xx answers are the request's fault and come back as
//! `Rejected`; 500 and other 5xx come back as `Upstream`. When every endpoint
//! failed, the error names each endpoint's failure.

pub mod breaker;
pub mod credentials;
pub mod health;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::StatusCode;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::retry::budget::{Budget, TpsBudget};

use crate::bulkhead::{Bulkhead, BulkheadPermit};

use crate::config::{ConfigError, Endpoint, Env, parse_endpoints};
use crate::error::ApiError;
use crate::observability::{CORRELATION_HEADER, MetricSet, RequestContext, TRACEPARENT_HEADER};
use crate::outbound::OutboundClient;
use breaker::{Admission, Breaker, BreakerSettings, BreakerState, Transition};
use credentials::SecretToken;
use health::SharedHealth;

const METRICS_NAMESPACE: &str = "Sophia";
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const MAX_ERROR_MESSAGE: usize = 300;
/// What a shed caller is told is unavailable.
const OVERLOADED: &str = "the inference fleet (overloaded)";

/// Tuning of the client; every value can be set from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    pub attempt_timeout: Duration,
    pub ttft_timeout: Duration,
    pub idle_timeout: Duration,
    pub deadline_margin: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub endpoint_concurrency: usize,
    pub total_concurrency: usize,
    pub retry_budget_percent: f32,
    pub retry_budget_min_per_sec: u32,
    pub health_cache: Duration,
    pub breaker: BreakerSettings,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(20),
            ttft_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            deadline_margin: Duration::from_millis(300),
            max_attempts: 3,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(1),
            endpoint_concurrency: 32,
            total_concurrency: 64,
            retry_budget_percent: 0.1,
            retry_budget_min_per_sec: 1,
            health_cache: Duration::from_secs(5),
            breaker: BreakerSettings::default(),
        }
    }
}

impl FleetSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let ms = |d: Duration| d.as_millis() as u64;
        let settings = Self {
            attempt_timeout: env.millis_or(
                "FLEET_ATTEMPT_TIMEOUT_MS",
                ms(defaults.attempt_timeout),
                900_000,
            )?,
            ttft_timeout: env.millis_or(
                "FLEET_TTFT_TIMEOUT_MS",
                ms(defaults.ttft_timeout),
                120_000,
            )?,
            idle_timeout: env.millis_or(
                "FLEET_IDLE_TIMEOUT_MS",
                ms(defaults.idle_timeout),
                300_000,
            )?,
            deadline_margin: env.millis_or(
                "FLEET_DEADLINE_MARGIN_MS",
                ms(defaults.deadline_margin),
                10_000,
            )?,
            max_attempts: env.parse_or("FLEET_MAX_ATTEMPTS", defaults.max_attempts)?,
            backoff_base: env.millis_or(
                "FLEET_BACKOFF_BASE_MS",
                ms(defaults.backoff_base),
                10_000,
            )?,
            backoff_cap: env.millis_or("FLEET_BACKOFF_CAP_MS", ms(defaults.backoff_cap), 60_000)?,
            endpoint_concurrency: env
                .parse_or("FLEET_ENDPOINT_CONCURRENCY", defaults.endpoint_concurrency)?,
            total_concurrency: env
                .parse_or("FLEET_TOTAL_CONCURRENCY", defaults.total_concurrency)?,
            retry_budget_percent: env
                .parse_or("FLEET_RETRY_BUDGET_PERCENT", defaults.retry_budget_percent)?,
            retry_budget_min_per_sec: env.parse_or(
                "FLEET_RETRY_BUDGET_MIN_PER_SEC",
                defaults.retry_budget_min_per_sec,
            )?,
            health_cache: env.millis_or(
                "FLEET_HEALTH_CACHE_MS",
                ms(defaults.health_cache),
                600_000,
            )?,
            breaker: BreakerSettings {
                consecutive_failures: env.parse_or(
                    "BREAKER_CONSECUTIVE_FAILURES",
                    defaults.breaker.consecutive_failures,
                )?,
                failure_rate: env
                    .parse_or("BREAKER_FAILURE_RATE", defaults.breaker.failure_rate)?,
                window: env.parse_or("BREAKER_WINDOW", defaults.breaker.window)?,
                min_calls: env.parse_or("BREAKER_MIN_CALLS", defaults.breaker.min_calls)?,
                cool_down: env.millis_or(
                    "BREAKER_COOL_DOWN_MS",
                    ms(defaults.breaker.cool_down),
                    600_000,
                )?,
                half_open_probes: env.parse_or(
                    "BREAKER_HALF_OPEN_PROBES",
                    defaults.breaker.half_open_probes,
                )?,
            },
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Bounds that would otherwise panic (TpsBudget) or make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&str, bool, &str); 7] = [
            (
                "FLEET_MAX_ATTEMPTS",
                (1..=10).contains(&self.max_attempts),
                "must be between 1 and 10",
            ),
            (
                "FLEET_ENDPOINT_CONCURRENCY",
                self.endpoint_concurrency >= 1,
                "must be at least 1",
            ),
            (
                "FLEET_TOTAL_CONCURRENCY",
                self.total_concurrency >= 1,
                "must be at least 1",
            ),
            (
                "FLEET_RETRY_BUDGET_PERCENT",
                (0.0..=10.0).contains(&self.retry_budget_percent),
                "must be between 0 and 10 (a share: 0.1 is 10 %)",
            ),
            (
                "FLEET_RETRY_BUDGET_MIN_PER_SEC",
                self.retry_budget_min_per_sec <= 1000,
                "must be at most 1000",
            ),
            (
                "BREAKER_FAILURE_RATE",
                self.breaker.failure_rate > 0.0 && self.breaker.failure_rate <= 1.0,
                "must be in (0, 1]",
            ),
            (
                "BREAKER_HALF_OPEN_PROBES",
                self.breaker.half_open_probes >= 1
                    && self.breaker.consecutive_failures >= 1
                    && self.breaker.window >= 1,
                "breaker counts must be at least 1",
            ),
        ];
        for (variable, ok, problem) in checks {
            if !ok {
                return Err(ConfigError::new(variable, problem));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    Fleet,
    Fallback,
}

/// One place the client can send a request to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub endpoint: Endpoint,
    pub kind: UpstreamKind,
    /// Model name to send instead of the caller's (the fallback names models differently).
    pub model_override: Option<String>,
    pub credentials: Option<Arc<SecretToken>>,
}

/// Why one endpoint did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    HealthDown,
    Cooling,
    BreakerOpen,
    Busy,
    Credentials,
    Timeout,
    FirstTokenTimeout,
    Unreachable,
    Transport,
    Status(u16),
    Unauthorized,
    BudgetExhausted,
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HealthDown => f.write_str("reported down by the probe"),
            Self::Cooling => f.write_str("cooling down after 429"),
            Self::BreakerOpen => f.write_str("circuit open"),
            Self::Busy => f.write_str("bulkhead full"),
            Self::Credentials => f.write_str("credentials unavailable"),
            Self::Timeout => f.write_str("timed out"),
            Self::FirstTokenTimeout => f.write_str("no first token in time"),
            Self::Unreachable => f.write_str("unreachable"),
            Self::Transport => f.write_str("connection broke"),
            Self::Status(status) => write!(f, "status {status}"),
            Self::Unauthorized => f.write_str("rejected our credentials"),
            Self::BudgetExhausted => f.write_str("retry budget exhausted"),
        }
    }
}

impl FailureReason {
    fn metric_word(&self) -> &'static str {
        match self {
            Self::HealthDown => "health_down",
            Self::Cooling => "cooling",
            Self::BreakerOpen => "breaker_open",
            Self::Busy => "busy",
            Self::Credentials => "credentials",
            Self::Timeout => "timeout",
            Self::FirstTokenTimeout => "ttft_timeout",
            Self::Unreachable => "unreachable",
            Self::Transport => "transport",
            Self::Status(_) => "bad_status",
            Self::Unauthorized => "unauthorized",
            Self::BudgetExhausted => "budget",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    pub endpoint: String,
    pub reason: FailureReason,
}

fn describe(failures: &[AttemptFailure]) -> String {
    if failures.is_empty() {
        return "no endpoint configured".to_owned();
    }
    failures
        .iter()
        .map(|f| format!("{}: {}", f.endpoint, f.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("too many calls in flight; shed")]
    Overloaded,
    #[error("{endpoint} rejected the request with status {status}: {message}")]
    Rejected {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("{endpoint} failed with status {status}")]
    Upstream { endpoint: String, status: u16 },
    #[error("every endpoint failed: {}", describe(failures))]
    Unavailable {
        failures: Vec<AttemptFailure>,
        retry_after: Duration,
    },
    #[error("the deadline passed: {}", describe(failures))]
    DeadlineExceeded { failures: Vec<AttemptFailure> },
}

impl FleetError {
    /// Every failure mapped to the HTTP layer; the fleet's own words stay in logs
    /// except a rejected request's message, which is about the caller's input.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            Self::Overloaded => ApiError::DependencyUnavailable {
                dependency: OVERLOADED,
                retry_after_secs: 1,
            },
            Self::Rejected {
                status, message, ..
            } => ApiError::UpstreamRejected {
                status: *status,
                message: message.clone(),
            },
            Self::Upstream { .. } => ApiError::BadGateway,
            Self::Unavailable { retry_after, .. } => ApiError::DependencyUnavailable {
                dependency: "the inference fleet",
                retry_after_secs: retry_after.as_secs().clamp(1, 60) as u32,
            },
            Self::DeadlineExceeded { .. } => ApiError::DeadlineExceeded,
        }
    }
}

/// Outcome of one attempt, as the loop needs it.
enum AttemptError {
    Retryable {
        reason: FailureReason,
        retry_after: Option<Duration>,
    },
    Unauthorized,
    Fatal(FleetError),
}

struct EndpointState {
    upstream: Upstream,
    breaker: Mutex<Breaker>,
    bulkhead: Arc<Semaphore>,
    cooling_until: Mutex<Option<Instant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (plain
    // counters), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A successful non-streamed answer.
#[derive(Debug, Clone)]
pub struct FleetReply {
    pub endpoint: String,
    pub kind: UpstreamKind,
    pub body: Value,
    pub attempts: u32,
}

/// What the attempt loop returns on success: the answer, who gave it, and the
/// slots it holds (a stream keeps them until it ends).
struct Won<T> {
    value: T,
    endpoint: String,
    kind: UpstreamKind,
    attempts: u32,
    permit: BulkheadPermit,
    slot: OwnedSemaphorePermit,
}

/// Snapshot of one endpoint for the dashboard and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSnapshot {
    pub name: String,
    pub breaker: BreakerState,
    pub in_flight: usize,
}

pub struct FleetClient {
    http: reqwest::Client,
    endpoints: Vec<Arc<EndpointState>>,
    settings: FleetSettings,
    budget: TpsBudget,
    total: Arc<Bulkhead>,
    health: Option<Arc<SharedHealth>>,
}

impl std::fmt::Debug for FleetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetClient")
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(|e| &e.upstream.endpoint.name)
                    .collect::<Vec<_>>(),
            )
            .field("settings", &self.settings)
            .finish()
    }
}

impl FleetClient {
    pub fn new(
        outbound: &OutboundClient,
        upstreams: Vec<Upstream>,
        settings: FleetSettings,
        health: Option<Arc<SharedHealth>>,
    ) -> Result<Self, ConfigError> {
        settings.validate()?;
        if upstreams.is_empty() {
            return Err(ConfigError::new(
                "FLEET_ENDPOINTS",
                "at least one endpoint is required",
            ));
        }
        let endpoints = upstreams
            .into_iter()
            .map(|upstream| {
                Arc::new(EndpointState {
                    upstream,
                    breaker: Mutex::new(Breaker::new(settings.breaker)),
                    bulkhead: Arc::new(Semaphore::new(settings.endpoint_concurrency)),
                    cooling_until: Mutex::new(None),
                })
            })
            .collect();
        Ok(Self {
            http: outbound.http().clone(),
            endpoints,
            budget: TpsBudget::new(
                Duration::from_secs(10),
                settings.retry_budget_min_per_sec,
                settings.retry_budget_percent,
            ),
            total: Arc::new(Bulkhead::new(OVERLOADED, settings.total_concurrency)),
            settings,
            health,
        })
    }

    /// The client as the functions build it: endpoints and settings from the
    /// environment (`FLEET_*`, `FALLBACK_*`, `BREAKER_*`, `OUTBOUND_*`), credentials
    /// from Secrets Manager, and the shared health in `STATE_TABLE`.
    pub fn from_env(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, crate::config::InitError> {
        let settings = FleetSettings::from_env(env)?;
        let health = Arc::new(SharedHealth::new(
            aws_sdk_dynamodb::Client::new(sdk),
            env.required("STATE_TABLE")?,
            settings.health_cache,
        ));
        let outbound = OutboundClient::new(crate::outbound::OutboundSettings::from_env(env)?)?;
        let secrets = aws_sdk_secretsmanager::Client::new(sdk);
        Ok(Self::new(
            &outbound,
            upstreams_from_env(env, Some(&secrets))?,
            settings,
            Some(health),
        )?)
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    pub fn snapshot(&self) -> Vec<EndpointSnapshot> {
        self.endpoints
            .iter()
            .map(|state| EndpointSnapshot {
                name: state.upstream.endpoint.name.clone(),
                breaker: lock(&state.breaker).state(),
                in_flight: self.settings.endpoint_concurrency - state.bulkhead.available_permits(),
            })
            .collect()
    }

    /// The client's overall bulkhead, which the HTTP pipeline consults before a
    /// fleet-bound request pays any round trip (see [`crate::bulkhead`]).
    pub fn bulkhead(&self) -> Arc<Bulkhead> {
        self.total.clone()
    }

    /// A slot in the overall bulkhead for one call, or `Overloaded` at once.
    pub fn admit(&self) -> Result<BulkheadPermit, FleetError> {
        self.total.try_enter().ok_or_else(|| {
            tracing::warn!("fleet bulkhead full: shedding");
            FleetError::Overloaded
        })
    }

    /// `POST /v1/chat/completions` without streaming, in the slot `permit`
    /// ([`Self::admit`]).
    pub async fn chat(
        &self,
        permit: BulkheadPermit,
        request: &Value,
        ctx: &RequestContext,
    ) -> Result<FleetReply, FleetError> {
        self.unary(permit, "/v1/chat/completions", request, ctx)
            .await
    }

    /// `POST /v1/embeddings`, in the slot `permit`.
    pub async fn embeddings(
        &self,
        permit: BulkheadPermit,
        request: &Value,
        ctx: &RequestContext,
    ) -> Result<FleetReply, FleetError> {
        self.unary(permit, "/v1/embeddings", request, ctx).await
    }

    async fn unary(
        &self,
        permit: BulkheadPermit,
        path: &str,
        request: &Value,
        ctx: &RequestContext,
    ) -> Result<FleetReply, FleetError> {
        let won = self
            .run(permit, ctx, |state, timeout, token| {
                self.attempt_unary(state, path, request, timeout, token, ctx)
            })
            .await?;
        Ok(FleetReply {
            endpoint: won.endpoint,
            kind: won.kind,
            body: won.value,
            attempts: won.attempts,
        })
    }

    /// `POST /v1/chat/completions` with `stream: true`. Returns once the first chunk
    /// arrived, so failover stays possible until the caller has sent a byte. The
    /// stream keeps its slots (overall and endpoint bulkheads) until it ends.
    pub async fn chat_stream(
        &self,
        permit: BulkheadPermit,
        request: &Value,
        ctx: &RequestContext,
    ) -> Result<FleetStream, FleetError> {
        let won = self
            .run(permit, ctx, |state, timeout, token| {
                self.attempt_stream(state, request, timeout, token, ctx)
            })
            .await?;
        let mut stream = won.value;
        stream.slots = Some((won.permit, won.slot));
        Ok(stream)
    }

    /// The attempt loop shared by every call (see the module docs).
    async fn run<'a, T, F, Fut>(
        &'a self,
        permit: BulkheadPermit,
        ctx: &RequestContext,
        attempt: F,
    ) -> Result<Won<T>, FleetError>
    where
        F: Fn(&'a Arc<EndpointState>, Duration, Option<String>) -> Fut,
        Fut: Future<Output = Result<T, AttemptError>> + 'a,
    {
        // A permit of another bulkhead would let calls past ours uncounted.
        let permit = if self.total.issued(&permit) {
            permit
        } else {
            tracing::error!("a fleet call came with another bulkhead's permit");
            self.admit()?
        };
        self.budget.deposit();
        let mut failures: Vec<AttemptFailure> = Vec::new();
        let mut attempts = 0u32;
        let mut tried = vec![false; self.endpoints.len()];
        let mut retry_after: Option<Duration> = None;
        let mut hit_deadline = false;

        'passes: for pass in 0..self.settings.max_attempts {
            let mut attempted = false;
            for (index, state) in self.endpoints.iter().enumerate() {
                if attempts >= self.settings.max_attempts {
                    break 'passes;
                }
                let name = &state.upstream.endpoint.name;
                let remaining = ctx.remaining(self.settings.deadline_margin);
                if remaining.is_zero() {
                    hit_deadline = true;
                    break 'passes;
                }
                let note = |failures: &mut Vec<AttemptFailure>, reason: FailureReason| {
                    if pass == 0 {
                        failures.push(AttemptFailure {
                            endpoint: name.clone(),
                            reason,
                        });
                    }
                };
                if let Some(until) = *lock(&state.cooling_until)
                    && until > Instant::now()
                {
                    keep_min(&mut retry_after, until - Instant::now());
                    note(&mut failures, FailureReason::Cooling);
                    continue;
                }
                if let Some(health) = &self.health
                    && health.is_down(name).await
                {
                    note(&mut failures, FailureReason::HealthDown);
                    continue;
                }
                let (admission, transition) = lock(&state.breaker).admit(Instant::now());
                report_transition(name, transition);
                if let Admission::Refused { retry_in } = admission {
                    keep_min(&mut retry_after, retry_in);
                    note(&mut failures, FailureReason::BreakerOpen);
                    continue;
                }
                let Ok(slot) = state.bulkhead.clone().try_acquire_owned() else {
                    lock(&state.breaker).release();
                    note(&mut failures, FailureReason::Busy);
                    continue;
                };
                if attempts > 0 {
                    if !self.budget.withdraw() {
                        lock(&state.breaker).release();
                        failures.push(AttemptFailure {
                            endpoint: name.clone(),
                            reason: FailureReason::BudgetExhausted,
                        });
                        break 'passes;
                    }
                    if tried[index] {
                        let pause = self.backoff(attempts).min(remaining);
                        tokio::time::sleep(pause).await;
                    }
                }
                attempts += 1;
                tried[index] = true;
                attempted = true;

                let outcome = self.attempt_with_credentials(state, ctx, &attempt).await;
                match outcome {
                    Ok(value) => {
                        return Ok(Won {
                            value,
                            endpoint: name.clone(),
                            kind: state.upstream.kind,
                            attempts,
                            permit,
                            slot,
                        });
                    }
                    Err(AttemptError::Fatal(error)) => return Err(error),
                    Err(AttemptError::Unauthorized) => failures.push(AttemptFailure {
                        endpoint: name.clone(),
                        reason: FailureReason::Unauthorized,
                    }),
                    Err(AttemptError::Retryable {
                        reason,
                        retry_after: wait,
                    }) => {
                        if let Some(wait) = wait {
                            *lock(&state.cooling_until) = Some(Instant::now() + wait);
                            keep_min(&mut retry_after, wait);
                        }
                        if matches!(
                            reason,
                            FailureReason::Timeout | FailureReason::FirstTokenTimeout
                        ) && ctx.remaining(self.settings.deadline_margin).is_zero()
                        {
                            hit_deadline = true;
                        }
                        failures.push(AttemptFailure {
                            endpoint: name.clone(),
                            reason,
                        });
                    }
                }
            }
            if !attempted {
                break;
            }
        }
        tracing::warn!(attempts, failures = %describe(&failures), "fleet call failed");
        if hit_deadline {
            return Err(FleetError::DeadlineExceeded { failures });
        }
        Err(FleetError::Unavailable {
            failures,
            retry_after: retry_after.unwrap_or(Duration::from_secs(5)),
        })
    }

    /// One attempt, plus one immediate retry with a re-read credential on 401.
    async fn attempt_with_credentials<'a, T, F, Fut>(
        &'a self,
        state: &'a Arc<EndpointState>,
        ctx: &RequestContext,
        attempt: &F,
    ) -> Result<T, AttemptError>
    where
        F: Fn(&'a Arc<EndpointState>, Duration, Option<String>) -> Fut,
        Fut: Future<Output = Result<T, AttemptError>> + 'a,
    {
        let name = &state.upstream.endpoint.name;
        let mut token = match &state.upstream.credentials {
            None => None,
            Some(secret) => match secret.get().await {
                Ok(token) => Some(token),
                Err(error) => {
                    tracing::error!(endpoint = %name, %error, "no credentials for endpoint");
                    lock(&state.breaker).release();
                    return Err(AttemptError::Retryable {
                        reason: FailureReason::Credentials,
                        retry_after: None,
                    });
                }
            },
        };
        for refreshed in [false, true] {
            let timeout = self
                .settings
                .attempt_timeout
                .min(ctx.remaining(self.settings.deadline_margin));
            let started = Instant::now();
            let outcome = attempt(state, timeout, token.clone()).await;
            let latency = started.elapsed();
            let (success, word) = match &outcome {
                Ok(_) => (Some(true), "ok"),
                Err(AttemptError::Fatal(FleetError::Rejected { .. })) => (Some(true), "rejected"),
                Err(AttemptError::Fatal(_)) => (Some(false), "upstream_error"),
                // Backpressure and our own credentials say nothing about its health.
                Err(AttemptError::Unauthorized) => (None, "unauthorized"),
                Err(AttemptError::Retryable {
                    reason: FailureReason::Status(429),
                    ..
                }) => (None, "rate_limited"),
                Err(AttemptError::Retryable { reason, .. }) => (Some(false), reason.metric_word()),
            };
            {
                let mut breaker = lock(&state.breaker);
                let transition = match success {
                    Some(ok) => breaker.record(ok, Instant::now()),
                    None => {
                        breaker.release();
                        None
                    }
                };
                report_transition(name, transition);
            }
            emit_attempt_metric(name, word, latency, ctx);
            match outcome {
                Err(AttemptError::Unauthorized) if !refreshed => {
                    let Some(secret) = &state.upstream.credentials else {
                        return Err(AttemptError::Unauthorized);
                    };
                    tracing::warn!(endpoint = %name, "upstream rejected our token; re-reading it");
                    match secret.refresh().await {
                        Ok(fresh) => token = Some(fresh),
                        Err(error) => {
                            tracing::error!(endpoint = %name, %error, "re-reading credentials failed");
                            return Err(AttemptError::Unauthorized);
                        }
                    }
                    let (admission, transition) = lock(&state.breaker).admit(Instant::now());
                    report_transition(name, transition);
                    if admission != Admission::Allowed {
                        return Err(AttemptError::Retryable {
                            reason: FailureReason::BreakerOpen,
                            retry_after: None,
                        });
                    }
                }
                other => return other,
            }
        }
        Err(AttemptError::Unauthorized)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let ceiling = self
            .settings
            .backoff_base
            .saturating_mul(1 << exponent)
            .min(self.settings.backoff_cap);
        Duration::from_micros(fastrand::u64(0..=ceiling.as_micros() as u64))
    }

    fn request(
        &self,
        state: &EndpointState,
        path: &str,
        body: &Value,
        token: Option<String>,
        ctx: &RequestContext,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", state.upstream.endpoint.base_url);
        let mut body = body.clone();
        if let Some(model) = &state.upstream.model_override
            && body.get("model").is_some()
        {
            body["model"] = Value::String(model.clone());
        }
        let mut request = self
            .http
            .post(url)
            .header(TRACEPARENT_HEADER, ctx.trace.traceparent())
            .header(CORRELATION_HEADER, ctx.correlation_id.as_str())
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn attempt_unary(
        &self,
        state: &EndpointState,
        path: &str,
        body: &Value,
        timeout: Duration,
        token: Option<String>,
        ctx: &RequestContext,
    ) -> Result<Value, AttemptError> {
        if timeout.is_zero() {
            return Err(retryable(FailureReason::Timeout));
        }
        let name = &state.upstream.endpoint.name;
        let response = self
            .request(state, path, body, token, ctx)
            .timeout(timeout)
            .send()
            .await
            .map_err(|error| classify_transport(&error))?;
        let status = response.status();
        if !status.is_success() {
            return Err(classify_status(name, status, response).await);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|error| classify_transport(&error))?;
        serde_json::from_slice(&bytes).map_err(|_| {
            AttemptError::Fatal(FleetError::Upstream {
                endpoint: name.clone(),
                status: status.as_u16(),
            })
        })
    }

    async fn attempt_stream(
        &self,
        state: &Arc<EndpointState>,
        body: &Value,
        timeout: Duration,
        token: Option<String>,
        ctx: &RequestContext,
    ) -> Result<FleetStream, AttemptError> {
        let ttft = self.settings.ttft_timeout.min(timeout);
        if ttft.is_zero() {
            return Err(retryable(FailureReason::FirstTokenTimeout));
        }
        let mut body = body.clone();
        body["stream"] = Value::Bool(true);
        let name = &state.upstream.endpoint.name;
        let first = tokio::time::timeout(ttft, async {
            let response = self
                .request(state, "/v1/chat/completions", &body, token, ctx)
                .send()
                .await
                .map_err(|error| classify_transport(&error))?;
            let status = response.status();
            if !status.is_success() {
                return Err(classify_status(name, status, response).await);
            }
            let mut chunks: ByteStream = Box::pin(response.bytes_stream());
            match chunks.next().await {
                Some(Ok(first)) => Ok((first, chunks)),
                Some(Err(_)) | None => Err(retryable(FailureReason::Transport)),
            }
        })
        .await;
        let (first, rest) = match first {
            Ok(result) => result?,
            Err(_) => return Err(retryable(FailureReason::FirstTokenTimeout)),
        };
        Ok(FleetStream {
            endpoint: name.clone(),
            kind: state.upstream.kind,
            first: Some(first),
            rest,
            idle_timeout: self.settings.idle_timeout,
            deadline: ctx
                .deadline
                .checked_sub(self.settings.deadline_margin)
                .unwrap_or(ctx.deadline),
            state: state.clone(),
            finished: false,
            slots: None,
        })
    }
}

fn keep_min(slot: &mut Option<Duration>, value: Duration) {
    *slot = Some(slot.map_or(value, |current| current.min(value)));
}

fn retryable(reason: FailureReason) -> AttemptError {
    AttemptError::Retryable {
        reason,
        retry_after: None,
    }
}

fn classify_transport(error: &reqwest::Error) -> AttemptError {
    if error.is_timeout() {
        retryable(FailureReason::Timeout)
    } else if error.is_connect() {
        retryable(FailureReason::Unreachable)
    } else {
        retryable(FailureReason::Transport)
    }
}

async fn classify_status(
    endpoint: &str,
    status: StatusCode,
    response: reqwest::Response,
) -> AttemptError {
    match status.as_u16() {
        401 | 403 => AttemptError::Unauthorized,
        429 => {
            let wait = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1))
                .min(MAX_RETRY_AFTER);
            AttemptError::Retryable {
                reason: FailureReason::Status(429),
                retry_after: Some(wait),
            }
        }
        502..=504 => retryable(FailureReason::Status(status.as_u16())),
        400..=499 => {
            let text = tokio::time::timeout(Duration::from_millis(500), response.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "the model server rejected the request".to_owned());
            AttemptError::Fatal(FleetError::Rejected {
                endpoint: endpoint.to_owned(),
                status: status.as_u16(),
                message: message.chars().take(MAX_ERROR_MESSAGE).collect(),
            })
        }
        code => AttemptError::Fatal(FleetError::Upstream {
            endpoint: endpoint.to_owned(),
            status: code,
        }),
    }
}

fn report_transition(endpoint: &str, transition: Option<Transition>) {
    let Some(Transition { from, to }) = transition else {
        return;
    };
    tracing::warn!(
        endpoint,
        from = from.as_str(),
        to = to.as_str(),
        "circuit breaker transition"
    );
    MetricSet::new(METRICS_NAMESPACE)
        .dimension("Endpoint", endpoint)
        .count("BreakerTransitions", 1.0)
        .property("from", from.as_str())
        .property("to", to.as_str())
        .emit();
}

fn emit_attempt_metric(
    endpoint: &str,
    outcome: &'static str,
    latency: Duration,
    ctx: &RequestContext,
) {
    tracing::info!(
        endpoint,
        outcome,
        latency_ms = latency.as_secs_f64() * 1000.0,
        "fleet attempt"
    );
    MetricSet::new(METRICS_NAMESPACE)
        .dimension("Endpoint", endpoint)
        .count("FleetAttempts", 1.0)
        .count(
            "FleetAttemptFailures",
            f64::from(u8::from(outcome != "ok" && outcome != "rejected")),
        )
        .millis("FleetAttemptLatency", latency.as_secs_f64() * 1000.0)
        .property("outcome", outcome)
        .property("correlation_id", ctx.correlation_id.as_str())
        .emit();
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Why a stream ended before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamBreak {
    #[error("the model server went silent")]
    Idle,
    #[error("the connection to the model server broke")]
    Broken,
    #[error("the invocation deadline was reached")]
    Deadline,
}

/// A stream from one endpoint whose first chunk has arrived.
pub struct FleetStream {
    pub endpoint: String,
    pub kind: UpstreamKind,
    first: Option<Bytes>,
    rest: ByteStream,
    idle_timeout: Duration,
    deadline: Instant,
    state: Arc<EndpointState>,
    finished: bool,
    /// The overall and endpoint bulkhead slots, freed when the stream ends.
    slots: Option<(BulkheadPermit, OwnedSemaphorePermit)>,
}

impl std::fmt::Debug for FleetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStream")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl FleetStream {
    /// The next chunk of bytes; `None` at a clean end. After an error, `None`.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, StreamBreak>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        if self.finished {
            return None;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let (wait, on_timeout) = if left < self.idle_timeout {
            (left, StreamBreak::Deadline)
        } else {
            (self.idle_timeout, StreamBreak::Idle)
        };
        let outcome = match tokio::time::timeout(wait, self.rest.next()).await {
            Ok(Some(Ok(chunk))) => return Some(Ok(chunk)),
            Ok(None) => {
                self.finished = true;
                self.slots = None;
                return None;
            }
            Ok(Some(Err(_))) => StreamBreak::Broken,
            Err(_) => on_timeout,
        };
        self.finished = true;
        self.slots = None;
        if outcome != StreamBreak::Deadline {
            let transition = lock(&self.state.breaker).record(false, Instant::now());
            report_transition(&self.endpoint, transition);
        }
        tracing::warn!(endpoint = %self.endpoint, reason = %outcome, "fleet stream broke");
        Some(Err(outcome))
    }
}

/// Builds the ordered upstream list from the environment: `FLEET_ENDPOINTS`
/// (priority order), then `FALLBACK_ENDPOINT` (`name=url`) if set.
pub fn upstreams_from_env(
    env: &Env<'_>,
    secrets: Option<&aws_sdk_secretsmanager::Client>,
) -> Result<Vec<Upstream>, ConfigError> {
    let fleet = parse_endpoints("FLEET_ENDPOINTS", &env.list("FLEET_ENDPOINTS"))?;
    if fleet.is_empty() {
        return Err(ConfigError::new(
            "FLEET_ENDPOINTS",
            "is required: name=url pairs, comma-separated",
        ));
    }
    let secret = |variable: &str| -> Result<Option<Arc<SecretToken>>, ConfigError> {
        match (env.optional(variable), secrets) {
            (None, _) => Ok(None),
            (Some(id), Some(client)) => Ok(Some(Arc::new(SecretToken::new(
                client.clone(),
                id,
                Duration::from_secs(300),
            )))),
            (Some(_), None) => Err(ConfigError::new(
                variable,
                "is set but no Secrets Manager client was given",
            )),
        }
    };
    let fleet_token = secret("FLEET_TOKEN_SECRET")?;
    let mut upstreams: Vec<Upstream> = fleet
        .into_iter()
        .map(|endpoint| Upstream {
            endpoint,
            kind: UpstreamKind::Fleet,
            model_override: None,
            credentials: fleet_token.clone(),
        })
        .collect();
    if let Some(raw) = env.optional("FALLBACK_ENDPOINT") {
        let mut fallback = parse_endpoints("FALLBACK_ENDPOINT", &[raw])?;
        if let Some(endpoint) = fallback.pop() {
            if upstreams.iter().any(|u| u.endpoint.name == endpoint.name) {
                return Err(ConfigError::new(
                    "FALLBACK_ENDPOINT",
                    "its name is already used by a fleet endpoint",
                ));
            }
            upstreams.push(Upstream {
                endpoint,
                kind: UpstreamKind::Fallback,
                model_override: env.optional("FALLBACK_MODEL"),
                credentials: secret("FALLBACK_API_KEY_SECRET")?,
            });
        }
    }
    Ok(upstreams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        assert!(FleetSettings::default().validate().is_ok());
        let env = [("FLEET_MAX_ATTEMPTS", "0")];
        assert_eq!(
            FleetSettings::from_env(&Env::new(&env))
                .unwrap_err()
                .variable,
            "FLEET_MAX_ATTEMPTS"
        );
        let env = [("FLEET_RETRY_BUDGET_PERCENT", "-1")];
        assert_eq!(
            FleetSettings::from_env(&Env::new(&env))
                .unwrap_err()
                .variable,
            "FLEET_RETRY_BUDGET_PERCENT"
        );
    }

    #[test]
    fn failures_name_every_endpoint() {
        let text = describe(&[
            AttemptFailure {
                endpoint: "primary".into(),
                reason: FailureReason::BreakerOpen,
            },
            AttemptFailure {
                endpoint: "secondary".into(),
                reason: FailureReason::Status(503),
            },
        ]);
        assert_eq!(text, "primary: circuit open; secondary: status 503");
    }

    #[test]
    fn upstreams_keep_priority_and_append_the_fallback() {
        let env = [
            (
                "FLEET_ENDPOINTS",
                "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
            ),
            ("FALLBACK_ENDPOINT", "openrouter=https://openrouter.ai/api"),
            ("FALLBACK_MODEL", "meta-llama/llama-3.1-8b-instruct"),
        ];
        let upstreams = upstreams_from_env(&Env::new(&env), None).unwrap();
        let names: Vec<_> = upstreams.iter().map(|u| u.endpoint.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "openrouter"]);
        assert_eq!(upstreams[2].kind, UpstreamKind::Fallback);
        assert_eq!(
            upstreams[2].model_override.as_deref(),
            Some("meta-llama/llama-3.1-8b-instruct")
        );
        let env = [
            ("FLEET_ENDPOINTS", "a=http://127.0.0.1:1"),
            ("FLEET_TOKEN_SECRET", "s"),
        ];
        assert!(upstreams_from_env(&Env::new(&env), None).is_err());
    }
}
