//! The MCP gateway end to end: api-mcp's handler (the pipeline, rmcp, the
//! gateway) against the local AWS, a fleet simulator, and real upstream MCP
//! servers on loopback (server-everything from npm, the Python SDK's server),
//! and the official Python SDK as a client (tests/integration/mcp_clients_check.py)
//! against the handler served over HTTP.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleet_sim::SimServer;
use harness::mcp::{Upstream, serve_mcp_over_http};
use harness::{
    Provisioned, body_json, issue_token_for, json_request, local_aws, start_sim, status_and_json,
    unique_stack, with_bearer,
};
use serde_json::{Value, json};
use sophia_shared::config::Env;

mod federation;

const MODERN: &str = "2026-07-28";
const LEGACY: &str = "2025-06-18";
const EVERY_SCOPE: [&str; 4] = ["tools", "memory", "jobs", "chat"];

/// Headers, body, the HTTP status and the JSON-RPC code expected (0: none).
type Framing<'a> = (Vec<(&'a str, &'a str)>, String, u16, i64);

struct Gateway {
    stack: Provisioned,
    _sim: SimServer,
    deps: std::sync::Arc<api_mcp::handler::Deps>,
    admin: api_admin::handler::Deps,
}

/// What an answer was: status, headers, JSON body (or null).
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

impl Answer {
    fn result(&self) -> &Value {
        assert_eq!(self.status, 200, "{}", self.body);
        assert!(self.body.get("error").is_none(), "{}", self.body);
        &self.body["result"]
    }

    fn error_code(&self) -> i64 {
        self.body["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no JSON-RPC error in {} {}", self.status, self.body))
    }
}

async fn setup(extra: &[(&str, &str)]) -> Gateway {
    let stack = local_aws().provision(&unique_stack("mcp"), &[]);
    let sim = start_sim().await;
    let mut env: HashMap<String, String> = stack.env_with(&[
        ("FLEET_ENDPOINTS", &format!("primary={}", sim.base_url())),
        ("FLEET_MAX_ATTEMPTS", "1"),
        ("RATE_LIMIT_PRINCIPAL_BURST", "100000"),
        ("RATE_LIMIT_IP_BURST", "100000"),
        ("MCP_ALLOW_PRIVATE_UPSTREAMS", "true"),
        ("CORS_ALLOWED_ORIGINS", "https://app.example.com"),
    ]);
    env.remove("FLEET_TOKEN_SECRET");
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let sdk = local_aws().sdk_config().await;
    let deps = api_mcp::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let admin = api_admin::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    Gateway {
        stack,
        _sim: sim,
        deps: std::sync::Arc::new(deps),
        admin,
    }
}

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "it", "version": "1"},
    })
}

impl Gateway {
    async fn token(&self, tenant: &str, scopes: &[&str]) -> String {
        issue_token_for(&self.stack, tenant, "key:it", scopes).await
    }

    /// POST /mcp with `headers` and a raw body.
    async fn post(&self, token: Option<&str>, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut request = http::Request::builder()
            .method("POST")
            .uri("/mcp")
            .header("host", "127.0.0.1:9000");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request
            .body(lambda_http::Body::from(body.to_owned()))
            .unwrap();
        if let Some(token) = token {
            request = with_bearer(request, token);
        }
        self.send(request).await
    }

    async fn send(&self, request: lambda_http::Request) -> Answer {
        let response = api_mcp::handler::handle(&self.deps, request).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if response.body().is_empty() {
            Value::Null
        } else {
            body_json(&response)
        };
        assert!(status < 500, "a server error: {status} {body}");
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A 2026-07-28 request: `_meta` in the body, the headers mirrored.
    async fn modern(&self, token: &str, method: &str, mut params: Value) -> Answer {
        params["_meta"] = meta();
        let name = params["name"].as_str().map(str::to_owned);
        let mut headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", MODERN),
            ("mcp-method", method),
        ];
        if let Some(name) = &name {
            headers.push(("mcp-name", name));
        }
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        self.post(Some(token), &headers, &body.to_string()).await
    }

