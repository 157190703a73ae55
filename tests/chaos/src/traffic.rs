//! Steady mixed traffic from several concurrent clients, each a tenant of its
//! own (so billing can be checked per kind of traffic), until the end time.
//! Every answer is recorded with what the invariants need.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::stack::{Stack, Tenant};

/// What one answer was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A whole answer: JSON that parsed, or a stream that ended with `[DONE]`.
    Complete,
    /// A stream the server ended with an `error` event (no `[DONE]`).
    Broken,
    /// Another 2xx (a job accepted, a memory stored, a recall, a tool result).
    Ok,
    /// A 4xx or 5xx answer.
    Refused,
    /// No answer at all (connection failed, timed out).
    NoAnswer,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub route: &'static str,
    /// Seconds since the traffic started.
    pub at: f64,
    pub latency_ms: f64,
    pub status: u16,
    pub outcome: Outcome,
    /// The problem `type` of a non-2xx answer, when it was problem+json.
    pub problem: Option<String>,
    pub retry_after: bool,
    /// A 500 that is not ours: `cargo lambda watch`'s own plain-text answer.
    pub emulator: bool,
}

/// What the traffic left that the invariants check against the stored state.
#[derive(Debug, Default)]
pub struct Ledger {
    pub records: Vec<Record>,
    /// Jobs answered 202 (IDs), each once.
    pub jobs: Vec<String>,
    /// `Idempotency-Key` replays that answered another job or a new one.
    pub replay_mismatches: Vec<String>,
    /// Memories answered 201.
    pub memories: Vec<String>,
    /// Successful `chat_complete` tool results (billed to the tools tenant).
    pub tool_completions: u64,
}

pub type Shared = Arc<Mutex<Ledger>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client's loop: `step` is called until `until`, pausing `pause` between calls.
pub struct Client<'a> {
    pub stack: &'a Stack,
    pub tenant: &'a Tenant,
    pub started: Instant,
    pub until: Instant,
    pub pause: Duration,
    pub shared: Shared,
    token: Option<(Instant, String)>,
}

impl<'a> Client<'a> {
    pub fn new(
        stack: &'a Stack,
        tenant: &'a Tenant,
        started: Instant,
        until: Instant,
        shared: Shared,
    ) -> Self {
        Self {
            stack,
            tenant,
            started,
            until,
            pause: Duration::from_millis(50),
            shared,
            token: None,
        }
    }

    /// A valid access token, renewed every 10 minutes (they last 15).
    async fn bearer(&mut self) -> Option<(String, String)> {
        if self
            .token
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > Duration::from_secs(600))
        {
            match self.stack.token(self.tenant).await {
                Ok(token) => self.token = Some((Instant::now(), token)),
                Err(error) => {
                    eprintln!(
                        "  chaos: {} could not get a token: {error}",
                        self.tenant.name
                    );
                    return None;
                }
            }
        }
        self.token
            .as_ref()
            .map(|(_, t)| ("authorization".to_owned(), format!("Bearer {t}")))
    }

    /// Sends one request and records its answer; the body when there was one.
    async fn call(
        &mut self,
        route: &'static str,
        method: http::Method,
        path: &str,
        extra: &[(String, String)],
        body: Option<&Value>,
    ) -> Option<(u16, http::HeaderMap, Vec<u8>)> {
        let mut headers = extra.to_vec();
        headers.push(self.bearer().await?);
        let sent = Instant::now();
        let at = self.started.elapsed().as_secs_f64();
        let answer = self
            .stack
            .send(method, path, &headers, body, Duration::from_secs(60))
            .await;
        let latency_ms = sent.elapsed().as_secs_f64() * 1000.0;
        let mut record = Record {
            route,
            at,
            latency_ms,
            status: 0,
            outcome: Outcome::NoAnswer,
            problem: None,
            retry_after: false,
            emulator: false,
        };
        let Ok(answer) = answer else {
            lock(&self.shared).records.push(record);
            return None;
        };
        record.status = answer.status.as_u16();
        record.retry_after = answer.headers.contains_key(http::header::RETRY_AFTER);
        let problem_json = answer
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/problem+json"));
        if answer.status.is_success() {
            record.outcome = Outcome::Ok;
        } else {
            record.outcome = Outcome::Refused;
            if problem_json {
                let problem: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
                record.problem = problem["type"].as_str().map(str::to_owned);
            }
            record.emulator = answer.status.as_u16() == 500 && !problem_json;
        }
        let reply = (record.status, answer.headers.clone(), answer.body.to_vec());
        lock(&self.shared).records.push(record);
        Some(reply)
    }

    fn reclassify_last(&self, outcome: Outcome) {
        if let Some(last) = lock(&self.shared).records.last_mut() {
            last.outcome = outcome;
        }
    }

    async fn pause(&self) {
        tokio::time::sleep(self.pause).await;
    }

    fn running(&self) -> bool {
        Instant::now() < self.until
    }
}

fn completion(text: &str, stream: bool) -> Value {
    json!({
        "model": "sophia-small",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 16,
        "stream": stream,
    })
}

