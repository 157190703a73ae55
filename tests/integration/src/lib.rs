//! Test harness: a local AWS (moto server on 127.0.0.1) started once per test
//! binary and provisioned from `infra/template.yaml` per test under a unique stack
//! name; fleet simulators started in-process on free ports; sample events loaded
//! from `events/`.
//!
//! The moto server is a child that exits when its stdin closes, so it never
//! outlives the test process, however that ends.

// A test-support crate: failing loudly with a message is the right behaviour here.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use serde_json::Value;
use sophia_shared::aws::{AwsSettings, configure};
use sophia_shared::config::Env;

pub mod chat;
pub mod jobs;
pub mod mcp;

pub const REGION: &str = "us-east-1";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The Python of the repo's tool environment (`make setup`), or `SOPHIA_PYTHON`.
pub fn python() -> PathBuf {
    if let Ok(path) = std::env::var("SOPHIA_PYTHON") {
        return PathBuf::from(path);
    }
    let path = workspace_root().join(".venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: run `make setup` (it installs moto and the other pinned tools)",
        path.display()
    );
    path
}

pub struct LocalAws {
    pub endpoint: String,
    // Held for the process lifetime: its stdin pipe keeps the server alive.
    _child: Mutex<Child>,
}

static LOCAL_AWS: OnceLock<LocalAws> = OnceLock::new();

