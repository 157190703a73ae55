//! Compares what `infra/template.yaml` declares with what exists.
//!
//! The desired state is `infra/desired-state.json`, generated from the template by
//! `infra/desired_state.py` (a test fails when it is stale) and embedded here at
//! build time; `{stack}` in it becomes `STACK_NAME`. For every declared table,
//! queue, function, schedule and secret the job reads the live resource and
//! reports it missing, or each property whose value differs (expected vs actual);
//! resources named like the stack's but not declared are reported as unmanaged
//! extras. On AWS, CloudFormation's own `DetectStackDrift` for the stack runs too
//! and its modified or deleted resources are merged into the report. Kinds listed
//! in `DRIFT_SKIP` (`functions`, `rotation`, `cloudformation`) are not checked:
//! the local stack has no Lambda functions, rotation schedules or CloudFormation stack.
//!
//! Each report is stored (state table: `drift#report` / `latest` and `run#<run>`,
//! kept 30 days), counted in the `DriftFindings` metric, and alerted through
//! `shared::alerts`: one message when drift appears, one when it is repaired.
//! Running twice is harmless: the same report, no second message.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use lambda_runtime::Diagnostic;
use serde::Deserialize;
use sophia_shared::aws::dynamo::{n, s};
use sophia_shared::aws::error_text;
use sophia_shared::aws::secrets::SecretToken;
use sophia_shared::clock::now_secs;
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::observability::MetricSet;
use sophia_shared::ops::alerts::Alerter;
use sophia_shared::outbound::{OutboundClient, OutboundSettings};
use sophia_shared::startup::InitError;

use crate::live::{list, read};
use crate::report::{Desired, DriftReport, Extra, Kind, Missing, StackDrift, compare, manifest};

pub const SERVICE: &str = "job-drift-detect";
/// The manifest, generated from the template (see the module comment).
pub const DESIRED_STATE: &str = include_str!("../../../infra/desired-state.json");
const REPORT_RETENTION_SECS: u64 = 30 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error("the event is not a drift-detection event: {0}")]
    Invalid(String),
    #[error("{0}")]
    Aws(String),
}

