//! Registered upstream MCP servers: federation, failures, the Python SDK, registrations.

use super::*;

#[tokio::test]
async fn registered_servers_are_federated_with_their_own_credentials_in_both_eras() {
    let g = setup(&[]).await;
    let everything = Upstream::everything();
    let echo = Upstream::header_echo();
    let admin = g.token("acme", &["admin"]).await;
    g.register(
        &admin,
        "everything",
        json!({"url": everything.url(), "allowed_tools": ["echo", "get-sum"], "timeout_ms": 5000}),
    )
    .await;
    g.register(
        &admin,
        "echo",
        json!({"url": echo.url(), "allowed_tools": ["*"], "credentials": {"bearer_token": "upstream-secret"}}),
    )
    .await;
    let (status, shown) = g
        .admin(&admin, "GET", "/v1/admin/mcp-servers/echo", json!(null))
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["has_credentials"], true);
    assert!(!shown.to_string().contains("upstream-secret"), "{shown}");

    let token = g.token("acme", &["tools"]).await;
    let listed = g.modern(&token, "tools/list", json!({})).await;
    let names = tool_names(listed.result());
    assert_eq!(
        names,
        ["echo__whoami", "everything__echo", "everything__get-sum"]
    );

    // A legacy server (sessions, SSE answers) and a modern one (stateless).
    let echoed = g
        .call(&token, "everything__echo", json!({"message": "hi"}))
        .await;
    assert_eq!(text(echoed.result()), "Echo: hi");
    let sum = g
        .legacy(
            &token,
            "tools/call",
            json!({"name": "everything__get-sum", "arguments": {"a": 2, "b": 3}}),
        )
        .await;
    assert!(text(sum.result()).contains('5'), "{}", sum.body);
    let whoami = g.call(&token, "echo__whoami", json!({})).await;
    assert_eq!(
        text(whoami.result()),
        "Bearer upstream-secret",
        "the caller's token never goes upstream"
    );

    // A tool outside the allow-list, or another tenant's server, does not exist.
    let hidden = g.call(&token, "everything__get-env", json!({})).await;
    assert_eq!(hidden.error_code(), -32602);
    let outsider = g.token("globex", &["tools"]).await;
    assert_eq!(
        g.call(&outsider, "everything__echo", json!({"message": "x"}))
            .await
            .error_code(),
        -32602
    );
    assert_eq!(
        tool_names(g.modern(&outsider, "tools/list", json!({})).await.result()),
        Vec::<String>::new()
    );

    // The upstream's own refusal of bad parameters is the caller's -32602.
    let bad = g
        .call(&token, "everything__get-sum", json!({"a": "two"}))
        .await;
    let refused = bad.body.get("error").is_some() || bad.result()["isError"] == true;
    assert!(refused, "{}", bad.body);

    let entries = g.audit("acme").await;
    let federated = entries
        .iter()
        .find(|e| e.target == "tool:echo__whoami")
        .unwrap();
    assert!(
        federated.details.contains(r#""server":"echo""#),
        "{}",
        federated.details
    );
    assert!(
        !entries
            .iter()
            .any(|e| e.details.contains("upstream-secret"))
    );
}

