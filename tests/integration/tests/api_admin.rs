//! api-admin against the local AWS: keys, quotas, flags, and the audit log's
//! tamper evidence checked on the real table.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_admin::handler::{Deps, handle};
use aws_sdk_dynamodb::types::AttributeValue;
use harness::{
    Provisioned, issue_token, local_aws, request_with, sdk_config_for, status_and_json,
    unique_stack, with_bearer,
};
use serde_json::{Value, json};
use sophia_shared::config::Env;

struct Admin {
    stack: Provisioned,
    deps: Deps,
}

async fn admin() -> Admin {
    let stack = local_aws().provision(&unique_stack("admin"), &[]);
    let sdk = sdk_config_for(&local_aws().endpoint).await;
    let deps = Deps::from_env(&Env::new(&stack.env), &sdk).await.unwrap();
    Admin { stack, deps }
}

async fn call(
    a: &Admin,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let request = with_bearer(request_with(method, path, body.as_ref()), token);
    status_and_json(&handle(&a.deps, request).await)
}

async fn actions(a: &Admin, token: &str) -> Vec<String> {
    let (status, log) = call(a, token, "GET", "/v1/admin/audit", None).await;
    assert_eq!(status, 200);
    log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_with_an_audit_trail() {
    let a = admin().await;
    let token = issue_token(&a.stack, "tenant-a", &["admin", "chat"]).await;
    let (status, created) = call(
        &a,
        &token,
        "POST",
        "/v1/admin/keys",
        Some(json!({"name": "ci", "scopes": ["chat"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert!(created["api_key"].as_str().unwrap().starts_with("sk_"));
    let id = created["id"].as_str().unwrap().to_owned();

    let (_, listed) = call(&a, &token, "GET", "/v1/admin/keys", None).await;
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], id.as_str());
    assert!(
        keys[0].get("hash").is_none() && keys[0].get("api_key").is_none(),
        "{listed}"
    );

    let (status, _) = call(&a, &token, "DELETE", &format!("/v1/admin/keys/{id}"), None).await;
    assert_eq!(status, 204);
    let (_, listed) = call(&a, &token, "GET", "/v1/admin/keys", None).await;
    assert_eq!(listed["keys"][0]["revoked"], true);
    assert_eq!(
        actions(&a, &token).await,
        ["api_key.created", "api_key.revoked"]
    );
}

#[tokio::test]
async fn no_key_can_carry_more_power_than_its_creator() {
    let a = admin().await;
    let token = issue_token(&a.stack, "tenant-a", &["admin"]).await;
    let (status, problem) = call(
        &a,
        &token,
        "POST",
        "/v1/admin/keys",
        Some(json!({"name": "x", "scopes": ["platform"]})),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    let (status, _) = call(
        &a,
        &token,
        "POST",
        "/v1/admin/keys",
        Some(json!({"name": "x", "scopes": ["root"]})),
    )
    .await;
    assert_eq!(status, 400);
    let chat_only = issue_token(&a.stack, "tenant-a", &["chat"]).await;
    let (status, _) = call(&a, &chat_only, "GET", "/v1/admin/keys", None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn tenant_b_cannot_see_or_touch_tenant_a() {
    let a = admin().await;
    let token_a = issue_token(&a.stack, "tenant-a", &["admin"]).await;
    let token_b = issue_token(&a.stack, "tenant-b", &["admin"]).await;
    let (_, created) = call(
        &a,
        &token_a,
        "POST",
        "/v1/admin/keys",
        Some(json!({"name": "a", "scopes": ["admin"]})),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    call(
        &a,
        &token_a,
        "PUT",
        "/v1/admin/flags/beta",
        Some(json!({"value": true})),
    )
    .await;

    let (status, _) = call(
        &a,
        &token_b,
        "DELETE",
        &format!("/v1/admin/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404, "another tenant's key looks like no key");
    let (_, listed) = call(&a, &token_b, "GET", "/v1/admin/keys", None).await;
    assert_eq!(listed["keys"], json!([]));
    let (_, flags) = call(&a, &token_b, "GET", "/v1/admin/flags", None).await;
    assert_eq!(flags["flags"], json!({}));
    assert_eq!(
        actions(&a, &token_b).await,
        Vec::<String>::new(),
        "B's audit log holds nothing of A"
    );
    let (_, listed) = call(&a, &token_a, "GET", "/v1/admin/keys", None).await;
    assert_eq!(
        listed["keys"][0]["revoked"], false,
        "A's key survived B's attempt"
    );
}

#[tokio::test]
async fn quotas_are_set_by_the_platform_only_and_audited() {
    let a = admin().await;
    let tenant_admin = issue_token(&a.stack, "tenant-a", &["admin"]).await;
    let platform = issue_token(&a.stack, "operator", &["platform", "admin"]).await;
    let quota = json!({"requests_per_day": 50, "tokens_per_day": 9000});
    let (status, _) = call(
        &a,
        &tenant_admin,
        "PUT",
        "/v1/admin/tenants/tenant-a/quota",
        Some(quota.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &a,
        &platform,
        "PUT",
        "/v1/admin/tenants/tenant-a/quota",
        Some(quota.clone()),
    )
    .await;
    assert_eq!(status, 200);
    let (_, own) = call(&a, &tenant_admin, "GET", "/v1/admin/quota", None).await;
    assert_eq!(own, quota);
    let (status, _) = call(
        &a,
        &platform,
        "PUT",
        "/v1/admin/tenants/bad%20name/quota",
        Some(quota),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        actions(&a, &tenant_admin).await,
        ["quota.changed"],
        "audited in the affected tenant's log"
    );
}

#[tokio::test]
async fn flags_are_typed_and_audited() {
    let a = admin().await;
    let token = issue_token(&a.stack, "tenant-a", &["admin"]).await;
    for (name, value) in [
        ("beta", json!(true)),
        ("max-tools", json!(4)),
        ("greeting", json!("hi")),
    ] {
        let (status, _) = call(
            &a,
            &token,
            "PUT",
            &format!("/v1/admin/flags/{name}"),
            Some(json!({ "value": value })),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (_, flags) = call(&a, &token, "GET", "/v1/admin/flags", None).await;
    assert_eq!(
        flags["flags"],
        json!({"beta": true, "max-tools": 4.0, "greeting": "hi"})
    );
    let (status, _) = call(
        &a,
        &token,
        "PUT",
        "/v1/admin/flags/Bad",
        Some(json!({"value": true})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        &a,
        &token,
        "PUT",
        "/v1/admin/flags/x",
        Some(json!({"value": [1]})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(a.deps.flags.enabled("tenant-a", "beta", false).await);
    assert_eq!(
        actions(&a, &token)
            .await
            .iter()
            .filter(|a| *a == "flag.changed")
            .count(),
        3
    );
}

#[tokio::test]
async fn tampering_with_the_audit_log_is_detected_and_named() {
    let a = admin().await;
    let token = issue_token(&a.stack, "tenant-a", &["admin"]).await;
    for name in ["one", "two", "three", "four"] {
        call(
            &a,
            &token,
            "PUT",
            &format!("/v1/admin/flags/{name}"),
            Some(json!({"value": true})),
        )
        .await;
    }
    let (_, verified) = call(&a, &token, "GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(verified["intact"], true, "{verified}");

    let dynamodb = aws_sdk_dynamodb::Client::new(&local_aws().sdk_config().await);
    let table = a.stack.env("AUDIT_TABLE");
    let key = |seq: u64| {
        [
            ("pk".to_owned(), AttributeValue::S("audit#tenant-a".into())),
            ("sk".to_owned(), AttributeValue::S(format!("{seq:020}"))),
        ]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>()
    };
    // Someone with table access rewrites entry 2's target.
    let mut item = dynamodb
        .get_item()
        .table_name(table)
        .set_key(Some(key(2)))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    item.insert("target".into(), AttributeValue::S("flag:innocent".into()));
    dynamodb
        .put_item()
        .table_name(table)
        .set_item(Some(item.clone()))
        .send()
        .await
        .unwrap();
    let (_, verified) = call(&a, &token, "GET", "/v1/admin/audit/verify", None).await;
    assert_eq!(verified["intact"], false);
    assert_eq!(verified["tamper"], json!({"problem": "altered", "seq": 2}));

    // Put it back, then remove entry 3 instead.
    item.insert("target".into(), AttributeValue::S("flag:two".into()));
    dynamodb
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
    dynamodb
        .delete_item()
        .table_name(table)
        .set_key(Some(key(3)))
        .send()
        .await
        .unwrap();
    let verification = a.deps.audit.verify("tenant-a").await.unwrap();
    assert_eq!(
        serde_json::to_value(verification.tamper).unwrap(),
        json!({"problem": "missing", "seq": 3})
    );
}

#[tokio::test]
async fn hostile_requests_get_4xx_problems() {
    let a = admin().await;
    let token = issue_token(&a.stack, "tenant-a", &["admin"]).await;
    let raw = http::Request::builder()
        .method("POST")
        .uri("/v1/admin/keys")
        .header("content-type", "application/json")
        .body(lambda_http::Body::from("{\"name\": "))
        .unwrap();
    assert_eq!(
        handle(&a.deps, with_bearer(raw, &token)).await.status(),
        400
    );
    for (method, path, body) in [
        (
            "POST",
            "/v1/admin/keys",
            Some(json!({"name": "", "scopes": ["chat"]})),
        ),
        (
            "POST",
            "/v1/admin/keys",
            Some(json!({"name": "x", "scopes": [], "tenant": "tenant-b"})),
        ),
        ("DELETE", "/v1/admin/keys/not-hex", None),
        ("GET", "/v1/admin/nothing", None),
        ("PATCH", "/v1/admin/keys", None),
    ] {
        let (status, problem) = call(&a, &token, method, path, body).await;
        assert!((400..500).contains(&status), "{method} {path}: {status}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:sophia:problem:"),
            "{problem}"
        );
    }
    let (status, _) = call(&a, "not-a-token", "GET", "/v1/admin/keys", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn sample_events_get_their_documented_answers() {
    let a = admin().await;
    let token = issue_token(&a.stack, "tenant-a", &["admin", "chat"]).await;
    for (file, status) in [
        ("list-keys.json", 200),
        ("create-key.json", 201),
        ("create-key-unknown-scope.json", 400),
        ("verify-audit.json", 200),
    ] {
        let response = handle(
            &a.deps,
            with_bearer(harness::http_event("api-admin", file), &token),
        )
        .await;
        assert_eq!(response.status(), status, "{file}");
        let anonymous = handle(&a.deps, harness::http_event("api-admin", file)).await;
        assert_eq!(anonymous.status(), 401, "{file} without a token");
    }
}

#[tokio::test]
async fn the_audit_log_is_read_a_page_at_a_time() {
    let a = admin().await;
    let token = issue_token(&a.stack, "tenant-pages", &["admin"]).await;
    for i in 0..5 {
        let (status, _) = call(
            &a,
            &token,
            "PUT",
            &format!("/v1/admin/flags/flag-{i}"),
            Some(json!({"value": true})),
        )
        .await;
        assert_eq!(status, 200);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/admin/audit?limit=2".to_owned();
    loop {
        let (status, page) = call(&a, &token, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 2);
        seen.extend(entries.iter().map(|e| e["seq"].as_u64().unwrap()));
        match page["next_after"].as_u64() {
            Some(after) => path = format!("/v1/admin/audit?limit=2&after={after}"),
            None => break,
        }
    }
    // The five changes, then each read of a page is itself audited as it goes.
    assert!(seen.len() >= 5, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats: {seen:?}"
    );
    for bad in ["?limit=0", "?limit=5000", "?after=x", "?page=2"] {
        let (status, _) = call(&a, &token, "GET", &format!("/v1/admin/audit{bad}"), None).await;
        assert_eq!(status, 400, "{bad}");
    }
}

#[tokio::test]
async fn two_instances_appending_to_one_chain_keep_it_intact() {
    use sophia_shared::ops::audit::{AuditLog, Event};
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("audit-two"), &[]);
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws.sdk_config().await);
    let table = stack.env("AUDIT_TABLE").to_owned();
    // Each instance remembers the head it wrote; the other's appends move it.
    let (a, b) = (
        AuditLog::new(dynamodb.clone(), table.clone()),
        AuditLog::new(dynamodb.clone(), table),
    );
    let event = |target| Event {
        actor: "key:test",
        action: "flag.set",
        target,
        correlation_id: "it-audit",
        details: json!({}),
    };
    let mut seqs = Vec::new();
    for log in [&a, &a, &b, &a, &b, &b, &a] {
        seqs.push(log.append("tenant-a", &event("one")).await.unwrap().seq);
    }
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5, 6, 7],
        "no sequence number twice or skipped"
    );
    // Concurrent appends from both serialize on the head's condition.
    let (event_x, event_y) = (event("x"), event("y"));
    let (x, y) = tokio::join!(
        a.append("tenant-a", &event_x),
        b.append("tenant-a", &event_y)
    );
    let mut last = [x.unwrap().seq, y.unwrap().seq];
    last.sort_unstable();
    assert_eq!(last, [8, 9]);
    let verification = a.verify("tenant-a").await.unwrap();
    assert!(verification.intact, "{verification:?}");
    assert_eq!(verification.entries, 9);
    assert_eq!(a.entries("tenant-a").await.unwrap().len(), 9);
}
