//! api-auth and the pipeline's token checks against the local AWS: real API keys
//! in the auth table, signing keys in the local Secrets Manager.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use api_auth::handler::{Deps as AuthDeps, handle as auth};
use api_chat::handler::Deps as ChatDeps;
use base64::Engine;
use harness::chat_handle as chat;
use harness::{
    Provisioned, body_json, json_request, local_aws, sdk_config_for, start_sim, unique_stack,
    with_bearer,
};
use serde_json::{Value, json};
use sophia_shared::auth::store::AuthStore;
use sophia_shared::config::Env;

struct Stack {
    stack: Provisioned,
    auth: AuthDeps,
    chat: ChatDeps,
    store: AuthStore,
    _sim: fleet_sim::SimServer,
}

async fn stack() -> Stack {
    let stack = local_aws().provision(&unique_stack("auth"), &[]);
    let sim = start_sim().await;
    let fleet = format!("primary={}", sim.base_url());
    // Revocations are re-read on every request here, so "afterwards" is immediate.
    let mut env = stack.env_with(&[("FLEET_ENDPOINTS", &fleet), ("REVOCATION_CACHE_MS", "0")]);
    env.remove("FLEET_TOKEN_SECRET");
    let sdk = sdk_config_for(&local_aws().endpoint).await;
    let auth = AuthDeps::from_env(&Env::new(&env), &sdk).await.unwrap();
    let chat = ChatDeps::from_env(&Env::new(&env), &sdk).await.unwrap();
    let store = AuthStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        stack.env("AUTH_TABLE").to_owned(),
    );
    Stack {
        stack,
        auth,
        chat,
        store,
        _sim: sim,
    }
}

async fn post(s: &Stack, path: &str, body: Value) -> (u16, Value) {
    let response = auth(&s.auth, json_request("POST", path, &body, None)).await;
    let status = response.status().as_u16();
    (status, body_json(&response))
}

async fn chat_with(s: &Stack, token: &str) -> lambda_http::Response<lambda_http::Body> {
    let body = json!({"model": "sophia-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    chat(
        &s.chat,
        with_bearer(
            json_request("POST", "/v1/chat/completions", &body, None),
            token,
        ),
    )
    .await
}

async fn login(s: &Stack, tenant: &str, scopes: &[&str]) -> (String, Value) {
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    let (_, api_key) = s
        .store
        .create_api_key(tenant, &scopes, "test key")
        .await
        .unwrap();
    let (status, tokens) = post(s, "/v1/auth/token", json!({ "api_key": api_key })).await;
    assert_eq!(status, 200, "{tokens}");
    (api_key, tokens)
}

#[tokio::test]
async fn an_api_key_buys_a_working_short_lived_token() {
    let s = stack().await;
    let (_, tokens) = login(&s, "tenant-a", &["chat"]).await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    assert_eq!(tokens["scope"], "chat");
    let access = tokens["access_token"].as_str().unwrap();
    let claims: Value = {
        let payload = access.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["ten"], "tenant-a");
    assert!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 900);
    for claim in ["iss", "aud", "sub", "nbf", "jti", "fam"] {
        assert!(claims.get(claim).is_some(), "{claim}");
    }
    assert_eq!(chat_with(&s, access).await.status(), 200);
}

#[tokio::test]
async fn bad_api_keys_get_the_same_401() {
    let s = stack().await;
    let (api_key, _) = login(&s, "tenant-a", &["chat"]).await;
    let wrong_secret = format!("{}{}", &api_key[..api_key.len() - 4], "0000");
    for key in [
        wrong_secret.as_str(),
        "sk_0000000000000000_00",
        "not a key",
        "",
    ] {
        let (status, problem) = post(&s, "/v1/auth/token", json!({ "api_key": key })).await;
        assert_eq!(status, 401, "{key}");
        assert_eq!(
            problem["detail"],
            "unauthorized: the credentials are invalid, expired or revoked"
        );
    }
    let (status, _) = post(
        &s,
        "/v1/auth/token",
        json!({ "api_key": api_key, "tenant": "tenant-b" }),
    )
    .await;
    assert_eq!(status, 400, "no field can choose the tenant");
}

