//! api-health: wiring only. Configuration and clients are built once per cold start.

use api_health::handler::{Deps, HealthConfig, handle};
use lambda_http::{Error, run, service_fn};
use sophia_shared::aws::load_sdk_config;
use sophia_shared::config::{Env, ProcessEnv};
use sophia_shared::observability::flushed;
use sophia_shared::startup::init_observability;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Env::new(&ProcessEnv);
    init_observability(env!("CARGO_PKG_NAME"), &env)?;
    let config = HealthConfig::from_env(&env)
        .inspect_err(|error| tracing::error!(%error, "invalid configuration"))?;
    let sdk = load_sdk_config(config.aws).await;
    let deps = Deps::new(config, &sdk)?;
    run(service_fn(|request| async {
        Ok::<_, std::convert::Infallible>(flushed(handle(&deps, request)).await)
    }))
    .await
}
