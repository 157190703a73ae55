//! A stand-in for one GH200 inference server speaking the OpenAI-compatible API,
//! with faults that tests switch at run time over HTTP.
//!
//! Inference routes: `POST /v1/chat/completions` (plain and SSE-streamed, with
//! `usage`), `POST /v1/embeddings`, `GET /v1/models`, `GET /health`.
//! Control routes (never faulted, never authenticated):
//! - `GET  /_sim/state`   current behaviour, fault and counters;
//! - `PUT  /_sim/behaviour` `{"latency_ms", "ttft_ms", "tokens_per_sec", "completion_tokens"}`;
//! - `PUT  /_sim/fault`   `{"mode", "status", "retry_after_secs", "after_chunks", "delay_ms", "count"}`;
//! - `PUT  /_sim/tokens`  `{"tokens": ["…"]}`: bearer tokens accepted (empty: no auth);
//! - `POST /_sim/reset`   back to defaults, counters to zero.
//!
//! Fault modes: `none`; `error` (answer `status`, default 500); `rate_limit` (429 with
//! `Retry-After: retry_after_secs`); `black_hole` (accept, never answer); `reset`
//! (the connection is closed without an answer: the client sees a reset);
//! `drop_stream` (a stream is cut after `after_chunks` chunks); `slow_start` (wait
//! `delay_ms` before the first byte). `count` limits a fault to the next N requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Added before any inference answer.
    pub latency_ms: u64,
    /// Before the first streamed chunk.
    pub ttft_ms: u64,
    /// Pace of streamed tokens; 0 streams as fast as possible.
    pub tokens_per_sec: u64,
    /// Completion length when the request does not cap it lower.
    pub completion_tokens: u32,
    /// Dimensions of the embedding vectors.
    pub embedding_dims: usize,
    pub model: String,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            ttft_ms: 0,
            tokens_per_sec: 0,
            completion_tokens: 12,
            embedding_dims: 256,
            model: "sophia-small".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    #[default]
    None,
    Error,
    RateLimit,
    BlackHole,
    Reset,
    DropStream,
    SlowStart,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    pub mode: FaultMode,
    pub status: Option<u16>,
    pub retry_after_secs: Option<u64>,
    pub after_chunks: Option<u32>,
    pub delay_ms: Option<u64>,
    /// Apply to the next `count` requests only, then heal.
    pub count: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub requests: AtomicU64,
    pub completions: AtomicU64,
    pub streams: AtomicU64,
    pub embeddings: AtomicU64,
    pub faulted: AtomicU64,
    pub unauthorized: AtomicU64,
    pub connections_aborted: AtomicU64,
}

#[derive(Debug, Default)]
struct Control {
    behaviour: Behaviour,
    fault: Fault,
    tokens: Vec<String>,
}

/// Shared state of one simulated server.
#[derive(Debug, Default)]
pub struct Sim {
    control: Mutex<Control>,
    pub counters: Counters,
    /// The body of the last inference request, as received (tests check what
    /// was forwarded).
    last_request: std::sync::Mutex<Option<Value>>,
    /// The `traceparent` of every request that carried one, in order (tests
    /// check which span the caller named as parent).
    traceparents: std::sync::Mutex<Vec<String>>,
}

