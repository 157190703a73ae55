//! `POST /v1/chat/completions`, OpenAI-compatible.
//!
//! Two entry points share everything but the response mode:
//! - [`handle`] (function `api-chat`, behind API Gateway): answers in one piece;
//!   `stream: true` is refused with a 400 that names the streaming endpoint;
//! - [`handle_streaming`] (function `api-chat-stream`, a Lambda function URL with
//!   response streaming): `stream: true` becomes server-sent events, anything else
//!   is answered in one piece.
//!
//! The fleet client fails over until the first chunk arrives; once bytes went to
//! the caller, a broken upstream ends the stream with an explicit `error` event
//! and no `[DONE]`, never a silent truncation.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use http_body::Frame;
use http_body_util::StreamBody;
use lambda_http::http::{HeaderValue, Method, StatusCode, header};
use lambda_http::{Body, Request, Response};
use sophia_shared::auth::{Authenticator, Principal, SCOPE_CHAT};
use sophia_shared::aws::AwsSettings;
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::fleet::client::FleetClient;
use sophia_shared::fleet::stream::{FleetStream, StreamBreak};
use sophia_shared::guard::bulkhead::BulkheadPermit;
use sophia_shared::guard::quota::Quotas;
use sophia_shared::http::policy::HttpPolicy;
use sophia_shared::http::request::{ApiRequest, json_response};
use sophia_shared::http::routing::Route;
use sophia_shared::http::serve;
use sophia_shared::jobs::store::JobStore;
use sophia_shared::observability::MetricSet;
use sophia_shared::problem::ApiError;
use sophia_shared::startup::InitError;

use crate::jobs;
use crate::request::{ChatRequest, Limits};
use crate::usage::{PriceTable, Usage, UsageRecorder};

/// Function names, used as the `Service` metric dimension.
pub const SERVICE: &str = "api-chat";
pub const STREAMING_SERVICE: &str = "api-chat-stream";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRoute {
    Completions,
}

pub const ROUTES: [Route<ChatRoute>; 1] = [Route::protected(
    Method::POST,
    "/v1/chat/completions",
    ChatRoute::Completions,
    SCOPE_CHAT,
)
.sheds_when_busy()];

/// Everything the handler needs, built once per cold start.
pub struct Deps {
    pub http: HttpPolicy,
    pub limits: Limits,
    pub fleet: Arc<FleetClient>,
    pub billing: Billing,
    /// Where `Prefer: respond-async` (and `async-fallback` in an outage) puts requests.
    pub jobs: JobStore,
}

/// Quota, usage and cost accounting, shared by both response modes.
#[derive(Debug, Clone)]
pub struct Billing {
    pub service: &'static str,
    pub prices: PriceTable,
    pub usage: UsageRecorder,
    pub quotas: Arc<Quotas>,
}

/// AWS settings come first: they are needed to build the SDK configuration that
/// [`Deps::from_env`] takes.
pub fn aws_settings(env: &Env<'_>) -> Result<AwsSettings, ConfigError> {
    AwsSettings::from_env(env)
}

