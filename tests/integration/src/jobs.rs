//! The jobs tests' fixture: a provisioned stack, a fleet simulator, api-jobs and
//! worker-inference built from the stack's environment, and the moves of
//! Lambda's SQS event source (receive, invoke, delete what succeeded).

// A test-support module: failing loudly with a message is the right behaviour here.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use fleet_sim::SimServer;
use serde_json::{Value, json};
use sophia_shared::config::Env;

use crate::{
    Provisioned, body_json, json_request, lambda_context, local_aws, receive_batch, settle,
    start_sim, unique_stack, with_bearer,
};

pub fn completion(text: &str) -> Value {
    json!({"model": "sophia-small", "messages": [{"role": "user", "content": text}], "max_tokens": 8})
}

pub struct Setup {
    pub stack: Provisioned,
    pub sim: SimServer,
    pub jobs: api_jobs::handler::Deps,
    pub worker: Arc<worker_inference::handler::Deps>,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub token_a: String,
    pub token_b: String,
}

pub fn env_for(
    stack: &Provisioned,
    sim: &SimServer,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env = stack.env_with(&[
        ("FLEET_ENDPOINTS", &format!("primary={}", sim.base_url())),
        ("FLEET_ATTEMPT_TIMEOUT_MS", "3000"),
        ("FLEET_BACKOFF_BASE_MS", "5"),
        ("FLEET_BACKOFF_CAP_MS", "20"),
        // Generous limits: these tests count executions, not rate limiting.
        ("RATE_LIMIT_PRINCIPAL_PER_MIN", "100000"),
        ("RATE_LIMIT_PRINCIPAL_BURST", "100000"),
        ("RATE_LIMIT_IP_PER_MIN", "100000"),
        ("RATE_LIMIT_IP_BURST", "100000"),
        ("JOB_HEARTBEAT_SECS", "1"),
        // A redrive in these tests follows the fix within a second, not minutes.
        ("BREAKER_COOL_DOWN_MS", "200"),
    ]);
    // The simulators run without auth.
    env.remove("FLEET_TOKEN_SECRET");
    for (key, value) in extra {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    env
}

pub async fn setup(extra: &[(&str, &str)]) -> Setup {
    let stack = local_aws().provision(&unique_stack("jobs"), &[]);
    let sim = start_sim().await;
    let env = env_for(&stack, &sim, extra);
    let sdk = local_aws().sdk_config().await;
    let jobs = api_jobs::handler::Deps::from_env(&Env::new(&env), &sdk)
        .await
        .unwrap();
    let worker = worker_inference::handler::Deps::from_env(&Env::new(&env), &sdk).unwrap();
    Setup {
        token_a: crate::issue_token(&stack, "tenant-a", &["chat", "jobs"]).await,
        token_b: crate::issue_token(&stack, "tenant-b", &["chat", "jobs"]).await,
        stack,
        sim,
        jobs,
        worker: Arc::new(worker),
        sqs: aws_sdk_sqs::Client::new(&sdk),
        dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
    }
}

impl Setup {
    pub fn queue(&self) -> &str {
        self.stack.env("JOBS_QUEUE_URL")
    }

    pub async fn submit(
        &self,
        token: &str,
        body: &Value,
        key: Option<&str>,
    ) -> lambda_http::Response<lambda_http::Body> {
        let mut request = with_bearer(json_request("POST", "/v1/jobs", body, None), token);
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("idempotency-key", key.parse().unwrap());
        }
        api_jobs::handler::handle(&self.jobs, request).await
    }

    pub async fn read(&self, token: &str, id: &str) -> lambda_http::Response<lambda_http::Body> {
        let request = with_bearer(
            json_request("GET", &format!("/v1/jobs/{id}"), &Value::Null, None),
            token,
        );
        api_jobs::handler::handle(&self.jobs, request).await
    }

    pub async fn status(&self, id: &str) -> Value {
        body_json(&self.read(&self.token_a, id).await)
    }

    /// One worker invocation over one received batch; failed records come back at
    /// once when `retry_now`. Returns how many records the batch had.
    pub async fn poll_once(&self, retry_now: bool) -> usize {
        let event = receive_batch(&self.sqs, self.queue(), 10).await;
        let count = event.records.len();
        if count == 0 {
            return 0;
        }
        let response = worker_inference::handler::handle(
            &self.worker,
            event.clone(),
            &lambda_context(Duration::from_secs(30)),
        )
        .await;
        settle(&self.sqs, self.queue(), &event, &response, retry_now).await;
        count
    }

    pub fn completions(&self) -> u64 {
        self.sim.sim.counters.completions.load(Ordering::SeqCst)
    }

    pub async fn usage_requests(&self, tenant: &str) -> u64 {
        let date = sophia_shared::clock::utc_date(sophia_shared::clock::now_secs());
        let item = self
            .dynamodb
            .get_item()
            .table_name(self.stack.env("USAGE_TABLE"))
            .key("pk", AttributeValue::S(format!("tenant#{tenant}")))
            .key(
                "sk",
                AttributeValue::S(format!("usage#{date}#sophia-small")),
            )
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        item.item()
            .and_then(|i| i.get("requests"))
            .and_then(|v| v.as_n().ok())
            .map_or(0, |n| n.parse().unwrap())
    }
}

pub fn job_id(response: &lambda_http::Response<lambda_http::Body>) -> String {
    assert_eq!(response.status(), 202, "{:?}", response.body());
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let id = body_json(response)["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    id
}