    /// A 2025-06-18 request (after `initialize`; no session exists to send).
    async fn legacy(&self, token: &str, method: &str, params: Value) -> Answer {
        let headers = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", LEGACY),
        ];
        let body = json!({"jsonrpc": "2.0", "id": "a", "method": method, "params": params});
        self.post(Some(token), &headers, &body.to_string()).await
    }

    async fn call(&self, token: &str, tool: &str, arguments: Value) -> Answer {
        self.modern(
            token,
            "tools/call",
            json!({"name": tool, "arguments": arguments}),
        )
        .await
    }

    async fn admin(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let request = with_bearer(json_request(method, path, &body, None), token);
        status_and_json(&api_admin::handler::handle(&self.admin, request).await)
    }

    async fn register(&self, admin: &str, name: &str, registration: Value) {
        let (status, body) = self
            .admin(
                admin,
                "PUT",
                &format!("/v1/admin/mcp-servers/{name}"),
                registration,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn audit(&self, tenant: &str) -> Vec<sophia_shared::ops::audit::Entry> {
        let sdk = local_aws().sdk_config().await;
        sophia_shared::ops::audit::AuditLog::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            self.stack.env("AUDIT_TABLE").to_owned(),
        )
        .entries(tenant)
        .await
        .unwrap()
    }
}

