//! The gateway's client for upstream MCP servers (Streamable HTTP).
//!
//! Written here rather than taken from rmcp's client because every outbound
//! call must go through [`OutboundClient`] (one pool, deadlines, bounded
//! answers), and because a Lambda instance needs per-server state that
//! survives invocations: the negotiated era, a legacy session, a breaker and a
//! bulkhead. It speaks both eras, as the 2026-07-28 revision's backward
//! compatibility section describes: it asks `server/discover` first, and a
//! server that answers it with 2026-07-28 among its versions is called
//! statelessly (`_meta`, `Mcp-Method`/`Mcp-Name`); any other answer means a
//! legacy server, which gets `initialize` (2025-11-25), keeps its
//! `Mcp-Session-Id` per instance and is re-initialized once when the session
//! expires (404). Answers may be JSON or an SSE stream; the response with the
//! request's ID is taken from either.
//!
//! Failures that say the server is unwell (unreachable, timeouts, 5xx, garbage)
//! count against its breaker; a JSON-RPC error is an answer and does not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fleet::breaker::{Admission, Breaker, BreakerState};
use crate::guard::bulkhead::Bulkhead;
use crate::mcp::McpSettings;
use crate::mcp::registry::{Credentials, UpstreamServer};
use crate::observability::RequestContext;
use crate::outbound::{Answer, Exchange, OutboundClient, OutboundError};

pub const MODERN: &str = "2026-07-28";
pub const LEGACY: &str = "2025-11-25";
/// `tools/list` pages read from one server at most.
const MAX_PAGES: usize = 10;
/// One deadline for a whole call: the registration's timeout, or the Lambda's
/// remaining time (minus the pipeline's margin) when that comes first.
fn call_deadline(server: &UpstreamServer, ctx: &RequestContext) -> Instant {
    (Instant::now() + Duration::from_millis(server.timeout_ms)).min(ctx.deadline)
}

/// An idempotent call is retried only with at least this much time left.
const MIN_RETRY_TIME: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("its circuit breaker is open after repeated failures (next try in {} s)", retry_in.as_secs().max(1))]
    CircuitOpen { retry_in: Duration },
    #[error("too many calls to it are in flight")]
    Busy,
    #[error("{0}")]
    Transport(OutboundError),
    #[error("it answered HTTP {0}")]
    Status(u16),
    #[error("it answered something that is not MCP: {0}")]
    Protocol(String),
    #[error("it answered JSON-RPC error {code}: {message}")]
    Rpc { code: i64, message: String },
    #[error("its credentials could not be read")]
    Credentials,
}

impl UpstreamError {
    /// Whether this says the server is unwell (for its breaker).
    fn is_failure(&self) -> bool {
        match self {
            Self::Transport(_) | Self::Protocol(_) => true,
            Self::Status(status) => *status >= 500 || *status == 429,
            Self::CircuitOpen { .. } | Self::Busy | Self::Rpc { .. } | Self::Credentials => false,
        }
    }

