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
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use futures_util::StreamExt;
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
            embedding_dims: 16,
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
}

impl Sim {
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

    async fn behaviour(&self) -> Behaviour {
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

type SimState = State<Arc<Sim>>;

fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "message": message, "type": kind, "code": status.as_u16() } })),
    )
        .into_response()
}

/// What a fault turns a request into, if it does not let it through.
enum Faulted {
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
fn aborted() -> Response {
    Body::from_stream(futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("injected connection abort"))
    }))
    .into_response()
}

async fn gate(sim: &Sim, headers: &HeaderMap, needs_auth: bool) -> Result<Faulted, Response> {
    sim.counters.requests.fetch_add(1, Ordering::Relaxed);
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

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stream_options: Option<Value>,
}

fn words_of(messages: &[Value]) -> (u32, String) {
    let mut count = 0u32;
    let mut last_user = String::new();
    for message in messages {
        let text = match &message["content"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        count = count.saturating_add(text.split_whitespace().count() as u32 + 4);
        if message["role"] == "user" {
            last_user = text;
        }
    }
    (count, last_user)
}

/// The completion: deterministic words derived from the prompt, so tests can check
/// that an answer belongs to its request.
fn completion_words(last_user: &str, n: u32) -> Vec<String> {
    let source: Vec<&str> = last_user.split_whitespace().collect();
    (0..n as usize)
        .map(|i| match source.get(i % source.len().max(1)) {
            Some(word) if i < source.len() => (*word).to_owned(),
            _ => format!("token{i}"),
        })
        .collect()
}

async fn chat_completions(State(sim): SimState, request: Request) -> Response {
    let headers = request.headers().clone();
    let faulted = match gate(&sim, &headers, true).await {
        Err(response) => return response,
        Ok(Faulted::Respond(response)) => return response,
        Ok(Faulted::Abort) => return aborted(),
        Ok(pass) => pass,
    };
    let Ok(body) = axum::body::to_bytes(request.into_body(), 4 * 1024 * 1024).await else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unreadable body",
        );
    };
    let chat: ChatRequest = match serde_json::from_slice(&body) {
        Ok(chat) => chat,
        Err(error) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid JSON: {error}"),
            );
        }
    };
    if chat.messages.is_empty() {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "messages is empty",
        );
    }
    let behaviour = sim.behaviour().await;
    let Faulted::Pass { drop_after, delay } = faulted else {
        return aborted();
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if behaviour.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    }
    let (prompt_tokens, last_user) = words_of(&chat.messages);
    let cap = chat
        .max_completion_tokens
        .or(chat.max_tokens)
        .unwrap_or(u32::MAX);
    let n = behaviour.completion_tokens.min(cap).max(1);
    let words = completion_words(&last_user, n);
    let model = chat.model.unwrap_or(behaviour.model.clone());
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": n,
        "total_tokens": prompt_tokens + n,
    });
    if !chat.stream {
        sim.counters.completions.fetch_add(1, Ordering::Relaxed);
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": words.join(" ") },
                "finish_reason": "stop",
            }],
            "usage": usage,
        }))
        .into_response();
    }
    sim.counters.streams.fetch_add(1, Ordering::Relaxed);
    let include_usage = chat
        .stream_options
        .as_ref()
        .and_then(|options| options["include_usage"].as_bool())
        .unwrap_or(false);
    let chunk = move |delta: Value, finish: Value| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    };
    let mut events: Vec<Value> = vec![chunk(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
    )];
    for (i, word) in words.iter().enumerate() {
        let text = if i == 0 {
            word.clone()
        } else {
            format!(" {word}")
        };
        events.push(chunk(json!({ "content": text }), Value::Null));
    }
    let mut last = chunk(json!({}), json!("stop"));
    if include_usage {
        last["usage"] = Value::Null;
    }
    events.push(last);
    if include_usage {
        let mut usage_chunk = chunk(json!({}), Value::Null);
        usage_chunk["choices"] = json!([]);
        usage_chunk["usage"] = usage;
        events.push(usage_chunk);
    }
    let ttft = Duration::from_millis(behaviour.ttft_ms);
    let pace = (behaviour.tokens_per_sec > 0)
        .then(|| Duration::from_micros(1_000_000 / behaviour.tokens_per_sec));
    let frames = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(i, event)| async move {
            if i == 0 && !ttft.is_zero() {
                tokio::time::sleep(ttft).await;
            } else if let Some(pace) = pace.filter(|_| i > 0) {
                tokio::time::sleep(pace).await;
            }
            if drop_after.is_some_and(|limit| i as u32 >= limit) {
                // Let hyper flush what was sent so far; then cut the connection.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(std::io::Error::other("injected stream drop"));
            }
            Ok::<Bytes, std::io::Error>(Bytes::from(format!("data: {event}\n\n")))
        },
    );
    let done = futures_util::stream::once(async { Ok(Bytes::from_static(b"data: [DONE]\n\n")) });
    let body = Body::from_stream(frames.chain(done));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: Value,
}

/// A deterministic unit vector per input text (FNV-1a seeded), so similar-recall
/// tests get stable results.
pub fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        state ^= u64::from(byte);
        state = state.wrapping_mul(0x0100_0000_01b3);
    }
    let mut vector: Vec<f32> = (0..dims)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let norm = vector
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    for x in &mut vector {
        *x /= norm;
    }
    vector
}

async fn embeddings(State(sim): SimState, headers: HeaderMap, body: Bytes) -> Response {
    let faulted = match gate(&sim, &headers, true).await {
        Err(response) | Ok(Faulted::Respond(response)) => return response,
        Ok(Faulted::Abort) => return aborted(),
        Ok(pass) => pass,
    };
    if let Faulted::Pass {
        delay: Some(delay), ..
    } = faulted
    {
        tokio::time::sleep(delay).await;
    }
    let request: EmbeddingsRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid JSON: {error}"),
            );
        }
    };
    let inputs: Vec<String> = match request.input {
        Value::String(text) => vec![text],
        Value::Array(items) => items
            .into_iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| item.to_string())
            })
            .collect(),
        _ => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "input must be a string or an array of strings",
            );
        }
    };
    let behaviour = sim.behaviour().await;
    if behaviour.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    }
    sim.counters.embeddings.fetch_add(1, Ordering::Relaxed);
    let tokens: usize = inputs
        .iter()
        .map(|text| text.split_whitespace().count())
        .sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({ "object": "embedding", "index": index, "embedding": embed(text, behaviour.embedding_dims) }))
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": request.model.unwrap_or(behaviour.model),
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response()
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