/// Chat completions, in one piece and streamed, alternately.
pub async fn chat(mut client: Client<'_>, id: usize) {
    let mut n = 0u64;
    while client.running() {
        n += 1;
        let stream = n.is_multiple_of(2);
        let route = if stream { "chat streamed" } else { "chat" };
        let body = completion(
            &format!("chaos {id}-{n}: how is the migration going"),
            stream,
        );
        if let Some((200, _, bytes)) = client
            .call(
                route,
                http::Method::POST,
                "/v1/chat/completions",
                &[],
                Some(&body),
            )
            .await
        {
            let whole = if stream {
                bytes.ends_with(b"data: [DONE]\n\n")
            } else {
                serde_json::from_slice::<Value>(&bytes)
                    .is_ok_and(|v| v["choices"].as_array().is_some_and(|c| !c.is_empty()))
            };
            client.reclassify_last(if whole {
                Outcome::Complete
            } else {
                Outcome::Broken
            });
        }
        client.pause().await;
    }
}

/// Jobs, half with an `Idempotency-Key`; every fifth request replays a key.
pub async fn jobs(mut client: Client<'_>) {
    let mut n = 0u64;
    let mut keyed: Vec<(String, Value, String)> = Vec::new();
    while client.running() {
        n += 1;
        let replay = n.is_multiple_of(5) && !keyed.is_empty();
        let (key, body) = if replay {
            let (key, body, _) = &keyed[(n as usize / 5) % keyed.len()];
            (Some(key.clone()), body.clone())
        } else {
            let body = completion(&format!("chaos job {n}"), false);
            let key = (n.is_multiple_of(2))
                .then(|| format!("chaos-{n}-{}", uuid::Uuid::new_v4().simple()));
            (key, body)
        };
        let headers: Vec<(String, String)> = key
            .iter()
            .map(|k| ("idempotency-key".to_owned(), k.clone()))
            .collect();
        let answer = client
            .call(
                "jobs",
                http::Method::POST,
                "/v1/jobs",
                &headers,
                Some(&body),
            )
            .await;
        if let Some((status @ (200 | 202), headers, bytes)) = answer {
            let id = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned));
            let replayed = headers.contains_key("idempotent-replayed");
            match (id, replay) {
                (Some(id), true) => {
                    let original = keyed
                        .iter()
                        .find(|(k, _, _)| Some(k) == key.as_ref())
                        .map(|(_, _, id)| id.clone());
                    if original.as_deref() != Some(id.as_str()) || !replayed {
                        lock(&client.shared).replay_mismatches.push(format!(
                            "key {key:?}: answered {status} job {id}, replayed={replayed}, first {original:?}"
                        ));
                    }
                }
                (Some(id), false) => {
                    if let Some(key) = key {
                        keyed.push((key, body, id.clone()));
                    }
                    lock(&client.shared).jobs.push(id);
                }
                (None, _) => {}
            }
        }
        client.pause().await;
    }
}

/// Memories stored, and recalled every third request.
pub async fn memory(mut client: Client<'_>) {
    let mut n = 0u64;
    while client.running() {
        n += 1;
        if n.is_multiple_of(3) {
            let query = json!({"query": "who owns the migration", "k": 5});
            client
                .call(
                    "memory recall",
                    http::Method::POST,
                    "/v1/memory/search",
                    &[],
                    Some(&query),
                )
                .await;
        } else {
            let text =
                json!({"text": format!("Chaos fact {n}: team {} owns service {}", n % 7, n)});
            if let Some((201, _, bytes)) = client
                .call(
                    "memory store",
                    http::Method::POST,
                    "/v1/memory",
                    &[],
                    Some(&text),
                )
                .await
                && let Some(id) = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
            {
                lock(&client.shared).memories.push(id);
            }
        }
        client.pause().await;
    }
}

/// MCP tool calls (a 2025-06-18 client: no `_meta` needed): recalls and completions.
pub async fn tools(mut client: Client<'_>) {
    let mut n = 0u64;
    let headers = [
        (
            "accept".to_owned(),
            "application/json, text/event-stream".to_owned(),
        ),
        ("mcp-protocol-version".to_owned(), "2025-06-18".to_owned()),
    ];
    while client.running() {
        n += 1;
        let (tool, arguments) = if n.is_multiple_of(2) {
            (
                "chat_complete",
                completion(&format!("chaos tool {n}"), false),
            )
        } else {
            ("memory_recall", json!({"query": "migration"}))
        };
        let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        let route = if tool == "chat_complete" {
            "tool chat_complete"
        } else {
            "tool memory_recall"
        };
        if let Some((200, _, bytes)) = client
            .call(route, http::Method::POST, "/mcp", &headers, Some(&body))
            .await
        {
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let failed = answer["result"]["isError"] != false;
            if failed {
                client.reclassify_last(Outcome::Refused);
            } else if tool == "chat_complete" {
                lock(&client.shared).tool_completions += 1;
            }
        }
        client.pause().await;
    }
}
