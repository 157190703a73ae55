//! job-fleet-probe (EventBridge Scheduler, every minute): wiring only.

use job_fleet_probe::handler::{Deps, handle};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use sophia_shared::aws::{AwsSettings, load_sdk_config};
use sophia_shared::config::{Env, ProcessEnv};
use sophia_shared::observability::invocation;
use sophia_shared::startup::init_observability;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Env::new(&ProcessEnv);
    init_observability(env!("CARGO_PKG_NAME"), &env)?;
    let sdk = load_sdk_config(AwsSettings::from_env(&env)?).await;
    let deps = Deps::from_env(&env, &sdk)
        .inspect_err(|error| tracing::error!(%error, "invalid configuration"))?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let id = event.context.request_id.clone();
        invocation(
            env!("CARGO_PKG_NAME"),
            "timer",
            id,
            handle(&deps, event.payload),
        )
    }))
    .await
}
