//! The smoke journey: one end-to-end walk through the API as a client sees it,
//! runnable against `make dev` and against any deployed stack (`make smoke
//! BASE=<url>`). API key → token → models → chat → streamed chat → embeddings →
//! a job submitted and polled to done → a memory stored, recalled (REST and the
//! MCP tool) and deleted → the refresh token revoked, refused, and the access
//! token refused once every verifier's revocation cache has expired.
//!
//! Each step is timed; the whole journey is bounded by one budget, and every
//! request's timeout is the budget left, so it never hangs. The first failure
//! stops the journey and names its step. Every request goes through the shared
//! [`OutboundClient`].

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::outbound::{Answer, Exchange, OutboundClient};
use serde_json::{Value, json};

/// The revision the MCP step speaks (`server/discover` era).
const MCP_REVISION: &str = "2026-07-28";
/// A single answer larger than this is a failure (a stream of a short chat is far smaller).
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// How often a job's status and a revoked token are polled.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// What the journey needs.
#[derive(Debug, Clone)]
pub struct Journey {
    /// The API base URL, without `/v1` (e.g. `http://127.0.0.1:9000`).
    pub base: String,
    /// An API key with the scopes `chat`, `jobs`, `memory`, `tools` and `admin`.
    pub api_key: String,
    pub chat_model: String,
    pub embedding_model: String,
    /// The whole journey's time limit.
    pub budget: Duration,
    /// How long a revoked access token may keep working (the verifiers'
    /// revocation cache, 5 s by default, plus margin).
    pub revocation_within: Duration,
}

/// One step that passed.
#[derive(Debug, Clone)]
pub struct Passed {
    pub step: &'static str,
    pub took: Duration,
    /// What the step saw, in a few words.
    pub detail: String,
}

/// The step that failed and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub step: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "smoke step `{}` failed: {}", self.step, self.reason)
    }
}

/// The steps, in order (for the report's numbering).
pub const STEPS: [&str; 13] = [
    "token",
    "models",
    "chat",
    "chat streamed",
    "embeddings",
    "job submitted",
    "job done",
    "memory stored",
    "memory recalled",
    "mcp memory_recall",
    "memory deleted",
    "dashboard",
    "token revoked",
];

