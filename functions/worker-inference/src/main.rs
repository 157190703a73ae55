//! worker-inference (SQS event source, ReportBatchItemFailures): wiring only.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use sophia_shared::aws::{AwsSettings, load_sdk_config};
use sophia_shared::config::{Env, ProcessEnv};
use sophia_shared::observability::invocation;
use sophia_shared::startup::init_observability;
use worker_inference::handler::{Deps, handle};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = Env::new(&ProcessEnv);
    init_observability(env!("CARGO_PKG_NAME"), &env)?;
    let sdk = load_sdk_config(AwsSettings::from_env(&env)?).await;
    let deps = Deps::from_env(&env, &sdk)
        .inspect_err(|error| tracing::error!(%error, "invalid configuration"))?;
    let deps = &deps;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let id = event.context.request_id.clone();
        let work = handle(deps, event.payload, &event.context);
        Ok::<_, std::convert::Infallible>(
            invocation(env!("CARGO_PKG_NAME"), "pubsub", id, work).await,
        )
    }))
    .await
}
