//! What both CodeDeploy lifecycle hooks share (`deploy-pre-traffic`,
//! `deploy-post-traffic`): the hook event, their error, and the report of the
//! verdict, exactly once.
//!
//! Behind the `codedeploy` feature: only the hooks link the CodeDeploy SDK.

use std::time::{Duration, Instant};

use aws_sdk_codedeploy::types::LifecycleEventStatus;
use lambda_runtime::Diagnostic;
use serde::Deserialize;

use crate::config::{ConfigError, Env};

/// CodeDeploy's hook event.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HookEvent {
    pub deployment_id: String,
    pub lifecycle_event_hook_execution_id: String,
}

impl HookEvent {
    pub fn parse(event: serde_json::Value) -> Result<Self, HookError> {
        serde_json::from_value(event).map_err(|e| HookError::Invalid(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the event is not a CodeDeploy lifecycle hook event: {0}")]
    Invalid(String),
    #[error("the verdict could not be reported to CodeDeploy: {0}")]
    Report(String),
}

impl From<HookError> for Diagnostic {
    fn from(error: HookError) -> Self {
        let error_type = match error {
            HookError::Invalid(_) => "NonRetryable.Invalid",
            HookError::Report(_) => "Retryable.Report",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// The CodeDeploy client; `CODEDEPLOY_ENDPOINT_URL` points it at the local
/// stand-in (`tools/codedeploy_standin.py`: no local server has CodeDeploy).
pub fn codedeploy_client(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> aws_sdk_codedeploy::Client {
    let mut config = aws_sdk_codedeploy::config::Builder::from(sdk);
    if let Some(url) = env.optional("CODEDEPLOY_ENDPOINT_URL") {
        config = config.endpoint_url(url);
    }
    aws_sdk_codedeploy::Client::from_conf(config.build())
}

/// `HOOK_REPORT_MARGIN_MS` (5000): kept back from the invocation's time for the report.
pub fn report_margin(env: &Env<'_>) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(
        env.parse_or("HOOK_REPORT_MARGIN_MS", 5_000u64)?,
    ))
}

/// Until when a hook may work so that its report still fits before `deadline`
/// (now, when the margin is already used up).
pub fn work_until(deadline: Instant, margin: Duration) -> Instant {
    deadline
        .checked_sub(margin)
        .map_or_else(Instant::now, |until| until.max(Instant::now()))
}

/// The verdict of a hook.
pub fn verdict(passed: bool) -> LifecycleEventStatus {
    if passed {
        LifecycleEventStatus::Succeeded
    } else {
        LifecycleEventStatus::Failed
    }
}

/// Reports the verdict once. Retried (up to 3 tries, before `deadline`) only
/// when CodeDeploy did not answer: an answer, even a refusal (the execution
/// already has a verdict), cannot change by trying again. The first try is
/// made whatever time is left: a verdict never reported holds the deployment
/// for an hour, and the runtime ends the invocation at its deadline anyway.
pub async fn report(
    codedeploy: &aws_sdk_codedeploy::Client,
    event: &HookEvent,
    status: LifecycleEventStatus,
    deadline: Instant,
) -> Result<(), HookError> {
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let call = codedeploy
            .put_lifecycle_event_hook_execution_status()
            .deployment_id(&event.deployment_id)
            .lifecycle_event_hook_execution_id(&event.lifecycle_event_hook_execution_id)
            .status(status.clone())
            .send();
        match tokio::time::timeout(left, call).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) => {
                let answered =
                    matches!(error, aws_sdk_codedeploy::error::SdkError::ServiceError(_));
                last = aws_sdk_codedeploy::error::DisplayErrorContext(error).to_string();
                if answered {
                    break;
                }
            }
            Err(_) => last = "no answer before the invocation's deadline".to_owned(),
        }
        tracing::warn!(attempt, error = %last, "reporting the verdict failed");
    }
    Err(HookError::Report(last))
}