fn tool_names(result: &Value) -> Vec<String> {
    result["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn both_eras_discover_list_and_call_sophias_own_tools() {
    let g = setup(&[]).await;
    let token = g.token("acme", &EVERY_SCOPE).await;

    // 2025-era clients: initialize is answered, and no session is issued.
    let init = json!({"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}});
    let answer = g
        .post(
            Some(&token),
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
            ],
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}).to_string(),
        )
        .await;
    assert_eq!(answer.result()["protocolVersion"], LEGACY);
    assert!(answer.result()["capabilities"]["tools"].is_object());
    assert!(!answer.headers.contains_key("mcp-session-id"));
    let initialized = g
        .post(
            Some(&token),
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", LEGACY),
            ],
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        )
        .await;
    assert_eq!(initialized.status, 202);

    // 2026-07-28: server/discover, and lists say how long they keep.
    let discovered = g.modern(&token, "server/discover", json!({})).await;
    let versions = discovered.result()["supportedVersions"].as_array().unwrap();
    for version in [MODERN, "2025-11-25", LEGACY] {
        assert!(versions.iter().any(|v| v == version), "{versions:?}");
    }
    let listed = g.modern(&token, "tools/list", json!({})).await;
    let listed = listed.result();
    assert_eq!(
        tool_names(listed),
        [
            "memory_store",
            "memory_recall",
            "memory_forget",
            "job_submit",
            "job_status",
            "chat_complete"
        ]
    );
    assert_eq!(listed["cacheScope"], "private");
    assert!(listed["ttlMs"].as_u64().unwrap() <= 30_000);
    let store = &listed["tools"][0];
    assert_eq!(store["inputSchema"]["required"][0], "text");
    assert_eq!(store["annotations"]["destructiveHint"], false);
    assert!(store["outputSchema"]["$defs"]["Memory"].is_object());

    // A token's scopes decide which tools it sees.
    let memory_only = g.token("acme", &["tools", "memory"]).await;
    let listed = g.legacy(&memory_only, "tools/list", json!({})).await;
    assert_eq!(
        tool_names(listed.result()),
        ["memory_store", "memory_recall", "memory_forget"]
    );
    let refused = g
        .call(
            &memory_only,
            "job_status",
            json!({"id": format!("job_{}", "0".repeat(32))}),
        )
        .await;
    assert_eq!(refused.error_code(), -32602);
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("jobs")
    );

    // The memory tools are the memory API: store in one era, recall in the other.
    for fact in [
        "Dana owns the Q3 migration",
        "Deploys freeze on Fridays",
        "The office plants need water",
    ] {
        let stored = g.call(&token, "memory_store", json!({"text": fact})).await;
        let stored = stored.result();
        assert_eq!(stored["isError"], false, "{stored}");
        assert_eq!(stored["resultType"], "complete");
        assert_eq!(stored["structuredContent"]["created"], true);
        assert_eq!(stored["structuredContent"]["text"], fact);
    }
    let again = g
        .call(
            &token,
            "memory_store",
            json!({"text": "dana owns the Q3 migration"}),
        )
        .await;
    assert_eq!(again.result()["structuredContent"]["created"], false);
    assert_eq!(again.result()["structuredContent"]["merged"], "exact");
    let recalled = g
        .legacy(
            &token,
            "tools/call",
            json!({"name": "memory_recall", "arguments": {"query": "Who runs the Q3 migration?", "k": 2}}),
        )
        .await;
    let recalled = recalled.result();
    assert!(
        recalled.get("resultType").is_none(),
        "a 2025 client gets a 2025 result"
    );
    assert_eq!(
        recalled["structuredContent"]["data"][0]["memory"]["text"],
        "dana owns the Q3 migration"
    );

    // Jobs and one completion through the fleet client.
    let request = json!({"model": "sophia-small", "messages": [{"role": "user", "content": "hi"}]});
    let submitted = g
        .call(
            &token,
            "job_submit",
            json!({"request": request, "idempotency_key": "mcp-1"}),
        )
        .await;
    let job = submitted.result()["structuredContent"].clone();
    assert_eq!(job["object"], "job", "{job}");
    let replayed = g
        .call(
            &token,
            "job_submit",
            json!({"request": request, "idempotency_key": "mcp-1"}),
        )
        .await;
    assert_eq!(replayed.result()["structuredContent"]["id"], job["id"]);
    let status = g.call(&token, "job_status", json!({"id": job["id"]})).await;
    assert_eq!(status.result()["structuredContent"]["id"], job["id"]);
    let other_tenant = g.token("globex", &EVERY_SCOPE).await;
    let hidden = g
        .call(&other_tenant, "job_status", json!({"id": job["id"]}))
        .await;
    assert_eq!(
        hidden.result()["isError"],
        true,
        "another tenant's job is not found"
    );
    assert!(text(hidden.result()).contains("not found"));
    let completed = g.call(&token, "chat_complete", request.clone()).await;
    let completion = &completed.result()["structuredContent"];
    assert_eq!(completion["object"], "chat.completion", "{completion}");

    // Forget everything: the right to be forgotten, as a tool.
    let forgotten = g.call(&token, "memory_forget", json!({"all": true})).await;
    assert_eq!(forgotten.result()["structuredContent"]["forgotten"], 3);

    // Every call is audited without its arguments.
    let entries = g.audit("acme").await;
    let calls: Vec<_> = entries.iter().filter(|e| e.action == "tool.call").collect();
    assert!(calls.len() >= 10, "{} tool calls audited", calls.len());
    assert!(
        calls
            .iter()
            .any(|e| e.target == "tool:memory_store" && e.details.contains("\"ok\""))
    );
    assert!(
        calls
            .iter()
            .all(|e| !e.details.contains("Dana") && !e.details.contains("migration"))
    );
}

