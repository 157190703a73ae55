//! deploy-pre-traffic (CodeDeploy BeforeAllowTraffic hook): wiring only.

use std::time::Duration;

use deploy_pre_traffic::handler::{Deps, handle};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use sophia_shared::aws::{AwsSettings, load_sdk_config};
use sophia_shared::config::{Env, ProcessEnv};
use sophia_shared::observability::{deadline_from_epoch_ms, invocation};
use sophia_shared::startup::init_observability;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Env::new(&ProcessEnv);
    init_observability(env!("CARGO_PKG_NAME"), &env)?;
    let sdk = load_sdk_config(AwsSettings::from_env(&env)?).await;
    let deps = Deps::from_env(&env, &sdk)
        .inspect_err(|error| tracing::error!(%error, "invalid configuration"))?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        // Lambda's deadline; a missing or past one (cargo lambda watch sends
        // none) gives the checks a minute.
        let deadline = deadline_from_epoch_ms(event.context.deadline, Duration::from_secs(60));
        let id = event.context.request_id.clone();
        invocation(
            env!("CARGO_PKG_NAME"),
            "other",
            id,
            handle(&deps, event.payload, deadline),
        )
    }))
    .await
}