impl Deps {
    /// Reads `CHAT_MODELS`, `PRICE_TABLE`, `USAGE_TABLE`, `STATE_TABLE` (shared fleet
    /// health), the fleet variables (`FLEET_ENDPOINTS`, `FLEET_TOKEN_SECRET`,
    /// `FALLBACK_*`, `FLEET_*`, `BREAKER_*`) and the limits `CHAT_MAX_MESSAGES`
    /// (256), `CHAT_MAX_MESSAGE_CHARS` (100000), `CHAT_MAX_TOTAL_CHARS` (400000),
    /// `CHAT_MAX_TOKENS` (4096).
    pub async fn from_env(
        service: &'static str,
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, InitError> {
        let auth = Authenticator::from_env(env, sdk).await?;
        Self::with_authenticator(service, env, sdk, auth)
    }

    /// Everything but the authenticator from the environment (tests give their own).
    pub fn with_authenticator(
        service: &'static str,
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        auth: Arc<Authenticator>,
    ) -> Result<Self, InitError> {
        let limits = Limits::from_env(env)?;
        let prices = PriceTable::parse(&env.required("PRICE_TABLE")?, &limits.models)?;
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let fleet = FleetClient::from_env(env, sdk)?;
        Ok(Self {
            http: HttpPolicy::protected_from_env(service, env, auth, dynamodb.clone())?
                .with_bulkhead(fleet.bulkhead()),
            limits,
            fleet: Arc::new(fleet),
            jobs: JobStore::from_env(env, sdk)?,
            billing: Billing {
                service,
                prices,
                quotas: Arc::new(Quotas::from_env(env, dynamodb.clone())?),
                usage: UsageRecorder::new(dynamodb, env.required("USAGE_TABLE")?),
            },
        })
    }
}

/// The buffered entry point (API Gateway).
pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    serve(&deps.http, &ROUTES, request, |mut api| async move {
        let permit = api.permit.take();
        let (principal, chat) = accept(deps, &api)?;
        if chat.stream {
            return Err(ApiError::invalid(
                "stream: true is served by the streaming endpoint (the api-chat-stream function URL); this endpoint answers in one piece",
            ));
        }
        complete(deps, &principal, &chat, &api, permit).await
    })
    .await
}

/// Authentication, parsing and validation, shared by both entry points.
fn accept(deps: &Deps, api: &ApiRequest<ChatRoute>) -> Result<(Principal, ChatRequest), ApiError> {
    let principal = api.principal()?.clone();
    let chat: ChatRequest = api.json()?;
    chat.validate(&deps.limits)?;
    Ok((principal, chat))
}

/// The request's bulkhead slot: the one the pipeline took, else a new one.
fn fleet_slot(deps: &Deps, permit: Option<BulkheadPermit>) -> Result<BulkheadPermit, ApiError> {
    match permit {
        Some(permit) => Ok(permit),
        None => deps.fleet.admit().map_err(|error| error.to_api_error()),
    }
}

async fn complete(
    deps: &Deps,
    principal: &Principal,
    chat: &ChatRequest,
    api: &ApiRequest<ChatRoute>,
    permit: Option<BulkheadPermit>,
) -> Result<Response<Body>, ApiError> {
    let body = chat.upstream_body(&deps.limits)?;
    let as_job = |quotas| {
        jobs::submit(
            &deps.jobs,
            &body,
            principal,
            chat,
            &api.headers,
            deps.billing.service,
            quotas,
        )
    };
    if jobs::prefers(&api.headers, jobs::RESPOND_ASYNC) {
        // A job does not call the fleet now: its slot is not needed.
        drop(permit);
        let job = as_job(Some(deps.billing.quotas.as_ref())).await?;
        return applied(job, jobs::RESPOND_ASYNC);
    }
    let permit = fleet_slot(deps, permit)?;
    deps.billing.quotas.reserve(&principal.tenant).await?;
    let reply = match deps.fleet.chat(permit, &body, &api.ctx).await {
        Ok(reply) => reply,
        Err(error) => {
            tracing::warn!(%error, "chat completion failed");
            let error = error.to_api_error();
            // Graceful degradation the caller opted into: a job instead of a 503.
            if error.is_retryable() && jobs::prefers(&api.headers, jobs::ASYNC_FALLBACK) {
                tracing::info!("fleet unavailable; the request becomes a job");
                // The request was counted against the quota above.
                return applied(as_job(None).await?, jobs::ASYNC_FALLBACK);
            }
            return Err(error);
        }
    };
    tracing::info!(endpoint = %reply.endpoint, attempts = reply.attempts, "chat completion answered");
    let usage: Usage = serde_json::from_value(reply.body["usage"].clone()).unwrap_or_default();
    account(&deps.billing, principal, &chat.model, &usage).await;
    json_response(StatusCode::OK, &reply.body)
}

