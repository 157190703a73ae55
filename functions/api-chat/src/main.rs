//! api-chat (API Gateway REST API, response streaming): wiring only.

use api_chat::handler::{Deps, aws_settings, handle};
use lambda_http::{Error, run_with_streaming_response, service_fn};
use sophia_shared::aws::load_sdk_config;
use sophia_shared::config::{Env, ProcessEnv};
use sophia_shared::observability::flushed;
use sophia_shared::startup::init_observability;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Env::new(&ProcessEnv);
    init_observability(env!("CARGO_PKG_NAME"), &env)?;
    let sdk = load_sdk_config(aws_settings(&env)?).await;
    let deps = Deps::from_env(&env, &sdk)
        .await
        .inspect_err(|error| tracing::error!(%error, "invalid configuration"))?;
    run_with_streaming_response(service_fn(|request| async {
        // Boxed: the nested future is deep enough to hit the compiler's layout depth limit.
        Ok::<_, std::convert::Infallible>(flushed(Box::pin(handle(&deps, request))).await)
    }))
    .await
}
