//! api-chat (behind API Gateway): wiring only.

use api_chat::handler::{Deps, SERVICE, aws_settings, handle};
use lambda_http::{Error, run, service_fn};
use sophia_shared::aws::load_sdk_config;
use sophia_shared::config::{Env, ProcessEnv};
use sophia_shared::observability::init_logging;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let env = Env::new(&ProcessEnv);
    let sdk = load_sdk_config(aws_settings(&env)?).await;
    let deps = Deps::from_env(SERVICE, &env, &sdk)
        .await
        .inspect_err(|error| tracing::error!(%error, "invalid configuration"))?;
    run(service_fn(|request| async {
        Ok::<_, std::convert::Infallible>(handle(&deps, request).await)
    }))
    .await
}