/// Runs the journey, calling `report` after each step that passed.
pub async fn run(
    http: &OutboundClient,
    journey: &Journey,
    mut report: impl FnMut(&Passed),
) -> Result<Vec<Passed>, Failed> {
    let walk = Walk {
        http,
        journey,
        deadline: Instant::now() + journey.budget,
        passed: RefCell::new(Vec::new()),
        report: RefCell::new(&mut report),
    };
    let w = &walk;
    // Random: journeys of several hooks may run at once (same pid, same instant).
    let run_id = &format!("{:016x}", fastrand::u64(..));

    let (access, refresh) = walk
        .step("token", async move {
            let body = json!({"api_key": w.journey.api_key});
            let answer = w
                .call("POST", "/v1/auth/token", None, Some(&body), &[])
                .await?;
            let json = expect(&answer, 200)?;
            let access = text(&json, "/access_token")?;
            let refresh = text(&json, "/refresh_token")?;
            let scope = json["scope"].as_str().unwrap_or_default().to_owned();
            Ok(((access, refresh), format!("scopes: {scope}")))
        })
        .await?;
    let token = access.as_str();

    walk.step("models", async move {
        let json = expect(
            &w.call("GET", "/v1/models", Some(token), None, &[]).await?,
            200,
        )?;
        let ids: Vec<&str> = json["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|model| model["id"].as_str())
            .collect();
        for wanted in [&w.journey.chat_model, &w.journey.embedding_model] {
            if !ids.contains(&wanted.as_str()) {
                return Err(format!("model {wanted} is not listed (listed: {ids:?})"));
            }
        }
        Ok(((), format!("{} models", ids.len())))
    })
    .await?;

    let chat_body = &json!({
        "model": journey.chat_model,
        "messages": [{"role": "user", "content": "Say hello to the smoke test."}],
        "max_tokens": 16,
    });
    walk.step("chat", async move {
        let answer = w
            .call(
                "POST",
                "/v1/chat/completions",
                Some(token),
                Some(chat_body),
                &[],
            )
            .await?;
        let json = expect(&answer, 200)?;
        let content = text(&json, "/choices/0/message/content")?;
        let tokens = json["usage"]["total_tokens"].as_u64().unwrap_or(0);
        if tokens == 0 {
            return Err(format!("no usage in the answer: {json}"));
        }
        Ok(((), format!("{} characters, {tokens} tokens", content.len())))
    })
    .await?;

    let mut streamed_body = chat_body.clone();
    streamed_body["stream"] = json!(true);
    let streamed_body = &streamed_body;
    walk.step("chat streamed", async move {
        let answer = w
            .call(
                "POST",
                "/v1/chat/completions",
                Some(token),
                Some(streamed_body),
                &[],
            )
            .await?;
        if answer.status != 200 {
            return Err(unexpected(&answer, 200));
        }
        let content_type = header(&answer, "content-type");
        if !content_type.starts_with("text/event-stream") {
            return Err(format!(
                "content-type {content_type:?}, not text/event-stream"
            ));
        }
        let chunks = stream_chunks(&String::from_utf8_lossy(&answer.body))?;
        Ok(((), format!("{chunks} chunks, then [DONE]")))
    })
    .await?;

    walk.step("embeddings", async move {
        let body =
            json!({"model": w.journey.embedding_model, "input": ["the smoke test's sentence"]});
        let json = expect(
            &w.call("POST", "/v1/embeddings", Some(token), Some(&body), &[])
                .await?,
            200,
        )?;
        let dimensions = json
            .pointer("/data/0/embedding")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if dimensions == 0 {
            return Err(format!("no embedding in the answer: {json}"));
        }
        Ok(((), format!("{dimensions} dimensions")))
    })
    .await?;

    let location = walk
        .step("job submitted", async move {
            let idempotency = [("idempotency-key".to_owned(), format!("smoke-{run_id}"))];
            let answer = w
                .call(
                    "POST",
                    "/v1/jobs",
                    Some(token),
                    Some(chat_body),
                    &idempotency,
                )
                .await?;
            expect(&answer, 202)?;
            let location = header(&answer, "location");
            if !location.starts_with("/v1/jobs/") {
                return Err(format!("no job Location in the answer (got {location:?})"));
            }
            Ok((location.clone(), location))
        })
        .await?;

    walk.step("job done", async move {
        let mut polls = 0;
        loop {
            polls += 1;
            let json = expect(
                &w.call("GET", &location, Some(token), None, &[]).await?,
                200,
            )?;
            match json["status"].as_str() {
                Some("done") => {
                    text(&json, "/result/choices/0/message/content")?;
                    return Ok(((), format!("done after {polls} polls")));
                }
                Some("failed") => return Err(format!("the job failed: {}", json["error"])),
                Some("pending" | "running") => w.pause(POLL_EVERY).await?,
                _ => return Err(format!("an unknown job status: {json}")),
            }
        }
    })
    .await?;

    let fact = format!("The smoke test run {run_id} owns the release checklist");
    let memory_id = walk
        .step("memory stored", async move {
            let body = json!({"text": fact, "namespace": "smoke", "tags": ["smoke"]});
            let answer = w
                .call("POST", "/v1/memory", Some(token), Some(&body), &[])
                .await?;
            let json = expect(&answer, 201)?;
            let id = text(&json, "/id")?;
            let vector = json["vector"].as_str().unwrap_or("filled").to_owned();
            Ok((id.clone(), format!("{id} (vector {vector})")))
        })
        .await?;
    let memory_id = memory_id.as_str();

    let recall = &json!({"query": format!("who owns the release checklist in run {run_id}"), "namespace": "smoke", "k": 5});
    walk.step("memory recalled", async move {
        let answer = w
            .call("POST", "/v1/memory/search", Some(token), Some(recall), &[])
            .await?;
        let json = expect(&answer, 200)?;
        recalled(&json, memory_id)
    })
    .await?;

    walk.step("mcp memory_recall", async move {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {
                "name": "memory_recall",
                "arguments": recall,
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MCP_REVISION,
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "sophia-smoke", "version": env!("CARGO_PKG_VERSION")},
                },
            },
        });
        let headers = [
            ("accept".to_owned(), "application/json, text/event-stream".to_owned()),
            ("mcp-protocol-version".to_owned(), MCP_REVISION.to_owned()),
            ("mcp-method".to_owned(), "tools/call".to_owned()),
            ("mcp-name".to_owned(), "memory_recall".to_owned()),
        ];
        let json = expect(&w.call("POST", "/mcp", Some(token), Some(&body), &headers).await?, 200)?;
        if json["result"]["isError"] == json!(true) || json.get("error").is_some() {
            return Err(format!("the tool call failed: {json}"));
        }
        recalled(&json["result"]["structuredContent"], memory_id)
    })
    .await?;

    walk.step("memory deleted", async move {
        let path = format!("/v1/memory/{memory_id}");
        let answer = w.call("DELETE", &path, Some(token), None, &[]).await?;
        if !matches!(answer.status.as_u16(), 200 | 204) {
            return Err(unexpected(&answer, 204));
        }
        let gone = w.call("GET", &path, Some(token), None, &[]).await?;
        expect(&gone, 404)?;
        Ok(((), "then 404".to_owned()))
    })
    .await?;

    walk.step("dashboard", async move {
        let answer = w
            .call("GET", "/v1/dashboard", Some(token), None, &[])
            .await?;
        let json = expect(&answer, 200)?;
        let sections = json["sections"]
            .as_object()
            .ok_or_else(|| format!("no sections in {json}"))?;
        if let Some(error) = sections.get("usage").map(|usage| &usage["error"]) {
            if !error.is_null() {
                return Err(format!("the usage section failed: {error}"));
            }
        } else {
            return Err("no usage section".to_owned());
        }
        let failed: Vec<&str> = sections
            .iter()
            .filter(|(_, section)| !section["error"].is_null())
            .map(|(name, _)| name.as_str())
            .collect();
        let detail = if failed.is_empty() {
            format!("{} sections", sections.len())
        } else {
            format!(
                "{} sections; unreadable: {}",
                sections.len(),
                failed.join(", ")
            )
        };
        Ok(((), detail))
    })
    .await?;

    walk.step("token revoked", async move {
        let body = json!({"refresh_token": refresh});
        expect(
            &w.call("POST", "/v1/auth/revoke", None, Some(&body), &[])
                .await?,
            200,
        )?;
        let again = w
            .call("POST", "/v1/auth/refresh", None, Some(&body), &[])
            .await?;
        expect(&again, 401)?;
        // Verifiers cache the revocation list: the access token may work a little longer.
        let revoked_at = Instant::now();
        loop {
            let answer = w.call("GET", "/v1/models", Some(token), None, &[]).await?;
            match answer.status.as_u16() {
                401 => {
                    let after = revoked_at.elapsed();
                    return Ok((
                        (),
                        format!(
                            "refresh refused; access token refused after {:.1} s",
                            after.as_secs_f64()
                        ),
                    ));
                }
                200 if revoked_at.elapsed() < w.journey.revocation_within => {
                    w.pause(POLL_EVERY).await?;
                }
                200 => {
                    return Err(format!(
                        "the access token still works {:.0} s after its family was revoked",
                        w.journey.revocation_within.as_secs_f64()
                    ));
                }
                _ => return Err(unexpected(&answer, 401)),
            }
        }
    })
    .await?;

    Ok(walk.passed.into_inner())
}

