//! job-secret-rotate against the local Secrets Manager and fleet simulators.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use harness::{
    Provisioned, issue_token, json_request, local_aws, sdk_config_for, start_sim, unique_stack,
    with_bearer,
};
use job_secret_rotate::handler::{Deps, RotationEvent, handle};
use serde_json::json;
use sophia_shared::auth::{AuthSettings, KeySource};
use sophia_shared::config::Env;

const STEPS: [&str; 4] = ["createSecret", "setSecret", "testSecret", "finishSecret"];

async fn stages(stack: &Provisioned, secret: &str) -> HashMap<String, Vec<String>> {
    let secrets = aws_sdk_secretsmanager::Client::new(&local_aws().sdk_config().await);
    let described = secrets
        .describe_secret()
        .secret_id(stack.env(secret))
        .send()
        .await
        .unwrap();
    described
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
}

fn labels_of(stages: &HashMap<String, Vec<String>>, version: &str) -> Vec<String> {
    let mut labels = stages.get(version).cloned().unwrap_or_default();
    labels.sort();
    labels
}

async fn rotate(deps: &Deps, secret_id: &str, token: &str, between: impl AsyncFn()) {
    for step in STEPS {
        for _ in 0..2 {
            let event = RotationEvent {
                secret_id: secret_id.to_owned(),
                token: token.to_owned(),
                step: step.to_owned(),
            };
            handle(deps, event)
                .await
                .unwrap_or_else(|e| panic!("{step}: {e}"));
            between().await;
        }
    }
}

#[tokio::test]
async fn the_signing_key_ring_rotates_without_breaking_live_tokens() {
    let stack = local_aws().provision(&unique_stack("rotate-keys"), &[]);
    let sim = start_sim().await;
    let env = stack.env_with(&[("FLEET_ENDPOINTS", &format!("primary={}", sim.base_url()))]);
    let sdk = sdk_config_for(&local_aws().endpoint).await;
    let deps = Deps::from_env(&Env::new(&env), &sdk).unwrap();
    let before = issue_token(&stack, "tenant-a", &["chat"]).await;
    let old_version = stages(&stack, "SIGNING_KEYS_SECRET")
        .await
        .into_iter()
        .find(|(_, l)| l.contains(&"AWSCURRENT".to_owned()))
        .unwrap()
        .0;

    let version = uuid::Uuid::new_v4().to_string();
    rotate(
        &deps,
        stack.env("SIGNING_KEYS_SECRET"),
        &version,
        async || {},
    )
    .await;

    let after = stages(&stack, "SIGNING_KEYS_SECRET").await;
    assert_eq!(labels_of(&after, &version), ["AWSCURRENT"], "{after:?}");
    assert_eq!(
        labels_of(&after, &old_version),
        ["AWSPREVIOUS"],
        "{after:?}"
    );
    assert!(
        !after.values().flatten().any(|l| l == "AWSPENDING"),
        "{after:?}"
    );
    // The whole finished rotation replayed (a retried invocation, `make rotate`
    // twice): every step is a no-op and the labels stay.
    rotate(
        &deps,
        stack.env("SIGNING_KEYS_SECRET"),
        &version,
        async || {},
    )
    .await;
    assert_eq!(stages(&stack, "SIGNING_KEYS_SECRET").await, after);

    let settings = AuthSettings::from_env(&Env::new(&stack.env)).unwrap();
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let ring = KeySource::load(secrets, settings.signing_keys_secret.clone())
        .await
        .unwrap()
        .current()
        .await;
    assert!(ring.current_kid().starts_with('k') && ring.current_kid() != "k1");
    assert!(
        settings.policy.verify(&ring, &before).is_ok(),
        "a token signed before still verifies"
    );
    let fresh = issue_token(&stack, "tenant-a", &["chat"]).await;
    let kid = jsonwebtoken::decode_header(&fresh).unwrap().kid.unwrap();
    assert_eq!(kid, ring.current_kid(), "new tokens carry the new kid");

    let audit = sophia_shared::ops::audit::AuditLog::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        stack.env("AUDIT_TABLE").to_owned(),
    );
    let entries = audit.entries("platform").await.unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "secret.rotated")
            .count(),
        1,
        "audited once despite replays"
    );
}