#[tokio::test]
async fn origin_and_bearer_are_checked_before_the_protocol() {
    let g = setup(&[]).await;
    let accept = ("accept", "application/json, text/event-stream");
    let json_type = ("content-type", "application/json");
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

    let anonymous = g.post(None, &[accept, json_type], list).await;
    assert_eq!(anonymous.status, 401);
    let challenge = anonymous.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(
            r#"resource_metadata="http://127.0.0.1:9000/.well-known/oauth-protected-resource/mcp""#
        ),
        "{challenge}"
    );
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let request = http::Request::builder()
            .uri(path)
            .header("host", "127.0.0.1:9000")
            .body(lambda_http::Body::Empty)
            .unwrap();
        let metadata = g.send(request).await;
        assert_eq!(metadata.status, 200);
        assert_eq!(metadata.body["resource"], "http://127.0.0.1:9000/mcp");
        assert!(
            metadata.body["scopes_supported"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "tools")
        );
    }

    // A token for another audience is not ours to accept.
    let settings = sophia_shared::auth::AuthSettings::from_env(&Env::new(&g.stack.env)).unwrap();
    let keys = sophia_shared::auth::KeySource::load(
        aws_sdk_secretsmanager::Client::new(&local_aws().sdk_config().await),
        settings.signing_keys_secret.clone(),
    )
    .await
    .unwrap();
    let mut claims = settings
        .policy
        .claims("key:it", "acme", &["tools".to_owned()], "fam");
    claims.aud = "another-api".into();
    let foreign = settings
        .policy
        .sign(&keys.current().await, &claims)
        .unwrap();
    let refused = g.post(Some(&foreign), &[accept, json_type], list).await;
    assert_eq!(refused.status, 401);
    assert!(
        refused.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    let chat_only = g.token("acme", &["chat"]).await;
    assert_eq!(
        g.post(Some(&chat_only), &[accept, json_type], list)
            .await
            .status,
        403
    );

    // DNS rebinding: a browser origin that is not allowed is refused, token or not.
    let token = g.token("acme", &["tools"]).await;
    let evil = g
        .post(
            Some(&token),
            &[accept, json_type, ("origin", "https://evil.example")],
            list,
        )
        .await;
    assert_eq!(evil.status, 403);
    assert_eq!(
        evil.body["type"].as_str().unwrap(),
        "urn:sophia:problem:origin-not-allowed"
    );
    assert_eq!(
        g.post(
            None,
            &[accept, json_type, ("origin", "https://evil.example")],
            list
        )
        .await
        .status,
        403
    );
    let allowed = g
        .post(
            Some(&token),
            &[accept, json_type, ("origin", "https://app.example.com")],
            list,
        )
        .await;
    assert_eq!(allowed.status, 200);

    // No stream, no session to delete.
    for method in ["GET", "DELETE"] {
        let request = with_bearer(
            http::Request::builder()
                .method(method)
                .uri("/mcp")
                .body(lambda_http::Body::Empty)
                .unwrap(),
            &token,
        );
        let answer = g.send(request).await;
        assert_eq!(answer.status, 405, "{method}");
        assert_eq!(answer.headers["allow"], "POST");
    }
}