struct Walk<'a> {
    http: &'a OutboundClient,
    journey: &'a Journey,
    deadline: Instant,
    passed: RefCell<Vec<Passed>>,
    report: RefCell<&'a mut dyn FnMut(&Passed)>,
}

impl Walk<'_> {
    /// Times one step; its work returns a value for later steps and a detail.
    async fn step<T>(
        &self,
        step: &'static str,
        work: impl Future<Output = Result<(T, String), String>>,
    ) -> Result<T, Failed> {
        let started = Instant::now();
        let (value, detail) = work.await.map_err(|reason| Failed { step, reason })?;
        let passed = Passed {
            step,
            took: started.elapsed(),
            detail,
        };
        (self.report.borrow_mut())(&passed);
        self.passed.borrow_mut().push(passed);
        Ok(value)
    }

    /// One request, within what is left of the budget.
    async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        json: Option<&Value>,
        extra: &[(String, String)],
    ) -> Result<Answer, String> {
        let left = self.left()?;
        let method = http::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut headers: Vec<(String, String)> = extra.to_vec();
        if let Some(token) = bearer {
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        let url = format!("{}{path}", self.journey.base.trim_end_matches('/'));
        self.http
            .exchange(Exchange {
                method: method.clone(),
                url: &url,
                headers: &headers,
                json,
                timeout: left,
                max_answer_bytes: MAX_ANSWER_BYTES,
                ctx: None,
            })
            .await
            .map_err(|error| format!("{method} {path}: {error}"))
    }

    async fn pause(&self, pause: Duration) -> Result<(), String> {
        tokio::time::sleep(pause.min(self.left()?)).await;
        self.left().map(|_| ())
    }

    fn left(&self) -> Result<Duration, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(format!(
                "the journey's budget of {} s ran out",
                self.journey.budget.as_secs()
            ))
        } else {
            Ok(left)
        }
    }
}