#[tokio::test]
async fn a_slow_or_dead_upstream_fails_within_its_timeout_and_opens_its_breaker() {
    let g = setup(&[
        ("MCP_BREAKER_FAILURES", "3"),
        ("MCP_BREAKER_COOL_DOWN_MS", "60000"),
    ])
    .await;
    let mut everything = Upstream::everything();
    let admin = g.token("acme", &["admin"]).await;
    g.register(
        &admin,
        "everything",
        json!({"url": everything.url(), "allowed_tools": ["echo", "trigger-long-running-operation"], "timeout_ms": 1000}),
    )
    .await;
    let token = g.token("acme", &["tools"]).await;
    assert_eq!(
        text(
            g.call(&token, "everything__echo", json!({"message": "up"}))
                .await
                .result()
        ),
        "Echo: up"
    );

    // Slower than the registration's timeout (1 s): a result saying so, in time.
    let started = Instant::now();
    let slow = g
        .call(
            &token,
            "everything__trigger-long-running-operation",
            json!({"duration": 6, "steps": 2}),
        )
        .await;
    let elapsed = started.elapsed();
    let slow = slow.result();
    assert_eq!(slow["isError"], true);
    assert!(
        text(slow).contains("everything") && text(slow).contains("timed out"),
        "{slow}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "the 6 s operation was cut at 1 s: {elapsed:?}"
    );

    // Killed mid-test: the next calls fail with the reason, then the breaker opens.
    everything.kill();
    for _ in 0..2 {
        let started = Instant::now();
        let dead = g
            .call(&token, "everything__echo", json!({"message": "down"}))
            .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let dead = dead.result();
        assert_eq!(dead["isError"], true);
        assert!(text(dead).contains(r#""everything""#), "{dead}");
    }
    let open = g
        .call(&token, "everything__echo", json!({"message": "again"}))
        .await;
    assert!(
        text(open.result()).contains("circuit breaker is open"),
        "{}",
        open.body
    );
    // The listing keeps the server's tools: the outage shows as failing calls.
    let names = tool_names(g.modern(&token, "tools/list", json!({})).await.result());
    assert!(names.contains(&"everything__echo".to_owned()), "{names:?}");
}

#[tokio::test]
async fn the_official_python_sdk_works_in_both_eras() {
    let g = setup(&[]).await;
    let everything = Upstream::everything();
    let admin = g.token("acme", &["admin"]).await;
    g.register(
        &admin,
        "everything",
        json!({"url": everything.url(), "allowed_tools": ["echo"]}),
    )
    .await;
    let (addr, server) = serve_mcp_over_http(g.deps.clone()).await;
    let token = g.token("acme", &["tools", "memory"]).await;
    let script = harness::workspace_root().join("tests/integration/mcp_clients_check.py");
    let output = tokio::process::Command::new(harness::python())
        .arg(script)
        .arg(format!("http://{addr}/mcp"))
        .arg(&token)
        .arg("everything__echo")
        .output()
        .await
        .unwrap();
    server.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the MCP SDK check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for mode in ["legacy", "2026-07-28", "auto"] {
        assert!(stdout.contains(&format!("mcp: {mode}")), "{stdout}");
    }
}

#[tokio::test]
async fn registrations_are_validated_and_removed_with_their_credentials() {
    let g = setup(&[
        ("MCP_ALLOW_PRIVATE_UPSTREAMS", "false"),
        ("MCP_MAX_SERVERS", "2"),
    ])
    .await;
    let admin = g.token("acme", &["admin"]).await;
    let put = |name: &'static str, body: Value| {
        let admin = admin.clone();
        let g = &g;
        async move {
            g.admin(
                &admin,
                "PUT",
                &format!("/v1/admin/mcp-servers/{name}"),
                body,
            )
            .await
        }
    };
    let good = json!({"url": "https://mcp.example.com/mcp", "allowed_tools": ["search"],
                      "credentials": {"headers": {"X-Api-Key": "k-123"}}});
    for (name, body, status) in [
        (
            "crm",
            json!({"url": "http://127.0.0.1:3901/mcp", "allowed_tools": ["x"]}),
            400,
        ),
        (
            "crm",
            json!({"url": "https://169.254.169.254/", "allowed_tools": ["x"]}),
            400,
        ),
        (
            "crm",
            json!({"url": "https://mcp.example.com", "allowed_tools": []}),
            400,
        ),
        (
            "crm",
            json!({"url": "https://mcp.example.com", "allowed_tools": ["x"], "timeout_ms": 10}),
            400,
        ),
        (
            "crm",
            json!({"url": "https://mcp.example.com", "allowed_tools": ["x"], "credentials": {"headers": {"Host": "x"}}}),
            400,
        ),
        (
            "crm",
            json!({"url": "https://mcp.example.com", "allowed_tools": ["x"], "colour": 1}),
            400,
        ),
        ("memory", good.clone(), 400),
        ("Bad_Name", good.clone(), 400),
        ("crm", good.clone(), 200),
        ("crm", good.clone(), 200),
        ("wiki", good.clone(), 200),
        ("third", good.clone(), 409),
    ] {
        let (answer, body_back) = put(name, body.clone()).await;
        assert_eq!(answer, status, "{name} {body}: {body_back}");
    }
    let (status, listed) = g
        .admin(&admin, "GET", "/v1/admin/mcp-servers", json!(null))
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["servers"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains("k-123"), "{listed}");

    let secrets = aws_sdk_secretsmanager::Client::new(&local_aws().sdk_config().await);
    let secret_id = format!("{}acme/crm", g.stack.env("MCP_SECRET_PREFIX"));
    let stored = secrets
        .get_secret_value()
        .secret_id(&secret_id)
        .send()
        .await
        .unwrap();
    assert!(stored.secret_string().unwrap().contains("k-123"));

    let (status, _) = g
        .admin(&admin, "DELETE", "/v1/admin/mcp-servers/crm", json!(null))
        .await;
    assert_eq!(status, 204);
    assert!(
        secrets
            .get_secret_value()
            .secret_id(&secret_id)
            .send()
            .await
            .is_err(),
        "the credentials are gone"
    );
    let (status, _) = g
        .admin(&admin, "DELETE", "/v1/admin/mcp-servers/crm", json!(null))
        .await;
    assert_eq!(status, 404);
    let outsider = g.token("globex", &["admin"]).await;
    let (status, _) = g
        .admin(&outsider, "GET", "/v1/admin/mcp-servers/wiki", json!(null))
        .await;
    assert_eq!(status, 404, "another tenant's registration is not found");
    let actions: Vec<String> = g
        .audit("acme")
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        actions.contains(&"mcp_server.registered".to_owned())
            && actions.contains(&"mcp_server.removed".to_owned())
    );
}
