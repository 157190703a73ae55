//! Asks the shared rate limiter `REQUESTS` times for one key as fast as it can and
//! prints how many were admitted. The two-process test runs two of these at once
//! against the same local AWS: separate processes, separate memory, one limit.
//!
//! Usage: limit-probe KEY PER_MINUTE BURST REQUESTS (AWS endpoint and
//! STATE_TABLE from the environment).

// A test tool: failing loudly is right.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use sophia_shared::aws::{AwsSettings, load_sdk_config};
use sophia_shared::config::{Env, ProcessEnv};
use sophia_shared::guard::ratelimit::{Limiter, Rule, lease_ttl_from_env};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [key, per_minute, burst, requests] = args.as_slice() else {
        panic!("usage: limit-probe KEY PER_MINUTE BURST REQUESTS");
    };
    let env = Env::new(&ProcessEnv);
    let sdk = load_sdk_config(AwsSettings::from_env(&env).unwrap()).await;
    let limiter = Limiter::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        env.required("STATE_TABLE").unwrap(),
    )
    .with_lease_ttl(lease_ttl_from_env(&env).unwrap());
    let rule = Rule {
        per_minute: per_minute.parse().unwrap(),
        burst: burst.parse().unwrap(),
    };
    let mut admitted = 0u32;
    for _ in 0..requests.parse::<u32>().unwrap() {
        if limiter.check(key, rule).await.allowed {
            admitted += 1;
        }
    }
    println!("{admitted}");
}