#[tokio::test]
async fn a_refresh_token_used_twice_revokes_its_family() {
    let s = stack().await;
    let (_, first) = login(&s, "tenant-a", &["chat"]).await;
    let old_refresh = first["refresh_token"].as_str().unwrap().to_owned();

    let (status, second) = post(
        &s,
        "/v1/auth/refresh",
        json!({ "refresh_token": old_refresh }),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(
        second["refresh_token"], first["refresh_token"],
        "the refresh token rotates"
    );
    let new_access = second["access_token"].as_str().unwrap().to_owned();
    assert_eq!(chat_with(&s, &new_access).await.status(), 200);

    // The old refresh token comes back: a thief or a replay. The family dies.
    let (status, _) = post(
        &s,
        "/v1/auth/refresh",
        json!({ "refresh_token": old_refresh }),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(
        &s,
        "/v1/auth/refresh",
        json!({ "refresh_token": second["refresh_token"] }),
    )
    .await;
    assert_eq!(status, 401, "the new refresh token is revoked too");
    for access in [new_access.as_str(), first["access_token"].as_str().unwrap()] {
        let response = chat_with(&s, access).await;
        assert_eq!(
            response.status(),
            401,
            "access tokens of the family fail afterwards"
        );
        assert!(
            body_json(&response)["detail"]
                .as_str()
                .unwrap()
                .contains("revoked")
        );
    }
    let audit = sophia_shared::ops::audit::AuditLog::new(
        aws_sdk_dynamodb::Client::new(&local_aws().sdk_config().await),
        s.stack.env("AUDIT_TABLE").to_owned(),
    );
    let entries = audit.entries("tenant-a").await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].action, "token_family.revoked");
    assert!(entries[0].details.contains("reuse"));
    // Another login is a new family and works.
    let (_, other) = login(&s, "tenant-a", &["chat"]).await;
    assert_eq!(
        chat_with(&s, other["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn revoke_ends_the_family_and_reveals_nothing() {
    let s = stack().await;
    let (_, tokens) = login(&s, "tenant-a", &["chat"]).await;
    let (status, _) = post(
        &s,
        "/v1/auth/revoke",
        json!({ "refresh_token": tokens["refresh_token"] }),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &s,
        "/v1/auth/refresh",
        json!({ "refresh_token": tokens["refresh_token"] }),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        chat_with(&s, tokens["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );
    let (status, _) = post(
        &s,
        "/v1/auth/revoke",
        json!({ "refresh_token": "rt_garbage" }),
    )
    .await;
    assert_eq!(status, 200, "RFC 7009: an invalid token is not an error");
}

#[tokio::test]
async fn forged_and_hostile_tokens_are_401_problems_and_a_missing_scope_is_403() {
    let s = stack().await;
    let (_, tokens) = login(&s, "tenant-a", &["jobs"]).await;
    let good = tokens["access_token"].as_str().unwrap();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = good.split('.').collect();
    let claims: Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    let with_claims = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        format!("{}.{}.{}", parts[0], engine.encode(c.to_string()), parts[2])
    };
    let header = |h: Value| format!("{}.{}.{}", engine.encode(h.to_string()), parts[1], parts[2]);
    let hostile = [
        ("forged claims", with_claims(json!({"ten": "tenant-b"}))),
        ("expired", with_claims(json!({"exp": 1_000_000_000}))),
        (
            "not yet valid",
            with_claims(json!({"nbf": 4_000_000_000u64})),
        ),
        (
            "wrong audience",
            with_claims(json!({"aud": "someone-else"})),
        ),
        ("wrong issuer", with_claims(json!({"iss": "evil"}))),
        (
            "alg none",
            format!(
                "{}.{}.",
                engine.encode(r#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
                parts[1]
            ),
        ),
        (
            "RS256 header",
            header(json!({"alg": "RS256", "typ": "at+jwt", "kid": "k1"})),
        ),
        (
            "unknown kid",
            header(json!({"alg": "HS256", "typ": "at+jwt", "kid": "k-unknown"})),
        ),
        ("garbage", "abc.def.ghi".to_owned()),
    ];
    for (name, token) in hostile {
        let response = chat_with(&s, &token).await;
        assert_eq!(response.status(), 401, "{name}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token"),
            "{name}"
        );
    }
    let response = chat_with(&s, good).await;
    assert_eq!(response.status(), 403, "a jobs-only token cannot chat");
    assert_eq!(
        body_json(&response)["type"],
        "urn:sophia:problem:insufficient-scope"
    );
    let anonymous = chat(
        &s.chat,
        json_request("POST", "/v1/chat/completions", &json!({}), None),
    )
    .await;
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn usage_is_billed_to_the_tenant_of_the_token() {
    let s = stack().await;
    let (_, a) = login(&s, "tenant-a", &["chat"]).await;
    assert_eq!(
        chat_with(&s, a["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
    let dynamodb = aws_sdk_dynamodb::Client::new(&local_aws().sdk_config().await);
    let items = dynamodb
        .scan()
        .table_name(s.stack.env("USAGE_TABLE"))
        .send()
        .await
        .unwrap();
    let mut tenants: Vec<&str> = items
        .items()
        .iter()
        .map(|i| i["pk"].as_s().unwrap().as_str())
        .collect();
    tenants.dedup();
    assert_eq!(tenants, ["tenant#tenant-a"]);
}

/// Collects log lines in memory for one test (the subscriber is thread-local and
/// `#[tokio::test]` runs every future on the test's thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_token_or_key_appears_in_any_log_line() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_span_list(true)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let s = stack().await;
    let (api_key, first) = login(&s, "tenant-a", &["chat"]).await;
    let (_, second) = post(
        &s,
        "/v1/auth/refresh",
        json!({ "refresh_token": first["refresh_token"] }),
    )
    .await;
    post(
        &s,
        "/v1/auth/refresh",
        json!({ "refresh_token": first["refresh_token"] }),
    )
    .await;
    chat_with(&s, second["access_token"].as_str().unwrap()).await;
    post(
        &s,
        "/v1/auth/token",
        json!({ "api_key": format!("{api_key}x") }),
    )
    .await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("refresh token reuse"),
        "the flow was logged: {logs}"
    );
    let secrets = aws_sdk_secretsmanager::Client::new(&local_aws().sdk_config().await);
    let ring = secrets
        .get_secret_value()
        .secret_id(s.stack.env("SIGNING_KEYS_SECRET"))
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    let signing_secret: Value = serde_json::from_str(ring.secret_string().unwrap()).unwrap();
    let key_secret = api_key.rsplit('_').next().unwrap();
    for (name, secret) in [
        ("api key", api_key.as_str()),
        ("api key secret", key_secret),
        ("access token", first["access_token"].as_str().unwrap()),
        (
            "access token signature",
            first["access_token"]
                .as_str()
                .unwrap()
                .rsplit('.')
                .next()
                .unwrap(),
        ),
        ("refresh token", first["refresh_token"].as_str().unwrap()),
        (
            "rotated refresh token",
            second["refresh_token"].as_str().unwrap(),
        ),
        ("signing key", signing_secret["secret"].as_str().unwrap()),
    ] {
        assert!(!logs.contains(secret), "the {name} appears in the logs");
    }
}

#[tokio::test]
async fn sample_events_get_their_documented_answers() {
    let s = stack().await;
    for (file, status) in [
        ("token-bad-key.json", 401),
        ("refresh-malformed.json", 400),
        ("revoke-unknown.json", 200),
    ] {
        let response = auth(&s.auth, harness::http_event("api-auth", file)).await;
        assert_eq!(response.status(), status, "{file}");
    }
}
