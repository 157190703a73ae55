//! api-chat-stream (Lambda function URL, InvokeMode RESPONSE_STREAM): wiring only.
//! The route logic is api-chat's; only the response mode differs.

use api_chat::handler::{Deps, STREAMING_SERVICE, aws_settings, handle_streaming};
use lambda_http::{Error, run_with_streaming_response, service_fn};
use sophia_shared::aws::load_sdk_config;
use sophia_shared::config::{Env, ProcessEnv};
use sophia_shared::observability::init_logging;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let env = Env::new(&ProcessEnv);
    let sdk = load_sdk_config(aws_settings(&env)?).await;
    let deps = Deps::from_env(STREAMING_SERVICE, &env, &sdk)
        .await
        .inspect_err(|error| tracing::error!(%error, "invalid configuration"))?;
    run_with_streaming_response(service_fn(|request| async {
        // Boxed: the nested future is deep enough to hit the compiler's layout depth limit.
        Ok::<_, std::convert::Infallible>(Box::pin(handle_streaming(&deps, request)).await)
    }))
    .await
}