/// Marks a 202 with the preference that produced it (RFC 7240 `Preference-Applied`).
fn applied(
    mut response: Response<Body>,
    preference: &'static str,
) -> Result<Response<Body>, ApiError> {
    response
        .headers_mut()
        .insert("preference-applied", HeaderValue::from_static(preference));
    Ok(response)
}

/// Records usage; a failure is logged with the figures (so it can be replayed)
/// but does not fail an answer the caller already has.
async fn account(billing: &Billing, principal: &Principal, model: &str, usage: &Usage) {
    let cost = billing.prices.cost_micro_usd(model, usage);
    MetricSet::new("Sophia")
        .dimension("Service", billing.service)
        .dimension("Model", model)
        .count("PromptTokens", usage.prompt_tokens as f64)
        .count("CompletionTokens", usage.completion_tokens as f64)
        .count("CostMicroUsd", cost)
        .property("tenant", principal.tenant.as_str())
        .emit();
    let tokens = usage.prompt_tokens + usage.completion_tokens;
    let (recorded, counted) = futures_util::join!(
        billing.usage.record(&principal.tenant, model, usage, cost),
        billing.quotas.add_tokens(&principal.tenant, tokens),
    );
    if let Err(error) = counted {
        tracing::error!(%error, tenant = %principal.tenant, tokens, "counting tokens against the quota failed");
    }
    if let Err(error) = recorded {
        tracing::error!(
            %error,
            tenant = %principal.tenant,
            model,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            cost_micro_usd = cost,
            "recording usage failed"
        );
    }
}

pub type SseStream = std::pin::Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;
pub type StreamingBody = StreamBody<SseStream>;

/// The streaming entry point (function URL with response streaming).
pub async fn handle_streaming(deps: &Deps, request: Request) -> Response<StreamingBody> {
    let stash: Mutex<Option<SseStream>> = Mutex::new(None);
    let stash_ref = &stash;
    let response = serve(&deps.http, &ROUTES, request, |mut api| async move {
        let permit = api.permit.take();
        let (principal, chat) = accept(deps, &api)?;
        if !chat.stream || jobs::prefers(&api.headers, jobs::RESPOND_ASYNC) {
            // A job is never streamed; `complete` refuses that combination with a 400.
            return complete(deps, &principal, &chat, &api, permit).await;
        }
        let body = chat.upstream_body(&deps.limits)?;
        let permit = fleet_slot(deps, permit)?;
        deps.billing.quotas.reserve(&principal.tenant).await?;
        let upstream = deps
            .fleet
            .chat_stream(permit, &body, &api.ctx)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "chat stream could not start");
                error.to_api_error()
            })?;
        tracing::info!(endpoint = %upstream.endpoint, "chat stream started");
        let pump = Pump {
            upstream,
            buffer: Vec::new(),
            pending: VecDeque::new(),
            finished: false,
            usage: None,
            wants_usage: chat.wants_stream_usage(),
            billing: deps.billing.clone(),
            principal,
            model: chat.model.clone(),
            correlation_id: api.ctx.correlation_id.clone(),
        };
        *stash_ref
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pump.into_stream());
        let mut response = Response::new(Body::Empty);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    })
    .await;
    let stream = stash
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (parts, body) = response.into_parts();
    let stream = stream.unwrap_or_else(|| {
        let bytes = Bytes::copy_from_slice(body.as_ref());
        Box::pin(futures_util::stream::once(
            async move { Ok(Frame::data(bytes)) },
        ))
    });
    Response::from_parts(parts, StreamBody::new(stream))
}

/// Re-frames the upstream bytes into whole SSE events, collects usage, strips the
/// usage-only chunk the caller did not ask for, records usage before `[DONE]`,
/// and turns a broken upstream into an error event.
struct Pump {
    upstream: FleetStream,
    buffer: Vec<u8>,
    pending: VecDeque<Bytes>,
    finished: bool,
    usage: Option<Usage>,
    wants_usage: bool,
    billing: Billing,
    principal: Principal,
    model: String,
    correlation_id: String,
}

