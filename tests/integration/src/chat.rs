//! The chat tests' fixture: a provisioned stack, fleet simulators on free ports,
//! api-chat built from the stack's environment with fast timeouts, and a token.

// A test-support module: failing loudly with a message is the right behaviour here.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use api_chat::handler::Deps;
use fleet_sim::{Fault, FaultMode, SimServer};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sophia_shared::config::Env;

use crate::{
    Provisioned, body_json, json_request, local_aws, sdk_config_for, start_sim, unique_stack,
};

pub const PATH: &str = "/v1/chat/completions";

pub fn completion(text: &str) -> Value {
    json!({"model": "sophia-small", "messages": [{"role": "user", "content": text}], "max_tokens": 8})
}

pub fn streamed(text: &str) -> Value {
    let mut body = completion(text);
    body["stream"] = json!(true);
    body
}

/// Fast timeouts so that failure scenarios take milliseconds, not seconds.
pub const FAST: [(&str, &str); 6] = [
    ("FLEET_ATTEMPT_TIMEOUT_MS", "300"),
    ("FLEET_TTFT_TIMEOUT_MS", "300"),
    ("FLEET_IDLE_TIMEOUT_MS", "500"),
    ("FLEET_BACKOFF_BASE_MS", "5"),
    ("FLEET_BACKOFF_CAP_MS", "20"),
    ("FLEET_HEALTH_CACHE_MS", "1000"),
];

/// api-chat's dependencies and a valid token of tenant `tenant-a` with scope `chat`.
pub struct Chat {
    pub deps: Deps,
    pub token: String,
}

impl std::ops::Deref for Chat {
    type Target = Deps;
    fn deref(&self) -> &Deps {
        &self.deps
    }
}

impl Chat {
    pub fn authorize(&self, request: lambda_http::Request) -> lambda_http::Request {
        crate::with_bearer(request, &self.token)
    }
}

pub struct Setup {
    pub stack: Provisioned,
    pub sims: Vec<SimServer>,
    pub deps: Chat,
}

pub fn fleet_list(urls: &[String]) -> String {
    let names = ["primary", "secondary", "tertiary"];
    urls.iter()
        .enumerate()
        .map(|(i, url)| format!("{}={url}", names[i]))
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn deps_for(stack: &Provisioned, fleet: &str, extra: &[(&str, &str)]) -> Chat {
    let mut env: HashMap<String, String> = stack.env_with(&[("FLEET_ENDPOINTS", fleet)]);
    for (k, v) in FAST.iter().chain(extra) {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    // The simulators run without auth unless a test turns it on.
    if !extra.iter().any(|(k, _)| *k == "FLEET_TOKEN_SECRET") {
        env.remove("FLEET_TOKEN_SECRET");
    }
    let sdk = sdk_config_for(&local_aws().endpoint).await;
    let deps = Deps::from_env(&Env::new(&env), &sdk).await.unwrap();
    Chat {
        deps,
        token: crate::issue_token(stack, "tenant-a", &["chat"]).await,
    }
}

pub async fn setup(sims: usize, extra: &[(&str, &str)]) -> Setup {
    let stack = local_aws().provision(&unique_stack("chat"), &[]);
    let mut servers = Vec::new();
    for _ in 0..sims {
        servers.push(start_sim().await);
    }
    let urls: Vec<String> = servers.iter().map(SimServer::base_url).collect();
    let deps = deps_for(&stack, &fleet_list(&urls), extra).await;
    Setup {
        stack,
        sims: servers,
        deps,
    }
}

pub fn calls(sim: &SimServer) -> u64 {
    sim.requests()
}

pub async fn fault(sim: &SimServer, mode: FaultMode) {
    sim.sim
        .set_fault(Fault {
            mode,
            ..Fault::default()
        })
        .await;
}

pub async fn chat(deps: &Chat, body: &Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response =
        crate::chat_handle(deps, deps.authorize(json_request("POST", PATH, body, None))).await;
    let elapsed = started.elapsed();
    (response.status().as_u16(), body_json(&response), elapsed)
}

pub async fn stream(
    deps: &Chat,
    body: &Value,
    deadline: Option<Duration>,
) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = api_chat::handler::handle(
        deps,
        deps.authorize(json_request("POST", PATH, body, deadline)),
    )
    .await;
    let status = response.status().as_u16();
    (status, body_text(response).await, started.elapsed())
}

pub async fn body_text(response: http::Response<api_chat::handler::StreamingBody>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A prepared (and authorized) request through the entry point: status, the
/// answer's `x-sophia-cache`, the whole body.
pub async fn stream_request(
    deps: &Chat,
    request: lambda_http::Request,
) -> (u16, Option<String>, String) {
    let response = api_chat::handler::handle(deps, request).await;
    let status = response.status().as_u16();
    let marked = response
        .headers()
        .get("x-sophia-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, marked, body_text(response).await)
}