#[tokio::test]
async fn the_fleet_token_rotates_twice_with_no_failed_chat_request() {
    let stack = local_aws().provision(&unique_stack("rotate-fleet"), &[]);
    let first = harness::current_secret(&stack, "FLEET_TOKEN_SECRET").await;
    let (a, b) = (start_sim().await, start_sim().await);
    for sim in [&a, &b] {
        sim.sim.set_tokens(vec![first.clone()]).await;
    }
    let fleet = format!("primary={},secondary={}", a.base_url(), b.base_url());
    let env = stack.env_with(&[("FLEET_ENDPOINTS", &fleet)]);
    let sdk = sdk_config_for(&local_aws().endpoint).await;
    let deps = Deps::from_env(&Env::new(&env), &sdk).unwrap();
    let chat = api_chat::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let access = issue_token(&stack, "tenant-a", &["chat"]).await;
    let body = json!({"model": "sophia-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let statuses = std::cell::RefCell::new(Vec::new());
    let one_chat = async || {
        let request = with_bearer(
            json_request("POST", "/v1/chat/completions", &body, None),
            &access,
        );
        let status = harness::chat_handle(&chat, request).await.status().as_u16();
        statuses.borrow_mut().push(status);
    };
    one_chat().await;
    for _ in 0..2 {
        rotate(
            &deps,
            stack.env("FLEET_TOKEN_SECRET"),
            &uuid::Uuid::new_v4().to_string(),
            one_chat,
        )
        .await;
    }
    one_chat().await;
    let statuses = statuses.into_inner();
    assert_eq!(statuses.len(), 18);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let current = harness::current_secret(&stack, "FLEET_TOKEN_SECRET").await;
    assert_ne!(current, first, "the token changed");
    assert!(
        a.sim
            .counters
            .unauthorized
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the client's old token was refused once after the second rotation, then re-read"
    );
}

#[tokio::test]
async fn a_foreign_secret_or_step_is_refused_without_retry() {
    let stack = local_aws().provision(&unique_stack("rotate-bad"), &[]);
    let env = stack.env_with(&[("FLEET_ENDPOINTS", "primary=http://127.0.0.1:9")]);
    let deps = Deps::from_env(
        &Env::new(&env),
        &sdk_config_for(&local_aws().endpoint).await,
    )
    .unwrap();
    let bad_step = RotationEvent {
        secret_id: stack.env("FLEET_TOKEN_SECRET").to_owned(),
        token: "t".into(),
        step: "dance".into(),
    };
    let error = handle(&deps, bad_step).await.unwrap_err();
    let diagnostic: lambda_runtime::Diagnostic = error.into();
    assert!(
        diagnostic.error_type.starts_with("NonRetryable"),
        "{diagnostic:?}"
    );
    let missing = RotationEvent {
        secret_id: stack.env("FLEET_TOKEN_SECRET").to_owned(),
        token: "never-created".into(),
        step: "finishSecret".into(),
    };
    assert!(handle(&deps, missing).await.is_err());
}

#[tokio::test]
async fn overdue_secrets_alert_once_and_resolve_once() {
    use job_secret_rotate::handler::{Invocation, MAX_AGE_TAG, handle_invocation};
    let stack = local_aws().provision(&unique_stack("rotate-ages"), &[]);
    let secrets = aws_sdk_secretsmanager::Client::new(&local_aws().sdk_config().await);
    let received = harness::alert_webhook(&stack).await;
    let env = stack.env_with(&[("FLEET_ENDPOINTS", "primary=http://127.0.0.1:9")]);
    let deps = Deps::from_env(
        &Env::new(&env),
        &sdk_config_for(&local_aws().endpoint).await,
    )
    .unwrap();
    let fleet_secret = stack.env("FLEET_TOKEN_SECRET");
    let set_max_age = async |days: &str| {
        let tag = aws_sdk_secretsmanager::types::Tag::builder()
            .key(MAX_AGE_TAG)
            .value(days)
            .build();
        secrets
            .tag_resource()
            .secret_id(fleet_secret)
            .tags(tag)
            .send()
            .await
            .unwrap();
    };
    let audit = || {
        handle_invocation(
            &deps,
            Invocation::Audit {
                audit: "secret-ages".into(),
            },
        )
    };

    let fresh = audit().await.unwrap();
    assert!(fresh["secrets"].as_array().unwrap().len() >= 2, "{fresh}");
    assert!(
        received.lock().unwrap().is_empty(),
        "fresh secrets are within policy"
    );

    set_max_age("0").await;
    audit().await.unwrap();
    audit().await.unwrap();
    set_max_age("30").await;
    audit().await.unwrap();
    audit().await.unwrap();

    let messages = received.lock().unwrap().clone();
    let about_fleet: Vec<&String> = messages
        .iter()
        .filter(|m| m.contains("fleet-token"))
        .collect();
    assert_eq!(about_fleet.len(), 2, "{messages:?}");
    assert!(about_fleet[0].starts_with("[FIRING]") && about_fleet[0].contains("policy allows 0"));
    assert!(about_fleet[1].starts_with("[RESOLVED]"));
    assert_eq!(
        messages.len(),
        2,
        "nothing about the other secrets: {messages:?}"
    );
}