    /// Whether trying again may help (only idempotent tools are retried).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(error) => error.is_retryable(),
            Self::Status(status) => matches!(status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// A stable word for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Busy => "busy",
            Self::Transport(error) => error.kind(),
            Self::Status(_) => "bad_status",
            Self::Protocol(_) => "protocol",
            Self::Rpc { .. } => "rpc_error",
            Self::Credentials => "credentials",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Era {
    Modern,
    Legacy {
        protocol: String,
        session: Option<String>,
    },
}

#[derive(Debug, Clone)]
struct Connection {
    /// The registration it was made for: a replaced registration reconnects.
    url: String,
    version: u64,
    era: Era,
}

#[derive(Debug)]
struct ServerState {
    breaker: Mutex<Breaker>,
    bulkhead: Bulkhead,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

/// Calls upstream MCP servers; one per cold start.
#[derive(Debug)]
pub struct UpstreamClient {
    http: OutboundClient,
    settings: McpSettings,
    servers: Mutex<HashMap<String, Arc<ServerState>>>,
    next_id: AtomicU64,
}

impl UpstreamClient {
    pub fn new(http: OutboundClient, settings: McpSettings) -> Self {
        Self {
            http,
            settings,
            servers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    fn state(&self, server: &UpstreamServer) -> Arc<ServerState> {
        let mut servers = match self.servers.lock() {
            Ok(servers) => servers,
            Err(poisoned) => poisoned.into_inner(),
        };
        servers
            .entry(server.key())
            .or_insert_with(|| {
                Arc::new(ServerState {
                    breaker: Mutex::new(Breaker::new(self.settings.upstream_breaker)),
                    bulkhead: Bulkhead::new("mcp upstream", self.settings.upstream_concurrency),
                    connection: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }

    /// The breaker state of `server` on this instance (for tests and logs).
    pub fn breaker_state(&self, server: &UpstreamServer) -> BreakerState {
        let state = self.state(server);
        let breaker = match state.breaker.lock() {
            Ok(breaker) => breaker,
            Err(poisoned) => poisoned.into_inner(),
        };
        breaker.state()
    }

    /// Every tool `server` offers (its definitions as it sent them).
    pub async fn list_tools(
        &self,
        server: &UpstreamServer,
        credentials: Option<&Credentials>,
        ctx: &RequestContext,
    ) -> Result<Vec<Value>, UpstreamError> {
        let deadline = call_deadline(server, ctx);
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(cursor) => json!({"cursor": cursor}),
                None => json!({}),
            };
            let result = self
                .guarded(
                    server,
                    credentials,
                    "tools/list",
                    None,
                    params,
                    deadline,
                    ctx,
                )
                .await?;
            let page = result
                .get("tools")
                .and_then(Value::as_array)
                .ok_or_else(|| UpstreamError::Protocol("tools/list without tools".into()))?;
            tools.extend(page.iter().cloned());
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(tools)
    }

    /// Calls upstream tool `tool`; its `CallToolResult` as the server sent it.
    /// The registration's timeout bounds the whole call; `idempotent` tools are
    /// tried once more after a retryable failure when time is left.
    pub async fn call_tool(
        &self,
        server: &UpstreamServer,
        credentials: Option<&Credentials>,
        tool: &str,
        arguments: Value,
        idempotent: bool,
        ctx: &RequestContext,
    ) -> Result<Value, UpstreamError> {
        let deadline = call_deadline(server, ctx);
        let params = json!({"name": tool, "arguments": arguments});
        let call = |params| {
            self.guarded(
                server,
                credentials,
                "tools/call",
                Some(tool),
                params,
                deadline,
                ctx,
            )
        };
        match call(params.clone()).await {
            Err(error)
                if idempotent
                    && error.is_retryable()
                    && deadline.saturating_duration_since(Instant::now()) > MIN_RETRY_TIME =>
            {
                tracing::info!(server = %server.name, tool, %error, "retrying an idempotent upstream tool");
                call(params).await
            }
            other => other,
        }
    }

    /// One request through the server's breaker and bulkhead, by `deadline`.
    #[allow(clippy::too_many_arguments)]
    async fn guarded(
        &self,
        server: &UpstreamServer,
        credentials: Option<&Credentials>,
        method: &str,
        name: Option<&str>,
        params: Value,
        deadline: Instant,
        ctx: &RequestContext,
    ) -> Result<Value, UpstreamError> {
        let state = self.state(server);
        let admission = {
            let mut breaker = match state.breaker.lock() {
                Ok(breaker) => breaker,
                Err(poisoned) => poisoned.into_inner(),
            };
            breaker.admit(Instant::now()).0
        };
        if let Admission::Refused { retry_in } = admission {
            return Err(UpstreamError::CircuitOpen { retry_in });
        }
        let Some(_slot) = state.bulkhead.try_enter() else {
            if let Ok(mut breaker) = state.breaker.lock() {
                breaker.release();
            }
            return Err(UpstreamError::Busy);
        };
        let outcome = self
            .connected_request(
                &state,
                server,
                credentials,
                method,
                name,
                params,
                deadline,
                ctx,
            )
            .await;
        let failed = outcome
            .as_ref()
            .err()
            .is_some_and(UpstreamError::is_failure);
        let mut breaker = match state.breaker.lock() {
            Ok(breaker) => breaker,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(transition) = breaker.record(!failed, Instant::now()) {
            tracing::warn!(
                server = %server.name,
                tenant = %server.tenant,
                from = transition.from.as_str(),
                to = transition.to.as_str(),
                "upstream MCP server breaker"
            );
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn connected_request(
        &self,
        state: &ServerState,
        server: &UpstreamServer,
        credentials: Option<&Credentials>,
        method: &str,
        name: Option<&str>,
        params: Value,
        deadline: Instant,
        ctx: &RequestContext,
    ) -> Result<Value, UpstreamError> {
        for attempt in 0..2 {
            let era = {
                let mut connection = state.connection.lock().await;
                let current = connection
                    .as_ref()
                    .filter(|c| c.url == server.url && c.version == server.updated_at);
                match current {
                    Some(connection) => connection.era.clone(),
                    None => {
                        let era = self.connect(server, credentials, deadline, ctx).await?;
                        *connection = Some(Connection {
                            url: server.url.clone(),
                            version: server.updated_at,
                            era: era.clone(),
                        });
                        era
                    }
                }
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let answer = self
                .post(
                    server,
                    credentials,
                    &era,
                    message(id, method, params.clone(), &era),
                    method,
                    name,
                    deadline,
                    ctx,
                )
                .await?;
            // A legacy session the server no longer knows: initialize again, once.
            let expired = matches!(
                &era,
                Era::Legacy {
                    session: Some(_),
                    ..
                }
            ) && answer.status.as_u16() == 404;
            if expired && attempt == 0 {
                tracing::info!(server = %server.name, "upstream MCP session expired; initializing again");
                *state.connection.lock().await = None;
                continue;
            }
            return response_of(&answer, id);
        }
        Err(UpstreamError::Protocol("the session expired twice".into()))
    }

    async fn connect(
        &self,
        server: &UpstreamServer,
        credentials: Option<&Credentials>,
        deadline: Instant,
        ctx: &RequestContext,
    ) -> Result<Era, UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let discover = message(id, "server/discover", json!({}), &Era::Modern);
        let answer = self
            .post(
                server,
                credentials,
                &Era::Modern,
                discover,
                "server/discover",
                None,
                deadline,
                ctx,
            )
            .await?;
        if answer.status.is_success()
            && let Ok(result) = response_of(&answer, id)
            && result
                .get("supportedVersions")
                .and_then(Value::as_array)
                .is_some_and(|versions| versions.iter().any(|v| v == MODERN))
        {
            return Ok(Era::Modern);
        }
        // Anything else: a legacy server (the spec's fallback rule).
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let initialize = json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY,
                "capabilities": {},
                "clientInfo": {"name": "sophia-mcp-gateway", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let fresh = Era::Legacy {
            protocol: LEGACY.to_owned(),
            session: None,
        };
        let answer = self
            .post(
                server,
                credentials,
                &fresh,
                initialize,
                "initialize",
                None,
                deadline,
                ctx,
            )
            .await?;
        let result = response_of(&answer, id)?;
        let protocol = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(LEGACY)
            .to_owned();
        let session = answer
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let era = Era::Legacy { protocol, session };
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let answer = self
            .post(
                server,
                credentials,
                &era,
                initialized,
                "notifications/initialized",
                None,
                deadline,
                ctx,
            )
            .await?;
        if !answer.status.is_success() {
            return Err(UpstreamError::Status(answer.status.as_u16()));
        }
        tracing::info!(server = %server.name, "connected to a legacy MCP server");
        Ok(era)
    }

    #[allow(clippy::too_many_arguments)]
    async fn post(
        &self,
        server: &UpstreamServer,
        credentials: Option<&Credentials>,
        era: &Era,
        body: Value,
        method: &str,
        name: Option<&str>,
        deadline: Instant,
        ctx: &RequestContext,
    ) -> Result<Answer, UpstreamError> {
        let mut headers: Vec<(String, String)> = vec![(
            "accept".to_owned(),
            "application/json, text/event-stream".to_owned(),
        )];
        let mut add = |name: &str, value: String| headers.push((name.to_owned(), value));
        match era {
            Era::Modern => {
                add("mcp-protocol-version", MODERN.to_owned());
                add("mcp-method", method.to_owned());
                if let Some(name) = name {
                    add("mcp-name", header_safe(name));
                }
            }
            Era::Legacy { protocol, session } => {
                if method != "initialize" {
                    add("mcp-protocol-version", protocol.clone());
                }
                if let Some(session) = session {
                    add("mcp-session-id", session.clone());
                }
            }
        }
        // The registration's credentials, never the caller's token.
        headers.extend(credentials.map(Credentials::headers).unwrap_or_default());
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.http
            .exchange(Exchange {
                method: http::Method::POST,
                url: &server.url,
                headers: &headers,
                json: Some(&body),
                timeout,
                max_answer_bytes: self.settings.max_upstream_answer_bytes,
                ctx: Some(ctx),
            })
            .await
            .map_err(UpstreamError::Transport)
    }
}

/// A JSON-RPC request; a modern one carries the per-request `_meta`.
fn message(id: u64, method: &str, mut params: Value, era: &Era) -> Value {
    if *era == Era::Modern
        && let Value::Object(object) = &mut params
    {
        object.insert(
            "_meta".to_owned(),
            json!({
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {
                    "name": "sophia-mcp-gateway",
                    "version": env!("CARGO_PKG_VERSION"),
                },
            }),
        );
    }
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// `Mcp-Name` as the spec encodes values that are not plain header text.
fn header_safe(value: &str) -> String {
    use base64::Engine as _;
    let sentinel = value.starts_with("=?base64?") && value.ends_with("?=");
    let padded = value.starts_with(' ') || value.ends_with(' ');
    let plain = value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') && !padded && !sentinel;
    if plain {
        value.to_owned()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(value)
        )
    }
}

/// The `result` of the response to request `id`, from a JSON or SSE answer.
fn response_of(answer: &Answer, id: u64) -> Result<Value, UpstreamError> {
    let content_type = answer
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let messages: Vec<Value> = if content_type.starts_with("text/event-stream") {
        sse_messages(&answer.body)
    } else if content_type.starts_with("application/json") {
        match serde_json::from_slice(&answer.body) {
            Ok(value) => vec![value],
            Err(_) => vec![],
        }
    } else {
        vec![]
    };
    let response = messages
        .into_iter()
        .find(|m| m.get("id").and_then(Value::as_u64) == Some(id));
    match response {
        Some(response) => {
            if let Some(error) = response.get("error") {
                return Err(UpstreamError::Rpc {
                    code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .chars()
                        .take(500)
                        .collect(),
                });
            }
            response
                .get("result")
                .cloned()
                .ok_or_else(|| UpstreamError::Protocol("a response without result".into()))
        }
        None if !answer.status.is_success() => Err(UpstreamError::Status(answer.status.as_u16())),
        None => Err(UpstreamError::Protocol(format!(
            "no JSON-RPC response in a {} answer",
            if content_type.is_empty() {
                "untyped"
            } else {
                &content_type
            }
        ))),
    }
}

/// The JSON messages of an SSE body (`data:` lines, joined per event).
fn sse_messages(body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(body);
    let mut messages = Vec::new();
    let mut data = String::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.is_empty() {
            if !data.is_empty() {
                if let Ok(value) = serde_json::from_str(&data) {
                    messages.push(value);
                }
                data.clear();
            }
        } else if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, content_type: &str, body: &str) -> Answer {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        Answer {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers,
            body: body.to_owned().into(),
        }
    }

    #[test]
    fn the_response_is_found_in_json_or_sse() {
        let json = answer(
            200,
            "application/json",
            r#"{"jsonrpc":"2.0","id":7,"result":{"a":1}}"#,
        );
        assert_eq!(response_of(&json, 7).unwrap()["a"], 1);
        let sse = answer(
            200,
            "text/event-stream",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
             event: message\nid: x\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\n\
             data: \"result\":{\"b\":2}}\n\n",
        );
        assert_eq!(response_of(&sse, 7).unwrap()["b"], 2);
        assert!(matches!(
            response_of(&sse, 8),
            Err(UpstreamError::Protocol(_))
        ));
    }

    #[test]
    fn errors_and_statuses_are_told_apart() {
        let rpc = answer(
            200,
            "application/json",
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad"}}"#,
        );
        let error = response_of(&rpc, 1).unwrap_err();
        assert!(matches!(&error, UpstreamError::Rpc { code: -32602, .. }));
        assert!(
            !error.is_failure(),
            "an answer is not a failure of the server"
        );
        let down = answer(503, "text/plain", "busy");
        let error = response_of(&down, 1).unwrap_err();
        assert!(matches!(error, UpstreamError::Status(503)));
        assert!(error.is_failure() && error.is_retryable());
        let garbage = answer(200, "text/html", "<html>");
        assert!(response_of(&garbage, 1).unwrap_err().is_failure());
    }

    #[test]
    fn modern_messages_carry_meta_and_names_are_encoded() {
        let modern = message(3, "tools/list", json!({}), &Era::Modern);
        assert_eq!(
            modern["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
            MODERN
        );
        let legacy = message(
            3,
            "tools/list",
            json!({}),
            &Era::Legacy {
                protocol: LEGACY.into(),
                session: None,
            },
        );
        assert!(legacy["params"].get("_meta").is_none());
        assert_eq!(header_safe("get-sum"), "get-sum");
        assert_eq!(header_safe("héllo"), "=?base64?aMOpbGxv?=");
    }
}