impl From<DriftError> for Diagnostic {
    fn from(error: DriftError) -> Self {
        let error_type = match error {
            DriftError::Invalid(_) => "NonRetryable.Invalid",
            DriftError::Aws(_) => "Retryable.Aws",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

pub struct Deps {
    pub stack: String,
    pub desired: Vec<Desired>,
    pub skip_functions: bool,
    pub skip_rotation: bool,
    pub skip_cloudformation: bool,
    pub cloudformation: aws_sdk_cloudformation::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub scheduler: aws_sdk_scheduler::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub state_table: String,
    pub alerts: Alerter,
}

impl Deps {
    /// `STACK_NAME`, `STATE_TABLE`, `ALERT_WEBHOOK_SECRET` (optional), `DRIFT_SKIP`
    /// (comma-separated: `functions`, `rotation`, `cloudformation`; none by default).
    pub fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let stack = env.required("STACK_NAME")?;
        let skip = env.list("DRIFT_SKIP");
        if let Some(unknown) = skip
            .iter()
            .find(|s| !matches!(s.as_str(), "functions" | "rotation" | "cloudformation"))
        {
            return Err(ConfigError::new(
                "DRIFT_SKIP",
                format!("unknown kind {unknown:?}; known: functions, rotation, cloudformation"),
            )
            .into());
        }
        let webhook = env.optional("ALERT_WEBHOOK_SECRET").map(|id| {
            SecretToken::new(
                aws_sdk_secretsmanager::Client::new(sdk),
                id,
                Duration::from_secs(300),
            )
        });
        let state_table = env.required("STATE_TABLE")?;
        Ok(Self {
            desired: manifest(&stack)?,
            skip_functions: skip.iter().any(|s| s == "functions"),
            skip_rotation: skip.iter().any(|s| s == "rotation"),
            skip_cloudformation: skip.iter().any(|s| s == "cloudformation"),
            cloudformation: aws_sdk_cloudformation::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            scheduler: aws_sdk_scheduler::Client::new(sdk),
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            lambda: aws_sdk_lambda::Client::new(sdk),
            alerts: Alerter::new(
                aws_sdk_dynamodb::Client::new(sdk),
                state_table.clone(),
                OutboundClient::new(OutboundSettings::from_env(env)?)?,
                webhook,
                SERVICE,
            ),
            state_table,
            stack,
        })
    }
}

/// The scheduler's input: `{"run": "<aws.scheduler.scheduled-time>"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DriftEvent {
    #[serde(default)]
    run: Option<String>,
}

pub async fn handle(deps: &Deps, event: serde_json::Value) -> Result<DriftReport, DriftError> {
    let event: DriftEvent =
        serde_json::from_value(event).map_err(|e| DriftError::Invalid(e.to_string()))?;
    let run = event
        .run
        .unwrap_or_else(|| format!("manual-{}", now_secs()));
    let mut skipped = Vec::new();
    if deps.skip_functions {
        skipped.push("functions: DRIFT_SKIP (not deployed here)".to_owned());
    }
    if deps.skip_rotation {
        skipped.push("secret rotation: DRIFT_SKIP (no rotation schedules here)".to_owned());
    }
    let checked: Vec<&Desired> = deps
        .desired
        .iter()
        .filter(|d| !(deps.skip_functions && d.kind == Kind::Function))
        .collect();
    let live = futures_util::future::join_all(checked.iter().map(|d| read(deps, d))).await;
    let mut report = DriftReport {
        stack: deps.stack.clone(),
        run: run.clone(),
        checked: checked.len(),
        missing: Vec::new(),
        changed: Vec::new(),
        extras: Vec::new(),
        cloudformation: Vec::new(),
        skipped,
    };
    let skip_properties: BTreeSet<String> = if deps.skip_rotation {
        ["rotation".to_owned()].into()
    } else {
        BTreeSet::new()
    };
    for (desired, actual) in checked.iter().zip(live) {
        match actual.map_err(DriftError::Aws)? {
            None => report.missing.push(Missing {
                kind: desired.kind,
                logical: desired.logical.clone(),
                name: desired.name.clone(),
            }),
            Some(actual) => report
                .changed
                .extend(compare(desired, &actual, &skip_properties)),
        }
    }
    let mut kinds = vec![Kind::Table, Kind::Queue, Kind::Schedule, Kind::Secret];
    if !deps.skip_functions {
        kinds.push(Kind::Function);
    }
    for kind in kinds {
        let declared: BTreeSet<&str> = deps
            .desired
            .iter()
            .filter(|d| d.kind == kind)
            .map(|d| d.name.as_str())
            .collect();
        for name in list(deps, kind).await.map_err(DriftError::Aws)? {
            if !declared.contains(name.as_str()) {
                report.extras.push(Extra { kind, name });
            }
        }
    }
    if deps.skip_cloudformation {
        report
            .skipped
            .push("CloudFormation drift detection: DRIFT_SKIP (no stack here)".to_owned());
    } else {
        match stack_drift(deps).await {
            Ok(drifts) => report.cloudformation = drifts,
            // Our own comparison stands without it; say why it is missing.
            Err(error) => {
                tracing::warn!(%error, "CloudFormation drift detection failed");
                report
                    .skipped
                    .push(format!("CloudFormation drift detection failed: {error}"));
            }
        }
    }
    store(deps, &report).await.map_err(DriftError::Aws)?;
    let findings = report.missing.len() + report.changed.len() + report.extras.len();
    MetricSet::new("Sophia")
        .dimension("Service", SERVICE)
        .count("DriftFindings", findings as f64)
        .property("stack", deps.stack.as_str())
        .emit();
    if report.drifted() {
        tracing::warn!(findings, report = %serde_json::to_string(&report).unwrap_or_default(), "drift found");
    } else {
        tracing::info!(checked = report.checked, "no drift");
    }
    deps.alerts
        .update(
            &format!("drift#{}", deps.stack),
            report.drifted(),
            &report.summary(),
        )
        .await
        .map_err(DriftError::Aws)?;
    Ok(report)
}

/// CloudFormation's `DetectStackDrift` for `STACK_NAME`: started, awaited (up to
/// a minute), and its modified or deleted resources listed.
async fn stack_drift(deps: &Deps) -> Result<Vec<StackDrift>, String> {
    use aws_sdk_cloudformation::types::{StackDriftDetectionStatus, StackResourceDriftStatus};
    let text = |e: aws_sdk_cloudformation::Error| e.to_string();
    let detection = deps
        .cloudformation
        .detect_stack_drift()
        .stack_name(&deps.stack)
        .send()
        .await
        .map_err(|e| text(e.into()))?;
    let id = detection
        .stack_drift_detection_id()
        .ok_or("no detection ID in the answer")?
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = deps
            .cloudformation
            .describe_stack_drift_detection_status()
            .stack_drift_detection_id(&id)
            .send()
            .await
            .map_err(|e| text(e.into()))?;
        match status.detection_status() {
            Some(StackDriftDetectionStatus::DetectionComplete) => break,
            Some(StackDriftDetectionStatus::DetectionFailed) => {
                return Err(format!(
                    "detection failed: {}",
                    status.detection_status_reason().unwrap_or_default()
                ));
            }
            _ if std::time::Instant::now() > deadline => {
                return Err("detection did not finish within 60 s".to_owned());
            }
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
    let mut drifts = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = deps
            .cloudformation
            .describe_stack_resource_drifts()
            .stack_name(&deps.stack)
            .stack_resource_drift_status_filters(StackResourceDriftStatus::Modified)
            .stack_resource_drift_status_filters(StackResourceDriftStatus::Deleted)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| text(e.into()))?;
        for drift in page.stack_resource_drifts() {
            drifts.push(StackDrift {
                logical: drift.logical_resource_id().unwrap_or_default().to_owned(),
                resource_type: drift.resource_type().unwrap_or_default().to_owned(),
                status: drift
                    .stack_resource_drift_status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                differences: drift
                    .property_differences()
                    .iter()
                    .map(|d| {
                        format!(
                            "{}: {} → {}",
                            d.property_path().unwrap_or_default(),
                            d.expected_value().unwrap_or_default(),
                            d.actual_value().unwrap_or_default()
                        )
                    })
                    .collect(),
            });
        }
        match page.next_token() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(drifts)
}

async fn store(deps: &Deps, report: &DriftReport) -> Result<(), String> {
    let body = serde_json::to_string(report).map_err(|e| e.to_string())?;
    let now = now_secs();
    for sk in ["latest".to_owned(), format!("run#{}", report.run)] {
        deps.dynamodb
            .put_item()
            .table_name(&deps.state_table)
            .item("pk", s(&format!("drift#{}", deps.stack)))
            .item("sk", s(&sk))
            .item("report", s(&body))
            .item("drifted", AttributeValue::Bool(report.drifted()))
            .item("checked_at", n(now))
            .item("expires_at", n(now + REPORT_RETENTION_SECS))
            .send()
            .await
            .map_err(error_text)?;
    }
    Ok(())
}