const MAX_EVENT_BYTES: usize = 1024 * 1024;

impl Pump {
    fn into_stream(self) -> SseStream {
        let frames = futures_util::stream::unfold(self, |mut pump| async move {
            let frame = pump.next_frame().await?;
            Some((Ok(Frame::data(frame)), pump))
        });
        Box::pin(frames)
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            if self.finished {
                return None;
            }
            match self.upstream.next_chunk().await {
                Some(Ok(chunk)) => {
                    self.buffer.extend_from_slice(&chunk);
                    self.drain_events().await;
                    if !self.finished && self.buffer.len() > MAX_EVENT_BYTES {
                        self.fail("an upstream event was too large").await;
                    }
                }
                Some(Err(reason)) => self.fail(&reason.to_string()).await,
                None => self.fail(&StreamBreak::Broken.to_string()).await,
            }
        }
    }

    async fn drain_events(&mut self) {
        while let Some(end) = find_event_end(&self.buffer) {
            let event: Vec<u8> = self.buffer.drain(..end.0 + end.1).collect();
            let text = String::from_utf8_lossy(&event[..end.0]);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if data.is_empty() {
                continue;
            }
            let payload = data.join("\n");
            if payload == "[DONE]" {
                self.finish_ok().await;
                return;
            }
            let Ok(chunk) = serde_json::from_str::<serde_json::Value>(&payload) else {
                self.fail("the model server sent an unreadable event").await;
                return;
            };
            if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                self.usage = serde_json::from_value(usage.clone()).ok();
                let usage_only = chunk["choices"].as_array().is_some_and(Vec::is_empty);
                if usage_only && !self.wants_usage {
                    continue;
                }
            }
            self.pending
                .push_back(Bytes::from(format!("data: {payload}\n\n")));
        }
    }

    async fn finish_ok(&mut self) {
        match self.usage {
            Some(usage) => account(&self.billing, &self.principal, &self.model, &usage).await,
            None => {
                tracing::error!(model = %self.model, "stream ended without usage; nothing billed")
            }
        }
        self.pending
            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.finished = true;
    }

    async fn fail(&mut self, reason: &str) {
        tracing::warn!(reason, endpoint = %self.upstream.endpoint, "chat stream interrupted");
        if let Some(usage) = self.usage {
            account(&self.billing, &self.principal, &self.model, &usage).await;
        }
        let event = serde_json::json!({
            "error": {
                "message": format!("the stream was interrupted: {reason}; the answer is incomplete"),
                "type": "stream_interrupted",
                "code": "upstream_stream_broken",
                "correlation_id": self.correlation_id,
            }
        });
        self.pending
            .push_back(Bytes::from(format!("event: error\ndata: {event}\n\n")));
        self.finished = true;
    }
}

