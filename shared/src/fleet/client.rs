//! The client itself: admission, the attempt loop (failover, breakers, retry
//! budget, backoff, deadline), unary and streamed attempts, metrics.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::retry::budget::{Budget, TpsBudget};

use crate::config::{ConfigError, Env};
use crate::fleet::assemble::{AssembleError, CollectError, collect};
use crate::fleet::breaker::{Admission, Breaker, BreakerState};
use crate::fleet::endpoint::{EndpointState, lock, report_transition};
use crate::fleet::error::{
    AttemptError, AttemptFailure, FailureReason, FleetError, OVERLOADED, classify_status,
    classify_transport, describe, retryable,
};
use crate::fleet::health::SharedHealth;
use crate::fleet::settings::{FleetSettings, Upstream, UpstreamKind, upstreams_from_env};
use crate::fleet::stream::{ByteStream, FleetStream};
use crate::guard::bulkhead::{Bulkhead, BulkheadPermit};
use crate::observability::{CORRELATION_HEADER, MetricSet, RequestContext, TRACEPARENT_HEADER};
use crate::outbound::OutboundClient;
use tracing::Instrument;

const METRICS_NAMESPACE: &str = "Sophia";

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

impl Won<Value> {
    fn into_reply(self) -> FleetReply {
        FleetReply {
            endpoint: self.endpoint,
            kind: self.kind,
            body: self.value,
            attempts: self.attempts,
        }
    }
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
    ) -> Result<Self, crate::startup::InitError> {
        let outbound = OutboundClient::new(crate::outbound::OutboundSettings::from_env(env)?)?;
        Self::from_env_sharing(env, sdk, &outbound)
    }

    /// [`Self::from_env`] on a pool the function already has (one HTTP client,
    /// and its TLS setup, per cold start).
    pub fn from_env_sharing(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        outbound: &OutboundClient,
    ) -> Result<Self, crate::startup::InitError> {
        let settings = FleetSettings::from_env(env)?;
        let health = Arc::new(SharedHealth::new(
            aws_sdk_dynamodb::Client::new(sdk),
            env.required("STATE_TABLE")?,
            settings.health_cache,
        ));
        let secrets = aws_sdk_secretsmanager::Client::new(sdk);
        Ok(Self::new(
            outbound,
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
    /// fleet-bound request pays any round trip (see [`crate::guard::bulkhead`]).
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

    /// `POST /v1/chat/completions` for a caller that wants the whole answer, in
    /// the slot `permit` ([`Self::admit`]). Asked of the fleet as a stream and
    /// assembled here ([`crate::fleet::assemble`]), so a dead or hung endpoint
    /// costs at most the first-chunk timeout before failover, not the whole
    /// attempt timeout; a stream that breaks mid-way fails over too, since the
    /// caller has seen nothing yet. Audio output is the exception: its chunks
    /// do not merge as text, so it is asked for whole.
    pub async fn chat(
        &self,
        permit: BulkheadPermit,
        request: &Value,
        ctx: &RequestContext,
    ) -> Result<FleetReply, FleetError> {
        let wants_audio = request["modalities"]
            .as_array()
            .is_some_and(|modalities| modalities.iter().any(|m| m == "audio"));
        if wants_audio {
            return self
                .unary(permit, "/v1/chat/completions", request, ctx)
                .await;
        }
        let mut body = request.clone();
        body["stream"] = Value::Bool(true);
        body["stream_options"] = serde_json::json!({ "include_usage": true });
        let won = self
            .run(permit, ctx, |state, timeout, token| {
                self.attempt_assembled(state, &body, timeout, token, ctx)
            })
            .await?;
        Ok(won.into_reply())
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
        Ok(won.into_reply())
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
        let mut body = request.clone();
        body["stream"] = Value::Bool(true);
        let won = self
            .run(permit, ctx, |state, timeout, token| {
                self.attempt_stream(state, &body, timeout, token, ctx)
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
                        // Each attempt has its line ("fleet attempt"); a failover
                        // also gets one that says what it went past.
                        if !failures.is_empty() {
                            tracing::info!(endpoint = %name, attempts, failures = %describe(&failures), "fleet call answered after failover");
                        }
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
            // One span per attempt: the `traceparent` the endpoint gets names it.
            let span = tracing::info_span!(
                "fleet attempt",
                otel.kind = "client",
                endpoint = %name,
                outcome = tracing::field::Empty,
            );
            let outcome = attempt(state, timeout, token.clone())
                .instrument(span.clone())
                .await;
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
            span.record("outcome", word);
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

    /// The request to one endpoint (with its own model name, if it has one),
    /// and the size of its body, which is serialized once, here.
    fn request(
        &self,
        state: &EndpointState,
        path: &str,
        body: &Value,
        token: Option<String>,
        ctx: &RequestContext,
    ) -> (reqwest::RequestBuilder, usize) {
        let url = format!("{}{path}", state.upstream.endpoint.base_url);
        let overridden = state
            .upstream
            .model_override
            .as_ref()
            .filter(|_| body.get("model").is_some())
            .map(|model| {
                let mut body = body.clone();
                body["model"] = Value::String(model.clone());
                body
            });
        // Serializing a `Value` cannot fail (its keys are strings); were it to,
        // the empty body would be refused by the server, not sent silently.
        let bytes = serde_json::to_vec(overridden.as_ref().unwrap_or(body)).unwrap_or_default();
        let size = bytes.len();
        let mut request = self
            .http
            .post(url)
            .header(TRACEPARENT_HEADER, ctx.trace.traceparent_now())
            .header(CORRELATION_HEADER, ctx.correlation_id.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(bytes);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        (request, size)
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
        let (request, _) = self.request(state, path, body, token, ctx);
        let response = request
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
        serde_json::from_slice(&bytes).map_err(|_| upstream_fault(name, status.as_u16()))
    }

    /// Sends a streamed request and waits, at most the first-chunk timeout for
    /// its size, for the status and the first chunk. A server that answers
    /// JSON instead of a stream comes back whole.
    async fn first_chunk(
        &self,
        state: &EndpointState,
        body: &Value,
        timeout: Duration,
        token: Option<String>,
        ctx: &RequestContext,
    ) -> Result<FirstChunk, AttemptError> {
        let (request, size) = self.request(state, "/v1/chat/completions", body, token, ctx);
        let ttft = self.settings.first_chunk_timeout(size, timeout);
        if ttft.is_zero() {
            return Err(retryable(FailureReason::FirstTokenTimeout));
        }
        let name = &state.upstream.endpoint.name;
        let first = tokio::time::timeout(ttft, async {
            let response = request
                .send()
                .await
                .map_err(|error| classify_transport(&error))?;
            let status = response.status();
            if !status.is_success() {
                return Err(classify_status(name, status, response).await);
            }
            let is_json = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("application/json"));
            if is_json {
                return Ok(FirstChunk::Whole(response));
            }
            let mut chunks: ByteStream = Box::pin(response.bytes_stream());
            match chunks.next().await {
                Some(Ok(first)) => Ok(FirstChunk::Stream(first, chunks)),
                Some(Err(_)) | None => Err(retryable(FailureReason::Transport)),
            }
        })
        .await;
        match first {
            Ok(result) => result,
            Err(_) => Err(retryable(FailureReason::FirstTokenTimeout)),
        }
    }

    async fn attempt_assembled(
        &self,
        state: &EndpointState,
        body: &Value,
        timeout: Duration,
        token: Option<String>,
        ctx: &RequestContext,
    ) -> Result<Value, AttemptError> {
        let until = Instant::now() + timeout;
        let name = &state.upstream.endpoint.name;
        match self.first_chunk(state, body, timeout, token, ctx).await? {
            FirstChunk::Whole(response) => {
                let left = until.saturating_duration_since(Instant::now());
                let bytes = match tokio::time::timeout(left, response.bytes()).await {
                    Ok(bytes) => bytes.map_err(|error| classify_transport(&error))?,
                    Err(_) => return Err(retryable(FailureReason::Timeout)),
                };
                serde_json::from_slice(&bytes).map_err(|_| upstream_fault(name, 200))
            }
            FirstChunk::Stream(first, rest) => {
                match collect(first, rest, self.settings.idle_timeout, until).await {
                    Ok(answer) => Ok(answer),
                    Err(error) => {
                        tracing::warn!(endpoint = %name, %error, "assembling a completion failed");
                        Err(match error {
                            CollectError::Idle => retryable(FailureReason::Idle),
                            CollectError::Deadline => retryable(FailureReason::Timeout),
                            CollectError::Broken
                            | CollectError::Assemble(AssembleError::UpstreamError) => {
                                retryable(FailureReason::Transport)
                            }
                            CollectError::TooLarge
                            | CollectError::Assemble(AssembleError::Malformed) => {
                                upstream_fault(name, 200)
                            }
                        })
                    }
                }
            }
        }
    }

    async fn attempt_stream(
        &self,
        state: &Arc<EndpointState>,
        body: &Value,
        timeout: Duration,
        token: Option<String>,
        ctx: &RequestContext,
    ) -> Result<FleetStream, AttemptError> {
        let name = &state.upstream.endpoint.name;
        let (first, rest) = match self.first_chunk(state, body, timeout, token, ctx).await? {
            FirstChunk::Stream(first, rest) => (first, rest),
            // The caller expects events; a server that ignored `stream` is of no use.
            FirstChunk::Whole(_) => return Err(upstream_fault(name, 200)),
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

/// The first answer of a streamed request.
enum FirstChunk {
    Stream(bytes::Bytes, ByteStream),
    Whole(reqwest::Response),
}

/// An answer the endpoint gave that is of no use (unreadable, or not a stream
/// when one was asked for): not retried.
fn upstream_fault(endpoint: &str, status: u16) -> AttemptError {
    AttemptError::Fatal(FleetError::Upstream {
        endpoint: endpoint.to_owned(),
        status,
    })
}

fn keep_min(slot: &mut Option<Duration>, value: Duration) {
    *slot = Some(slot.map_or(value, |current| current.min(value)));
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