#[tokio::test]
async fn malformed_calls_get_the_specs_errors_and_never_a_server_error() {
    let g = setup(&[("MCP_MAX_ARGUMENT_BYTES", "2048")]).await;
    let token = g.token("acme", &EVERY_SCOPE).await;
    let accept = ("accept", "application/json, text/event-stream");
    let json_type = ("content-type", "application/json");
    let modern = ("mcp-protocol-version", MODERN);

    // Framing: (headers, body, HTTP status, JSON-RPC code).
    let list = |extra: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{}{extra}}}}}"#,
            meta()
        )
    };
    let cases: Vec<Framing> = vec![
        (vec![accept, json_type], "{not json".into(), 400, -32700),
        (
            vec![accept, json_type],
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#.into(),
            400,
            -32600,
        ),
        (
            vec![accept, json_type],
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/list"}"#.into(),
            400,
            -32600,
        ),
        (
            vec![accept, json_type],
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"tools/list"}"#.into(),
            400,
            -32600,
        ),
        (
            vec![accept, json_type, modern, ("mcp-method", "tools/list")],
            list(""),
            200,
            0,
        ),
        (vec![accept, json_type, modern], list(""), 400, -32020),
        (
            vec![accept, json_type, modern, ("mcp-method", "tools/call")],
            list(""),
            400,
            -32020,
        ),
        (
            vec![
                accept,
                json_type,
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-method", "tools/list"),
            ],
            list(""),
            400,
            -32020,
        ),
        (
            vec![
                accept,
                json_type,
                ("mcp-protocol-version", "2099-01-01"),
                ("mcp-method", "tools/list"),
            ],
            list(""),
            400,
            -32022,
        ),
        (
            vec![accept, json_type, modern, ("mcp-method", "no/such")],
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"no/such","params":{{"_meta":{}}}}}"#,
                meta()
            ),
            404,
            -32601,
        ),
    ];
    for (headers, body, status, code) in cases {
        let answer = g.post(Some(&token), &headers, &body).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        if code != 0 {
            assert_eq!(answer.error_code(), code, "{body}");
        }
    }
    let unsupported = g
        .post(
            Some(&token),
            &[
                accept,
                json_type,
                ("mcp-protocol-version", "2099-01-01"),
                ("mcp-method", "tools/list"),
            ],
            &list(""),
        )
        .await;
    assert!(
        unsupported.body["error"]["data"]["supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == MODERN)
    );

    // Content negotiation: problems, like every other refusal of the API.
    let no_accept = g.post(Some(&token), &[json_type, modern], &list("")).await;
    assert_eq!(no_accept.status, 406);
    let not_json = g
        .post(
            Some(&token),
            &[accept, ("content-type", "text/plain"), modern],
            &list(""),
        )
        .await;
    assert_eq!(not_json.status, 415);

    // Calls that are not valid calls: -32602, never a transport error.
    let huge = "x".repeat(4096);
    for (tool, arguments) in [
        ("no_such_tool", json!({})),
        ("memory_store", json!({"text": 42})),
        ("memory_store", json!({"text": "ok", "colour": "blue"})),
        ("memory_recall", json!({})),
        ("memory_forget", json!({"id": "mem_0", "all": true})),
        ("job_submit", json!({"request": {"model": "sophia-small"}})),
        (
            "job_submit",
            json!({"request": {"model": "sophia-small", "messages": []}, "idempotency_key": "bad key"}),
        ),
        ("memory_store", json!({"text": huge})),
        ("otherco__echo", json!({})),
    ] {
        let answer = g.call(&token, tool, arguments.clone()).await;
        assert_eq!(
            answer.error_code(),
            -32602,
            "{tool} {arguments}: {}",
            answer.body
        );
    }
    let not_an_object = g
        .post(
            Some(&token),
            &[accept, json_type, modern, ("mcp-method", "tools/call"), ("mcp-name", "memory_store")],
            &format!(r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"memory_store","arguments":[1],"_meta":{}}}}}"#, meta()),
        )
        .await;
    assert_eq!(not_an_object.error_code(), -32602);

    // Refusals of the library are results the model can read and act on.
    let too_long = g
        .call(&token, "memory_recall", json!({"query": "x", "k": 10_000}))
        .await;
    let too_long = too_long.result();
    assert_eq!(too_long["isError"], true);
    assert!(
        text(too_long).starts_with("memory_recall failed:"),
        "{too_long}"
    );
}

#[tokio::test]
async fn each_principal_has_a_rate_per_tool() {
    let g = setup(&[("MCP_TOOL_RATE_PER_MIN", "1"), ("MCP_TOOL_RATE_BURST", "1")]).await;
    let token = g.token("acme", &EVERY_SCOPE).await;
    let recall = json!({"query": "anything"});
    assert_eq!(
        g.call(&token, "memory_recall", recall.clone())
            .await
            .result()["isError"],
        false
    );
    let limited = g.call(&token, "memory_recall", recall.clone()).await;
    let limited = limited.result();
    assert_eq!(limited["isError"], true);
    assert!(text(limited).contains("rate limited"), "{limited}");
    // Another tool, or another principal, has its own allowance.
    let status = g
        .call(&token, "memory_store", json!({"text": "separate bucket"}))
        .await;
    assert_eq!(status.result()["isError"], false);
    let other = issue_token_for(&g.stack, "acme", "key:other", &EVERY_SCOPE).await;
    assert_eq!(
        g.call(&other, "memory_recall", recall).await.result()["isError"],
        false
    );
}