/// Where the first complete event ends: (length of the event, length of the separator).
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sophia_shared::auth::store::AuthStore;
    use sophia_shared::auth::tokens::{KeyRing, SigningKey};
    use sophia_shared::auth::{AuthSettings, KeySource};

    fn test_ring() -> KeyRing {
        KeyRing::new(
            SigningKey::new("test", b"unit-test-signing-key-material-32b!").unwrap(),
            vec![],
        )
    }

    async fn offline_deps() -> (Deps, String) {
        let env = [
            ("CHAT_MODELS", "sophia-small"),
            (
                "PRICE_TABLE",
                r#"{"sophia-small": {"prompt_per_mtok": 0.1, "completion_per_mtok": 0.3}}"#,
            ),
            ("STATE_TABLE", "state"),
            ("USAGE_TABLE", "usage"),
            ("JOBS_TABLE", "jobs"),
            ("JOBS_QUEUE_URL", "http://127.0.0.1:9/queue/jobs"),
            ("AUTH_TABLE", "auth"),
            ("SIGNING_KEYS_SECRET", "keys"),
            // Caches long enough that no request below reads DynamoDB.
            ("REVOCATION_CACHE_MS", "600000"),
            // Nothing listens here; the requests below never get that far.
            ("FLEET_ENDPOINTS", "primary=http://127.0.0.1:9"),
        ];
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let settings = AuthSettings::from_env(&Env::new(&env)).unwrap();
        let keys = KeySource::fixed(
            aws_sdk_secretsmanager::Client::new(&sdk),
            "keys".into(),
            test_ring(),
        );
        let store = Arc::new(AuthStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            "auth".into(),
        ));
        let auth = Arc::new(Authenticator::new(&settings, Arc::new(keys), store));
        auth.preload_revocations(Default::default()).await;
        let token = settings
            .policy
            .sign(
                &test_ring(),
                &settings
                    .policy
                    .claims("key:test", "tenant-a", &["chat".into()], "fam"),
            )
            .unwrap();
        (
            Deps::with_authenticator(SERVICE, &Env::new(&env), &sdk, auth).unwrap(),
            token,
        )
    }

    fn event(function: &str, file: &str, token: Option<&str>) -> Request {
        let path = format!(
            "{}/../../events/{function}/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut request =
            lambda_http::request::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    /// The same files `cargo lambda invoke --data-file` uses, with a fresh token
    /// added (a sample cannot hold one that stays valid); all are refused before
    /// any network I/O.
    #[tokio::test]
    async fn invalid_sample_events_get_their_documented_problems() {
        let (deps, token) = offline_deps().await;
        for (file, status, slug) in [
            ("malformed-body.json", 400, "malformed-json"),
            ("unknown-field.json", 400, "invalid-request"),
            ("unknown-model.json", 400, "invalid-request"),
            ("wrong-content-type.json", 415, "unsupported-media-type"),
            ("stream-on-buffered.json", 400, "invalid-request"),
        ] {
            let response = handle(&deps, event("api-chat", file, Some(&token))).await;
            assert_eq!(response.status(), status, "{file}");
            let problem: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(
                problem["type"],
                format!("urn:sophia:problem:{slug}"),
                "{file}"
            );
        }
        let response = handle_streaming(
            &deps,
            event("api-chat-stream", "malformed-body.json", Some(&token)),
        )
        .await;
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }

    #[tokio::test]
    async fn without_a_token_every_sample_is_401_with_a_challenge() {
        let (deps, _) = offline_deps().await;
        for file in [
            "completion.json",
            "malformed-body.json",
            "unknown-field.json",
        ] {
            let response = handle(&deps, event("api-chat", file, None)).await;
            assert_eq!(response.status(), 401, "{file}");
            assert_eq!(
                response.headers()["www-authenticate"],
                r#"Bearer realm="sophia""#
            );
        }
    }

    #[tokio::test]
    async fn a_token_without_the_chat_scope_is_403() {
        let (deps, _) = offline_deps().await;
        let policy = AuthSettings::from_env(&Env::new(&[
            ("AUTH_TABLE", "a"),
            ("SIGNING_KEYS_SECRET", "k"),
        ]))
        .unwrap()
        .policy;
        let token = policy
            .sign(
                &test_ring(),
                &policy.claims("s", "t", &["jobs".into()], "f"),
            )
            .unwrap();
        let response = handle(&deps, event("api-chat", "completion.json", Some(&token))).await;
        assert_eq!(response.status(), 403);
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("insufficient_scope")
        );
    }

    #[tokio::test]
    async fn missing_configuration_is_named() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let env = [("CHAT_MODELS", "m")];
        let Err(InitError::Config(error)) = Deps::from_env(SERVICE, &Env::new(&env), &sdk).await
        else {
            panic!("expected a configuration error");
        };
        assert_eq!(error.variable, "AUTH_TABLE");
    }

    #[test]
    fn events_split_on_blank_lines_of_either_style() {
        assert_eq!(find_event_end(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: a\n"), None);
    }
}