impl Sim {
    /// Every `traceparent` received so far.
    pub fn traceparents(&self) -> Vec<String> {
        self.traceparents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes one use of the current fault (decrementing `count`), if any applies.
    async fn take_fault(&self) -> Fault {
        let mut control = self.control.lock().await;
        let fault = control.fault.clone();
        if fault.mode == FaultMode::None {
            return fault;
        }
        if let Some(left) = control.fault.count {
            if left <= 1 {
                control.fault = Fault::default();
            } else {
                control.fault.count = Some(left - 1);
            }
        }
        self.counters.faulted.fetch_add(1, Ordering::Relaxed);
        fault
    }

    pub(crate) async fn behaviour(&self) -> Behaviour {
        self.control.lock().await.behaviour.clone()
    }

    async fn authorized(&self, headers: &HeaderMap) -> bool {
        let control = self.control.lock().await;
        if control.tokens.is_empty() {
            return true;
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        presented.is_some_and(|token| control.tokens.iter().any(|known| known == token))
    }

    fn state_json(&self, control: &Control) -> Value {
        let c = &self.counters;
        json!({
            "behaviour": control.behaviour,
            "fault": control.fault,
            "auth_required": !control.tokens.is_empty(),
            "counters": {
                "requests": c.requests.load(Ordering::Relaxed),
                "completions": c.completions.load(Ordering::Relaxed),
                "streams": c.streams.load(Ordering::Relaxed),
                "embeddings": c.embeddings.load(Ordering::Relaxed),
                "faulted": c.faulted.load(Ordering::Relaxed),
                "unauthorized": c.unauthorized.load(Ordering::Relaxed),
                "connections_aborted": c.connections_aborted.load(Ordering::Relaxed),
            },
        })
    }

    /// The body of the last chat or embeddings request.
    pub fn last_request(&self) -> Option<Value> {
        self.last_request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn keep_request(&self, body: &[u8]) {
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            *self
                .last_request
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
        }
    }

    /// Sets the fault directly (in-process tests).
    pub async fn set_fault(&self, fault: Fault) {
        self.control.lock().await.fault = fault;
    }

    /// Sets the behaviour directly (in-process tests).
    pub async fn set_behaviour(&self, behaviour: Behaviour) {
        self.control.lock().await.behaviour = behaviour;
    }

    /// Sets the accepted bearer tokens directly (in-process tests).
    pub async fn set_tokens(&self, tokens: Vec<String>) {
        self.control.lock().await.tokens = tokens;
    }
}

/// A running simulator. Dropping it, or calling [`SimServer::stop`], closes the
/// listener and every open connection, like a server that died.
pub struct SimServer {
    pub addr: SocketAddr,
    pub sim: Arc<Sim>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far on every route but the controls.
    pub fn requests(&self) -> u64 {
        self.sim.counters.requests.load(Ordering::Relaxed)
    }

    /// Stops accepting and aborts every open connection; waits until done.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Binds `addr` (port 0 for any free port) and serves until stopped.
pub async fn start(addr: SocketAddr) -> std::io::Result<SimServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let sim = Arc::new(Sim::default());
    let (shutdown, mut stopped) = watch::channel(false);
    let app = router(sim.clone());
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    connections.spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    });
    Ok(SimServer {
        addr,
        sim,
        shutdown,
        task: Some(task),
    })
}

pub mod chat;
pub mod embeddings;

use chat::chat_completions;
pub use embeddings::embed;
use embeddings::embeddings;

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/_sim/state", get(control_state))
        .route("/_sim/behaviour", put(control_behaviour))
        .route("/_sim/fault", put(control_fault))
        .route("/_sim/tokens", put(control_tokens))
        .route("/_sim/reset", post(control_reset))
        .route("/admin/tokens", put(admin_tokens))
        .with_state(sim)
}

pub(crate) type SimState = State<Arc<Sim>>;

pub(crate) fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "message": message, "type": kind, "code": status.as_u16() } })),
    )
        .into_response()
}

/// What a fault turns a request into, if it does not let it through.
pub(crate) enum Faulted {
    Respond(Response),
    /// Abort the connection without an answer.
    Abort,
    Pass {
        drop_after: Option<u32>,
        delay: Option<Duration>,
    },
}

async fn apply_fault(sim: &Sim) -> Faulted {
    let fault = sim.take_fault().await;
    match fault.mode {
        FaultMode::None => Faulted::Pass {
            drop_after: None,
            delay: None,
        },
        FaultMode::Error => {
            let status = fault
                .status
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Faulted::Respond(openai_error(status, "server_error", "injected fault"))
        }
        FaultMode::RateLimit => {
            let mut response = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "injected rate limit",
            );
            let secs = fault.retry_after_secs.unwrap_or(1);
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Faulted::Respond(response)
        }
        FaultMode::BlackHole => {
            std::future::pending::<()>().await;
            Faulted::Abort
        }
        FaultMode::Reset => {
            sim.counters
                .connections_aborted
                .fetch_add(1, Ordering::Relaxed);
            Faulted::Abort
        }
        FaultMode::DropStream => Faulted::Pass {
            drop_after: Some(fault.after_chunks.unwrap_or(2)),
            delay: None,
        },
        FaultMode::SlowStart => Faulted::Pass {
            drop_after: None,
            delay: Some(Duration::from_millis(fault.delay_ms.unwrap_or(5_000))),
        },
    }
}