/// A spent budget (issue 14): the tools that spend answer `isError` naming the
/// budget and its reset time; the others keep working.
#[tokio::test]
async fn a_spent_budget_stops_the_spending_tools_only() {
    let g = setup(&[]).await;
    let token = g.token("acme", &EVERY_SCOPE).await;
    let platform = g.token("platform", &["admin", "platform"]).await;
    let (status, _) = g
        .admin(
            &platform,
            "PUT",
            "/v1/admin/tenants/acme/budget",
            json!({"monthly_usd": 0.000001}),
        )
        .await;
    assert_eq!(status, 200);
    let request = json!({"model": "sophia-small", "messages": [{"role": "user", "content": "hi"}]});
    // The call that crosses the budget completes; the next ones are refused.
    let crossing = g.call(&token, "chat_complete", request.clone()).await;
    assert_eq!(crossing.result()["isError"], false);
    let job = json!({"request": request.clone()});
    for (tool, arguments) in [("chat_complete", request), ("job_submit", job)] {
        let refused = g.call(&token, tool, arguments).await;
        let refused = refused.result();
        assert_eq!(refused["isError"], true, "{tool}: {refused}");
        assert_eq!(
            refused["structuredContent"]["error"]["type"],
            "budget-exceeded"
        );
        assert!(
            text(refused).contains("monthly budget is spent"),
            "{refused}"
        );
    }
    let recall = g
        .call(&token, "memory_recall", json!({"query": "anything"}))
        .await;
    assert_eq!(recall.result()["isError"], false, "reads keep working");
}

#[tokio::test]
async fn the_sample_events_answer_as_documented() {
    let g = setup(&[]).await;
    let token = g.token("acme", &EVERY_SCOPE).await;
    for (file, status, code) in [
        ("initialize.json", 200, 0),
        ("discover.json", 200, 0),
        ("tools-list.json", 200, 0),
        ("memory-recall.json", 200, 0),
        ("header-mismatch.json", 400, -32020),
        ("batch.json", 400, -32600),
        ("resource-metadata.json", 200, 0),
    ] {
        let answer = g
            .send(with_bearer(harness::http_event("api-mcp", file), &token))
            .await;
        assert_eq!(answer.status, status, "{file}: {}", answer.body);
        if code != 0 {
            assert_eq!(answer.error_code(), code, "{file}");
        }
        match file {
            "memory-recall.json" => assert_eq!(answer.result()["isError"], false),
            "resource-metadata.json" => assert_eq!(
                answer.body["resource"],
                "https://abc123.execute-api.us-east-1.amazonaws.com/api/mcp"
            ),
            _ => {}
        }
    }
    let unauthenticated = g
        .send(harness::http_event("api-mcp", "tools-list.json"))
        .await;
    assert_eq!(unauthenticated.status, 401);
    let challenge = unauthenticated.headers["www-authenticate"]
        .to_str()
        .unwrap();
    assert!(
        challenge.contains("https://abc123.execute-api.us-east-1.amazonaws.com/api/.well-known/oauth-protected-resource/mcp"),
        "{challenge}"
    );
    let admin = g.token("acme", &["admin"]).await;
    let response = api_admin::handler::handle(
        &g.admin,
        with_bearer(
            harness::http_event("api-admin", "register-mcp-server.json"),
            &admin,
        ),
    )
    .await;
    assert_eq!(response.status(), 200, "{:?}", response.body());
}
