//! api-dashboard: wiring only.

use api_dashboard::handler::{Deps, handle};
use lambda_http::{Error, run, service_fn};
use sophia_shared::aws::{AwsSettings, load_sdk_config};
use sophia_shared::config::{Env, ProcessEnv};
use sophia_shared::observability::flushed;
use sophia_shared::startup::init_observability;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Env::new(&ProcessEnv);
    init_observability(env!("CARGO_PKG_NAME"), &env)?;
    let sdk = load_sdk_config(AwsSettings::from_env(&env)?).await;
    let deps = Deps::from_env(&env, &sdk)
        .await
        .inspect_err(|error| tracing::error!(%error, "invalid configuration"))?;
    run(service_fn(|request| async {
        Ok::<_, std::convert::Infallible>(flushed(handle(&deps, request)).await)
    }))
    .await
}