/// The local AWS shared by every test of this binary, started on first use.
pub fn local_aws() -> &'static LocalAws {
    LOCAL_AWS.get_or_init(|| {
        let mut child = Command::new(python())
            .arg(workspace_root().join("tools/moto_guard.py"))
            .args(["--port", "0", "--until-stdin-closes"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the moto server");
        let stdout = child.stdout.take().expect("moto stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading moto's endpoint");
        let parsed: Value = serde_json::from_str(&line)
            .unwrap_or_else(|error| panic!("moto printed {line:?}: {error}"));
        let endpoint = parsed["endpoint"].as_str().expect("endpoint").to_owned();
        LocalAws {
            endpoint,
            _child: Mutex::new(child),
        }
    })
}

/// A stack name no other test uses on the shared server.
pub fn unique_stack(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// What `infra/provision.py --json` reports.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub stack: String,
    pub report: Value,
    pub env: HashMap<String, String>,
}

impl Provisioned {
    pub fn env(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("provisioned env has no {name}"))
    }

    /// The provisioned environment with overrides, as a config source.
    pub fn env_with(&self, overrides: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = self.env.clone();
        for (key, value) in overrides {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        env
    }
}

impl LocalAws {
    /// Provisions every resource of the template under `stack`.
    pub fn provision(&self, stack: &str, params: &[(&str, &str)]) -> Provisioned {
        let mut command = Command::new(python());
        command
            .arg(workspace_root().join("infra/provision.py"))
            .args([
                "--endpoint",
                &self.endpoint,
                "--stack-name",
                stack,
                "--region",
                REGION,
                "--json",
            ]);
        for (key, value) in params {
            command.args(["--param", &format!("{key}={value}")]);
        }
        let output = command.output().expect("running provision.py");
        assert!(
            output.status.success(),
            "provision.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).expect("provision.py JSON");
        let env = report["env"]
            .as_object()
            .expect("env")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        Provisioned {
            stack: stack.to_owned(),
            report,
            env,
        }
    }

    /// SDK configuration pointing at this local AWS with the functions' settings.
    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config_for(&self.endpoint).await
    }
}

/// SDK configuration for any endpoint (e.g. a closed port to simulate an outage),
/// with the functions' retry mode but long attempt timeouts.
///
/// Why longer than the functions' 2 s: the local AWS is a Python server that
/// answers slowly under concurrency. An attempt that times out while moto is
/// still applying it is retried by the SDK and then runs *concurrently* with the
/// original; moto checks a transaction's conditions without a lock, so both can
/// apply (a job billed twice, seen on a loaded 2-core machine). DynamoDB makes the
/// retry a no-op (the SDK sends the same `ClientRequestToken`), so that is moto's
/// behaviour, not ours; tests must not depend on how fast moto is.
pub async fn sdk_config_for(endpoint: &str) -> SdkConfig {
    let settings = AwsSettings::from_env(&Env::new(&[
        ("AWS_ATTEMPT_TIMEOUT_MS", "15000"),
        ("AWS_OPERATION_TIMEOUT_MS", "30000"),
    ]))
    .expect("test AWS settings");
    configure(aws_config::defaults(BehaviorVersion::latest()), settings)
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .test_credentials()
        .load()
        .await
}

/// A loopback URL where nothing listens.
pub fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Starts a fleet simulator on a free loopback port.
pub async fn start_sim() -> fleet_sim::SimServer {
    fleet_sim::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("starting a fleet simulator")
}

/// Loads `events/<function>/<file>` as an API Gateway request.
pub fn http_event(function: &str, file: &str) -> lambda_http::Request {
    let path = workspace_root().join("events").join(function).join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    lambda_http::request::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not an API Gateway event: {error}", path.display()))
}

/// The response body as JSON.
pub fn body_json(response: &lambda_http::Response<lambda_http::Body>) -> Value {
    serde_json::from_slice(response.body()).expect("JSON body")
}

/// The status and the JSON body of an answer (`Null` when it has none, as a 204).
pub fn status_and_json(response: &lambda_http::Response<lambda_http::Body>) -> (u16, Value) {
    let body = if response.body().is_empty() {
        Value::Null
    } else {
        body_json(response)
    };
    (response.status().as_u16(), body)
}

/// [`json_request`] with `body`, or the same request without a body.
pub fn request_with(method: &str, path: &str, body: Option<&Value>) -> lambda_http::Request {
    match body {
        Some(body) => json_request(method, path, body, None),
        None => http::Request::builder()
            .method(method)
            .uri(path)
            .header("x-correlation-id", "it-chat")
            .body(lambda_http::Body::Empty)
            .expect("request"),
    }
}

/// An API Gateway-style request built in code, optionally carrying a Lambda
/// context whose deadline is `deadline_in` from now.
pub fn json_request(
    method: &str,
    path: &str,
    body: &Value,
    deadline_in: Option<std::time::Duration>,
) -> lambda_http::Request {
    use lambda_http::RequestExt;
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("x-correlation-id", "it-chat")
        .body(lambda_http::Body::from(body.to_string()))
        .expect("request");
    match deadline_in {
        None => request,
        Some(left) => request.with_lambda_context(lambda_context(left)),
    }
}

/// An HTTP request as API Gateway passes it to a function: the whole body
/// read, the URI reduced to its path.
pub async fn lambda_request_from(
    request: axum::extract::Request,
) -> http::Request<lambda_http::Body> {
    use http_body_util::BodyExt;

    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let mut lambda_request =
        http::Request::from_parts(parts, lambda_http::Body::from(bytes.to_vec()));
    *lambda_request.uri_mut() = path.parse().expect("path");
    lambda_request
}

/// Serves api-chat over real HTTP on a free loopback port,
/// the way a function URL would, so real clients (the OpenAI SDK) can call it.
/// The server stops when the returned handle is dropped.
pub async fn serve_chat_over_http(
    deps: std::sync::Arc<api_chat::handler::Deps>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::body::Body as AxumBody;
    use futures_util::StreamExt;
    use http_body_util::BodyExt;

    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let deps = deps.clone();
        async move {
            let lambda_request = lambda_request_from(request).await;
            let response = api_chat::handler::handle(&deps, lambda_request).await;
            let (parts, body) = response.into_parts();
            let frames = body
                .into_data_stream()
                .map(|frame| frame.map_err(|never| match never {}));
            axum::response::Response::from_parts(parts, AxumBody::from_stream(frames))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

/// A response with its whole body collected, as API Gateway's buffered mode
/// would pass it on (the streamed functions' answers, for assertions).
pub async fn whole<B>(response: http::Response<B>) -> lambda_http::Response<lambda_http::Body>
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("reading the body").to_bytes();
    lambda_http::Response::from_parts(parts, lambda_http::Body::Binary(bytes.to_vec()))
}

/// api-chat's answer to `request`, collected.
pub async fn chat_handle(
    deps: &api_chat::handler::Deps,
    request: lambda_http::Request,
) -> lambda_http::Response<lambda_http::Body> {
    whole(api_chat::handler::handle(deps, request).await).await
}

/// A number attribute of a usage item; 0 when it is absent (never incremented).
pub fn number_of(
    item: &HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
    name: &str,
) -> f64 {
    item.get(name).map_or(0.0, |value| {
        value
            .as_n()
            .expect("a number attribute")
            .parse()
            .expect("a number")
    })
}

/// The items of `tenant` in the stack's usage table whose sort key starts with
/// `prefix` (`usage#` per day and model, `daily#` the quota counters).
pub async fn usage_items(
    stack: &Provisioned,
    tenant: &str,
    prefix: &str,
) -> Vec<HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    use aws_sdk_dynamodb::types::AttributeValue;
    aws_sdk_dynamodb::Client::new(&local_aws().sdk_config().await)
        .query()
        .table_name(stack.env("USAGE_TABLE"))
        .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
        .expression_attribute_values(":pk", AttributeValue::S(format!("tenant#{tenant}")))
        .expression_attribute_values(":prefix", AttributeValue::S(prefix.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("querying usage")
        .items()
        .to_vec()
}

/// A valid access token for `tenant` with `scopes`, signed with the stack's
/// signing keys as read from the local Secrets Manager (what api-auth does).
pub async fn issue_token(stack: &Provisioned, tenant: &str, scopes: &[&str]) -> String {
    issue_token_for(stack, tenant, "test:user", scopes).await
}

/// [`issue_token`] for a given subject (the user, as memories see it).
pub async fn issue_token_for(
    stack: &Provisioned,
    tenant: &str,
    subject: &str,
    scopes: &[&str],
) -> String {
    use sophia_shared::auth::{AuthSettings, KeySource};
    let settings = AuthSettings::from_env(&Env::new(&stack.env)).expect("auth settings");
    let secrets = aws_sdk_secretsmanager::Client::new(&local_aws().sdk_config().await);
    let keys = KeySource::load(secrets, settings.signing_keys_secret.clone())
        .await
        .expect("signing keys");
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    let family = uuid::Uuid::new_v4().simple().to_string();
    settings
        .policy
        .sign(
            &keys.current().await,
            &settings.policy.claims(subject, tenant, &scopes, &family),
        )
        .expect("signing")
}

/// The request with `Authorization: Bearer <token>`.
pub fn with_bearer(mut request: lambda_http::Request, token: &str) -> lambda_http::Request {
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// The AWSCURRENT value of the stack's secret named by env variable `variable`.
pub async fn current_secret(stack: &Provisioned, variable: &str) -> String {
    aws_sdk_secretsmanager::Client::new(&local_aws().sdk_config().await)
        .get_secret_value()
        .secret_id(stack.env(variable))
        .version_stage("AWSCURRENT")
        .send()
        .await
        .expect("reading a secret")
        .secret_string()
        .expect("a string secret")
        .to_owned()
}

/// A Lambda context whose deadline is `left` from now (what the runtime passes).
pub fn lambda_context(left: std::time::Duration) -> lambda_runtime::Context {
    let mut context = lambda_runtime::Context::default();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    context.deadline = now_ms + left.as_millis() as u64;
    context.request_id = uuid::Uuid::new_v4().to_string();
    context
}

/// What Lambda's SQS event source does before an invocation: receive up to `max`
/// messages, with the attributes it passes on, as an `SqsEvent`. (moto must not
/// run event source mappings itself: it would need Docker.)
pub async fn receive_batch(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    max: i32,
) -> aws_lambda_events::event::sqs::SqsEvent {
    receive_batch_hidden_for(sqs, queue_url, max, None).await
}

/// [`receive_batch`] with a visibility timeout other than the queue's.
pub async fn receive_batch_hidden_for(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    max: i32,
    visibility_secs: Option<i32>,
) -> aws_lambda_events::event::sqs::SqsEvent {
    use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
    let output = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max)
        .set_visibility_timeout(visibility_secs)
        .wait_time_seconds(0)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .expect("receive");
    let mut event = SqsEvent::default();
    for message in output.messages() {
        let mut record = SqsMessage::default();
        record.message_id = message.message_id().map(str::to_owned);
        record.receipt_handle = message.receipt_handle().map(str::to_owned);
        record.body = message.body().map(str::to_owned);
        if let Some(attributes) = message.attributes() {
            for (name, value) in attributes {
                record
                    .attributes
                    .insert(name.as_str().to_owned(), value.clone());
            }
        }
        for (name, value) in message.message_attributes().into_iter().flatten() {
            let mut attribute = aws_lambda_events::event::sqs::SqsMessageAttribute::default();
            attribute.string_value = value.string_value().map(str::to_owned);
            attribute.data_type = Some(value.data_type().to_owned());
            record.message_attributes.insert(name.clone(), attribute);
        }
        event.records.push(record);
    }
    event
}

/// What the event source does with the answer: deletes every record not listed
/// as failed; with `retry_now`, makes the failed ones visible at once (as if their
/// visibility timeout had passed), else leaves them hidden.
pub async fn settle(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    event: &aws_lambda_events::event::sqs::SqsEvent,
    response: &aws_lambda_events::event::sqs::SqsBatchResponse,
    retry_now: bool,
) {
    for record in &event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let receipt = record.receipt_handle.clone().unwrap_or_default();
        let failed = response
            .batch_item_failures
            .iter()
            .any(|failure| failure.item_identifier == id);
        if !failed {
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(receipt)
                .send()
                .await
                .expect("delete");
        } else if retry_now {
            sqs.change_message_visibility()
                .queue_url(queue_url)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await
                .expect("change visibility");
        }
    }
}

/// A Slack-compatible webhook on loopback that keeps every message.
pub async fn webhook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().fallback(move |body: axum::Json<serde_json::Value>| {
        let sink = sink.clone();
        async move {
            sink.lock()
                .expect("webhook")
                .push(body["text"].as_str().unwrap_or_default().to_owned());
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("webhook");
    let url = format!(
        "http://{}/hooks/alerts",
        listener.local_addr().expect("webhook")
    );
    tokio::spawn(async move { axum::serve(listener, app).await.expect("webhook") });
    (url, received)
}

/// Puts EMF documents (as `shared::observability::MetricSet` writes them) into
/// the local CloudWatch: what CloudWatch's EMF extraction does with a Lambda's
/// log lines in AWS.
pub async fn ship_emf(cloudwatch: &aws_sdk_cloudwatch::Client, documents: &[Value]) {
    devtools::put_emf(cloudwatch, documents)
        .await
        .expect("PutMetricData");
}

/// [`webhook`] set as the stack's alert webhook (`ALERT_WEBHOOK_SECRET`): every
/// alert the stack's jobs send lands in the returned list.
pub async fn alert_webhook(stack: &Provisioned) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let (url, received) = webhook().await;
    aws_sdk_secretsmanager::Client::new(&local_aws().sdk_config().await)
        .put_secret_value()
        .secret_id(stack.env("ALERT_WEBHOOK_SECRET"))
        .secret_string(&url)
        .send()
        .await
        .expect("setting the alert webhook");
    received
}