/// The answer's JSON body when its status is `status`.
fn expect(answer: &Answer, status: u16) -> Result<Value, String> {
    if answer.status.as_u16() != status {
        return Err(unexpected(answer, status));
    }
    if answer.body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&answer.body)
        .map_err(|error| format!("the {status} answer is not JSON ({error})"))
}

/// "expected 200, got 503 …" with the problem's type and detail when there is one.
fn unexpected(answer: &Answer, wanted: u16) -> String {
    let body = String::from_utf8_lossy(&answer.body);
    let said = match serde_json::from_str::<Value>(&body) {
        Ok(problem) if problem.get("type").is_some() => format!(
            "{} ({})",
            problem["type"].as_str().unwrap_or_default(),
            problem["detail"]
                .as_str()
                .or(problem["title"].as_str())
                .unwrap_or_default()
        ),
        _ => body.chars().take(300).collect(),
    };
    format!("expected {wanted}, got {}: {said}", answer.status.as_u16())
}

fn header(answer: &Answer, name: &str) -> String {
    answer
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn text(json: &Value, pointer: &str) -> Result<String, String> {
    json.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("no {pointer} in the answer: {json}"))
}

/// The memory is among the recalled ones.
fn recalled(json: &Value, memory_id: &str) -> Result<((), String), String> {
    let results = json["data"].as_array().cloned().unwrap_or_default();
    match results
        .iter()
        .position(|r| r["memory"]["id"].as_str() == Some(memory_id))
    {
        Some(rank) => Ok(((), format!("rank {} of {}", rank + 1, results.len()))),
        None => Err(format!("{memory_id} was not recalled: {json}")),
    }
}

/// Counts the content chunks of a chat stream and checks it ends with `[DONE]`.
pub fn stream_chunks(stream: &str) -> Result<usize, String> {
    let data: Vec<&str> = stream
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    if data.last() != Some(&"[DONE]") {
        return Err(format!(
            "the stream does not end with data: [DONE] (last event: {:?})",
            data.last()
        ));
    }
    let mut chunks = 0;
    for event in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(event)
            .map_err(|error| format!("a stream event is not JSON ({error}): {event}"))?;
        if let Some(error) = chunk.get("error") {
            return Err(format!("the stream carried an error: {error}"));
        }
        if chunk
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
            .is_some_and(|text| !text.is_empty())
        {
            chunks += 1;
        }
    }
    if chunks == 0 {
        return Err("the stream carried no content".to_owned());
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_needs_content_and_an_end() {
        let good = "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(stream_chunks(good), Ok(2));
        let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\n";
        assert!(stream_chunks(cut).unwrap_err().contains("[DONE]"));
        let empty = "data: [DONE]\n\n";
        assert!(stream_chunks(empty).unwrap_err().contains("no content"));
        let failed = "data: {\"error\":{\"message\":\"fleet unavailable\"}}\n\ndata: [DONE]\n\n";
        assert!(
            stream_chunks(failed)
                .unwrap_err()
                .contains("fleet unavailable")
        );
    }

    #[tokio::test]
    async fn an_unreachable_api_fails_the_first_step_by_name() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let http = OutboundClient::new(Default::default()).unwrap();
        let journey = Journey {
            base: format!("http://127.0.0.1:{port}"),
            api_key: "sk_x_y".into(),
            chat_model: "m".into(),
            embedding_model: "e".into(),
            budget: Duration::from_secs(5),
            revocation_within: Duration::from_secs(1),
        };
        let failed = run(&http, &journey, |_| {}).await.unwrap_err();
        assert_eq!(failed.step, "token");
        assert!(failed.reason.contains("/v1/auth/token"), "{failed}");
    }
}