/// An error body makes hyper abort the connection: the client sees a reset or an
/// incomplete message, never a well-formed answer.
pub(crate) fn aborted() -> Response {
    Body::from_stream(futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("injected connection abort"))
    }))
    .into_response()
}

pub(crate) async fn gate(
    sim: &Sim,
    headers: &HeaderMap,
    needs_auth: bool,
) -> Result<Faulted, Response> {
    sim.counters.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        sim.traceparents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(traceparent.to_owned());
    }
    let faulted = apply_fault(sim).await;
    if needs_auth && !sim.authorized(headers).await {
        sim.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        return Err(openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid or missing bearer token",
        ));
    }
    Ok(faulted)
}

async fn health(State(sim): SimState, headers: HeaderMap) -> Response {
    match gate(&sim, &headers, false).await {
        Err(response) | Ok(Faulted::Respond(response)) => response,
        Ok(Faulted::Abort) => aborted(),
        Ok(Faulted::Pass { delay, .. }) => {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            Json(json!({ "status": "ok" })).into_response()
        }
    }
}

async fn models(State(sim): SimState, headers: HeaderMap) -> Response {
    match gate(&sim, &headers, true).await {
        Err(response) | Ok(Faulted::Respond(response)) => response,
        Ok(Faulted::Abort) => aborted(),
        Ok(Faulted::Pass { .. }) => {
            let model = sim.behaviour().await.model;
            Json(json!({
                "object": "list",
                "data": [{ "id": model, "object": "model", "created": 0, "owned_by": "sophia-fleet" }],
            }))
            .into_response()
        }
    }
}

async fn control_state(State(sim): SimState) -> Response {
    let control = sim.control.lock().await;
    Json(sim.state_json(&control)).into_response()
}

async fn control_behaviour(State(sim): SimState, body: Bytes) -> Response {
    match serde_json::from_slice::<Behaviour>(&body) {
        Ok(behaviour) => {
            sim.control.lock().await.behaviour = behaviour;
            control_state(State(sim)).await
        }
        Err(error) => openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &error.to_string(),
        ),
    }
}

async fn control_fault(State(sim): SimState, body: Bytes) -> Response {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(fault) => {
            sim.control.lock().await.fault = fault;
            control_state(State(sim)).await
        }
        Err(error) => openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &error.to_string(),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tokens {
    tokens: Vec<String>,
}

async fn control_tokens(State(sim): SimState, body: Bytes) -> Response {
    match serde_json::from_slice::<Tokens>(&body) {
        Ok(tokens) => {
            sim.control.lock().await.tokens = tokens.tokens;
            control_state(State(sim)).await
        }
        Err(error) => openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &error.to_string(),
        ),
    }
}

/// The fleet-side token admin endpoint (what an auth proxy in front of vLLM
/// offers): replaces the accepted tokens; the caller must present one that is
/// accepted now. Used by secret rotation.
async fn admin_tokens(State(sim): SimState, headers: HeaderMap, body: Bytes) -> Response {
    if !sim.authorized(&headers).await {
        sim.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        return openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid or missing bearer token",
        );
    }
    match serde_json::from_slice::<Tokens>(&body) {
        Ok(tokens) if !tokens.tokens.is_empty() => {
            sim.control.lock().await.tokens = tokens.tokens;
            Json(json!({ "accepted": true })).into_response()
        }
        Ok(_) => openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "tokens must not be empty",
        ),
        Err(error) => openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &error.to_string(),
        ),
    }
}

async fn control_reset(State(sim): SimState) -> Response {
    {
        let mut control = sim.control.lock().await;
        *control = Control::default();
    }
    let c = &sim.counters;
    for counter in [
        &c.requests,
        &c.completions,
        &c.streams,
        &c.embeddings,
        &c.faulted,
        &c.unauthorized,
        &c.connections_aborted,
    ] {
        counter.store(0, Ordering::Relaxed);
    }
    control_state(State(sim)).await
}
