//! The deploy hooks' failure paths, in-process: deploy-pre-traffic reports
//! exactly one Failed, within the invocation's time, when the new versions
//! cannot be invoked or never answer; deploy-post-traffic reports one Failed
//! when the smoke journey fails, and revokes the API key it made for it.
//!
//! CodeDeploy is `tools/codedeploy_standin.py`, a local stand-in for its one
//! call (PutLifecycleEventHookExecutionStatus): no local AWS server implements
//! CodeDeploy's lifecycle hooks. The success paths (every function invoked
//! through `cargo lambda watch`'s Lambda Invoke API; the journey through the
//! stack's API) are checked on a whole dev stack (`tools/hook_check.py` in
//! `make test`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deploy_pre_traffic::handler::{Deps, handle};
use harness::{local_aws, python, sdk_config_for, unique_stack, workspace_root};
use serde_json::{Value, json};
use sophia_shared::config::Env;
use sophia_shared::outbound::{Exchange, OutboundClient, OutboundSettings};

struct StandIn {
    child: Child,
    url: String,
}

impl StandIn {
    fn start() -> Self {
        let mut child = Command::new(python())
            .arg(workspace_root().join("tools/codedeploy_standin.py"))
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the CodeDeploy stand-in starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = format!("http://127.0.0.1:{}", line.trim());
        Self { child, url }
    }

    async fn calls(&self) -> Value {
        let http = OutboundClient::new(OutboundSettings::default()).unwrap();
        let answer = http
            .exchange(Exchange {
                method: http::Method::GET,
                url: &format!("{}/_standin/calls", self.url),
                headers: &[],
                json: None,
                timeout: Duration::from_secs(5),
                max_answer_bytes: 1 << 20,
                ctx: None,
            })
            .await
            .unwrap();
        serde_json::from_slice(&answer.body).unwrap()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn deps(lambda_url: &str, codedeploy_url: &str) -> Deps {
    let env = [
        (
            "NEW_VERSIONS",
            "api-health=api-health,job-queue-sweep=job-queue-sweep",
        ),
        ("LAMBDA_ENDPOINT_URL", lambda_url),
        ("CODEDEPLOY_ENDPOINT_URL", codedeploy_url),
        ("HOOK_REPORT_MARGIN_MS", "1000"),
    ];
    Deps::from_env(&Env::new(&env), &sdk_config_for(lambda_url).await).unwrap()
}

fn event(id: &str) -> Value {
    json!({"DeploymentId": "d-TEST", "LifecycleEventHookExecutionId": id})
}

#[tokio::test]
async fn versions_that_cannot_be_invoked_fail_the_hook_reported_once() {
    let standin = StandIn::start();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lambda_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let deps = deps(&lambda_url, &standin.url).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let verdict = handle(&deps, event("hook-refused"), deadline)
        .await
        .unwrap();
    assert_eq!(verdict["status"], "Failed", "{verdict}");
    assert_eq!(verdict["checks"], 3, "{verdict}");
    assert_eq!(verdict["failed"].as_array().unwrap().len(), 3, "{verdict}");
    assert!(
        verdict["failed"][0]["failure"]
            .as_str()
            .unwrap()
            .contains("invoking api-health failed"),
        "{verdict}"
    );
    assert_eq!(
        standin.calls().await,
        json!([{"deploymentId": "d-TEST", "lifecycleEventHookExecutionId": "hook-refused", "status": "Failed"}])
    );
}

#[tokio::test]
async fn versions_that_never_answer_fail_the_hook_before_its_deadline() {
    let standin = StandIn::start();
    // Accepts connections and never answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lambda_url = format!("http://{}", black_hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            open.push(socket);
        }
    });
    let deps = deps(&lambda_url, &standin.url).await;
    let started = Instant::now();
    let invocation_time = Duration::from_secs(4);
    let verdict = handle(&deps, event("hook-silent"), started + invocation_time)
        .await
        .unwrap();
    // The checks got the invocation's time minus the 1 s report margin, and the
    // verdict went out before the deadline (compared with the injected deadline only).
    assert!(
        started.elapsed() < invocation_time,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(verdict["status"], "Failed", "{verdict}");
    assert!(
        verdict["failed"][0]["failure"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{verdict}"
    );
    assert_eq!(
        standin.calls().await,
        json!([{"deploymentId": "d-TEST", "lifecycleEventHookExecutionId": "hook-silent", "status": "Failed"}])
    );
    held.abort();
}

#[tokio::test]
async fn a_malformed_event_is_refused_without_a_report() {
    let standin = StandIn::start();
    let deps = deps("http://127.0.0.1:9", &standin.url).await;
    let error = handle(
        &deps,
        json!({"DeploymentId": "d-TEST"}),
        Instant::now() + Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    let diagnostic: lambda_runtime::Diagnostic = error.into();
    assert_eq!(diagnostic.error_type, "NonRetryable.Invalid");
    assert_eq!(standin.calls().await, json!([]));
}

#[tokio::test]
async fn a_failed_journey_fails_the_post_traffic_hook_and_revokes_its_key() {
    use deploy_post_traffic::handler::{Deps as PostDeps, handle as post_handle};
    use sophia_shared::auth::store::AuthStore;

    let standin = StandIn::start();
    let stack = local_aws().provision(&unique_stack("post-traffic"), &[]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let env = stack.env_with(&[
        ("SMOKE_BASE_URL", base.as_str()),
        ("SMOKE_TENANT", "smoke-it"),
        ("CODEDEPLOY_ENDPOINT_URL", standin.url.as_str()),
        ("HOOK_REPORT_MARGIN_MS", "1000"),
    ]);
    let sdk = local_aws().sdk_config().await;
    let deps = PostDeps::from_env(&Env::new(&env), &sdk).unwrap();
    let verdict = post_handle(
        &deps,
        event("post-refused"),
        Instant::now() + Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(verdict["status"], "Failed", "{verdict}");
    assert!(
        verdict["failure"]
            .as_str()
            .unwrap()
            .contains("smoke step `token` failed"),
        "{verdict}"
    );
    assert_eq!(
        standin.calls().await,
        json!([{"deploymentId": "d-TEST", "lifecycleEventHookExecutionId": "post-refused", "status": "Failed"}])
    );
    let store = AuthStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        stack.env("AUTH_TABLE").to_owned(),
    );
    let keys = store.list_api_keys("smoke-it").await.unwrap();
    assert_eq!(keys.len(), 1, "one key made for the run");
    assert!(keys[0].revoked, "the journey's key is revoked after it");
}
