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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use lambda_runtime::Diagnostic;
use serde::{Deserialize, Serialize};
use sophia_shared::alerts::Alerter;
use sophia_shared::auth::tokens::now_secs;
use sophia_shared::aws::error_text;
use sophia_shared::config::{ConfigError, Env, InitError};
use sophia_shared::dynamo::{n, s};
use sophia_shared::fleet::credentials::SecretToken;
use sophia_shared::observability::MetricSet;
use sophia_shared::outbound::{OutboundClient, OutboundSettings};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Table,
    Queue,
    Function,
    Schedule,
    Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Desired {
    pub kind: Kind,
    pub logical: String,
    pub name: String,
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    resources: Vec<Desired>,
}

/// The manifest for one stack.
pub fn manifest(stack: &str) -> Result<Vec<Desired>, ConfigError> {
    let manifest: Manifest = serde_json::from_str(&DESIRED_STATE.replace("{stack}", stack))
        .map_err(|e| {
            ConfigError::new(
                "STACK_NAME",
                format!("the embedded manifest is unreadable: {e}"),
            )
        })?;
    Ok(manifest.resources)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub kind: Kind,
    pub logical: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    pub kind: Kind,
    pub logical: String,
    pub name: String,
    pub property: String,
    pub expected: String,
    pub actual: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Extra {
    pub kind: Kind,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftReport {
    pub stack: String,
    pub run: String,
    pub checked: usize,
    pub missing: Vec<Missing>,
    pub changed: Vec<Changed>,
    pub extras: Vec<Extra>,
    /// CloudFormation's own drift detection (on AWS), merged in.
    pub cloudformation: Vec<StackDrift>,
    /// What was not checked, and why.
    pub skipped: Vec<String>,
}

/// A resource CloudFormation reports as modified or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackDrift {
    pub logical: String,
    pub resource_type: String,
    /// `MODIFIED` or `DELETED`.
    pub status: String,
    /// `path: expected → actual` per differing property.
    pub differences: Vec<String>,
}

impl DriftReport {
    pub fn drifted(&self) -> bool {
        !(self.missing.is_empty()
            && self.changed.is_empty()
            && self.extras.is_empty()
            && self.cloudformation.is_empty())
    }

    fn summary(&self) -> String {
        if !self.drifted() {
            return format!(
                "stack {}: no drift; live resources match the template",
                self.stack
            );
        }
        let mut lines = vec![format!(
            "stack {}: {} changed, {} missing, {} unmanaged",
            self.stack,
            self.changed.len(),
            self.missing.len(),
            self.extras.len()
        )];
        for change in self.changed.iter().take(10) {
            lines.push(format!(
                "{} {}: {} expected {:?}, actual {:?}",
                kind_name(change.kind),
                change.logical,
                change.property,
                change.expected,
                change.actual
            ));
        }
        for missing in self.missing.iter().take(10) {
            lines.push(format!(
                "{} {} ({}) is missing",
                kind_name(missing.kind),
                missing.logical,
                missing.name
            ));
        }
        for extra in self.extras.iter().take(10) {
            lines.push(format!(
                "{} {} is not in the template",
                kind_name(extra.kind),
                extra.name
            ));
        }
        for drift in self.cloudformation.iter().take(10) {
            lines.push(format!(
                "CloudFormation: {} ({}) {} {}",
                drift.logical,
                drift.resource_type,
                drift.status,
                drift.differences.join("; ")
            ));
        }
        lines.join("\n")
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Table => "table",
        Kind::Queue => "queue",
        Kind::Function => "function",
        Kind::Schedule => "schedule",
        Kind::Secret => "secret",
    }
}

/// Compares one resource's declared properties with the live ones.
pub fn compare(
    desired: &Desired,
    actual: &BTreeMap<String, String>,
    skip: &BTreeSet<String>,
) -> Vec<Changed> {
    desired
        .properties
        .iter()
        .filter(|(property, _)| !skip.contains(property.as_str()))
        .filter_map(|(property, expected)| {
            let actual = actual.get(property).cloned().unwrap_or_default();
            (actual != *expected).then(|| Changed {
                kind: desired.kind,
                logical: desired.logical.clone(),
                name: desired.name.clone(),
                property: property.clone(),
                expected: expected.clone(),
                actual,
            })
        })
        .collect()
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

fn last_segment(arn: &str) -> String {
    arn.rsplit([':', '/']).next().unwrap_or_default().to_owned()
}

fn flag(value: bool) -> String {
    if value { "true" } else { "false" }.to_owned()
}

fn is_not_found(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ResourceNotFoundException"
                | "AWS.SimpleQueueService.NonExistentQueue"
                | "QueueDoesNotExist"
        )
    )
}

/// The live properties of one resource, in the manifest's vocabulary; `None` if
/// it does not exist.
async fn read(deps: &Deps, desired: &Desired) -> Result<Option<BTreeMap<String, String>>, String> {
    use aws_sdk_dynamodb::error::ProvideErrorMetadata as _;
    let name = desired.name.as_str();
    let mut p = BTreeMap::new();
    macro_rules! found {
        ($result:expr, $text:path) => {
            match $result {
                Ok(output) => output,
                Err(error) if is_not_found(error.code()) => return Ok(None),
                Err(error) => return Err(format!("{name}: {}", $text(error))),
            }
        };
    }
    match desired.kind {
        Kind::Table => {
            let described = found!(
                deps.dynamodb.describe_table().table_name(name).send().await,
                error_text
            );
            let Some(table) = described.table() else {
                return Ok(None);
            };
            let keys = |schema: &[aws_sdk_dynamodb::types::KeySchemaElement]| {
                schema
                    .iter()
                    .map(|k| format!("{}:{}", k.attribute_name(), k.key_type().as_str()))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            p.insert(
                "billing_mode".into(),
                table
                    .billing_mode_summary()
                    .and_then(|b| b.billing_mode())
                    .map_or("PROVISIONED", |m| m.as_str())
                    .to_owned(),
            );
            p.insert("key_schema".into(), keys(table.key_schema()));
            let mut gsis: Vec<String> = table
                .global_secondary_indexes()
                .iter()
                .map(|g| {
                    format!(
                        "{}={}",
                        g.index_name().unwrap_or_default(),
                        keys(g.key_schema())
                    )
                })
                .collect();
            gsis.sort();
            p.insert("global_secondary_indexes".into(), gsis.join(";"));
            p.insert(
                "encryption".into(),
                flag(
                    table
                        .sse_description()
                        .and_then(|d| d.status())
                        .is_some_and(|s| s.as_str() == "ENABLED"),
                ),
            );
            let ttl = found!(
                deps.dynamodb
                    .describe_time_to_live()
                    .table_name(name)
                    .send()
                    .await,
                error_text
            );
            let ttl = ttl.time_to_live_description();
            let enabled = ttl
                .and_then(|t| t.time_to_live_status())
                .is_some_and(|s| s.as_str() == "ENABLED");
            p.insert(
                "ttl_attribute".into(),
                if enabled {
                    ttl.and_then(|t| t.attribute_name())
                        .unwrap_or_default()
                        .to_owned()
                } else {
                    String::new()
                },
            );
            let backups = found!(
                deps.dynamodb
                    .describe_continuous_backups()
                    .table_name(name)
                    .send()
                    .await,
                error_text
            );
            let pitr = backups
                .continuous_backups_description()
                .and_then(|d| d.point_in_time_recovery_description())
                .and_then(|d| d.point_in_time_recovery_status())
                .is_some_and(|s| s.as_str() == "ENABLED");
            p.insert("point_in_time_recovery".into(), flag(pitr));
        }
        Kind::Queue => {
            let url = found!(
                deps.sqs.get_queue_url().queue_name(name).send().await,
                error_text
            );
            let url = url.queue_url().unwrap_or_default().to_owned();
            let attributes = found!(
                deps.sqs
                    .get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                    .send()
                    .await,
                error_text
            );
            let get = |name: &str| {
                attributes
                    .attributes()
                    .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::from(name)))
                    .cloned()
                    .unwrap_or_default()
            };
            p.insert("visibility_timeout".into(), get("VisibilityTimeout"));
            p.insert("message_retention".into(), get("MessageRetentionPeriod"));
            let encryption = if !get("KmsMasterKeyId").is_empty() {
                "kms".to_owned()
            } else {
                flag(get("SqsManagedSseEnabled") == "true")
            };
            p.insert("encryption".into(), encryption);
            let redrive: serde_json::Value =
                serde_json::from_str(&get("RedrivePolicy")).unwrap_or_default();
            p.insert(
                "dead_letter_queue".into(),
                redrive["deadLetterTargetArn"]
                    .as_str()
                    .map(last_segment)
                    .unwrap_or_default(),
            );
            p.insert(
                "max_receive_count".into(),
                match &redrive["maxReceiveCount"] {
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    _ => String::new(),
                },
            );
        }
        Kind::Function => {
            let config = found!(
                deps.lambda
                    .get_function_configuration()
                    .function_name(name)
                    .send()
                    .await,
                error_text
            );
            p.insert(
                "memory".into(),
                config.memory_size().unwrap_or_default().to_string(),
            );
            p.insert(
                "timeout".into(),
                config.timeout().unwrap_or_default().to_string(),
            );
            p.insert(
                "architecture".into(),
                config
                    .architectures()
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            p.insert(
                "runtime".into(),
                config
                    .runtime()
                    .map(|r| r.as_str().to_owned())
                    .unwrap_or_default(),
            );
            let mut names: Vec<&str> = config
                .environment()
                .and_then(|e| e.variables())
                .map(|v| v.keys().map(String::as_str).collect())
                .unwrap_or_default();
            names.sort_unstable();
            p.insert("environment_variables".into(), names.join(","));
            let concurrency = found!(
                deps.lambda
                    .get_function_concurrency()
                    .function_name(name)
                    .send()
                    .await,
                error_text
            );
            p.insert(
                "reserved_concurrency".into(),
                concurrency
                    .reserved_concurrent_executions()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
            );
        }
        Kind::Schedule => {
            let schedule = found!(
                deps.scheduler.get_schedule().name(name).send().await,
                error_text
            );
            p.insert(
                "expression".into(),
                schedule
                    .schedule_expression()
                    .unwrap_or_default()
                    .to_owned(),
            );
            p.insert(
                "state".into(),
                schedule
                    .state()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            );
            let target = schedule.target();
            p.insert(
                "target".into(),
                target.map(|t| last_segment(t.arn())).unwrap_or_default(),
            );
            p.insert(
                "dead_letter_queue".into(),
                target
                    .and_then(|t| t.dead_letter_config())
                    .and_then(|d| d.arn())
                    .map(last_segment)
                    .unwrap_or_default(),
            );
            p.insert(
                "maximum_retry_attempts".into(),
                target
                    .and_then(|t| t.retry_policy())
                    .and_then(|r| r.maximum_retry_attempts())
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            );
        }
        Kind::Secret => {
            let secret = found!(
                deps.secrets.describe_secret().secret_id(name).send().await,
                error_text
            );
            if secret.deleted_date().is_some() {
                return Ok(None);
            }
            let rotation = if secret.rotation_enabled().unwrap_or(false) {
                let rules = secret.rotation_rules();
                rules
                    .and_then(|r| r.schedule_expression())
                    .map(str::to_owned)
                    .or_else(|| {
                        rules
                            .and_then(|r| r.automatically_after_days())
                            .map(|days| format!("rate({days} days)"))
                    })
                    .unwrap_or_else(|| "enabled".to_owned())
            } else {
                String::new()
            };
            p.insert("rotation".into(), rotation);
        }
    }
    Ok(Some(p))
}

/// Names of live resources of `kind` that carry the stack's prefix.
async fn list(deps: &Deps, kind: Kind) -> Result<Vec<String>, String> {
    let prefix = format!("{}-", deps.stack);
    let mut names = Vec::new();
    match kind {
        Kind::Table => {
            let mut start: Option<String> = None;
            loop {
                let page = deps
                    .dynamodb
                    .list_tables()
                    .set_exclusive_start_table_name(start.take())
                    .send()
                    .await
                    .map_err(error_text)?;
                names.extend(
                    page.table_names()
                        .iter()
                        .filter(|n| n.starts_with(&prefix))
                        .cloned(),
                );
                match page.last_evaluated_table_name() {
                    Some(next) => start = Some(next.to_owned()),
                    None => break,
                }
            }
        }
        Kind::Queue => {
            let page = deps
                .sqs
                .list_queues()
                .queue_name_prefix(&prefix)
                .max_results(1000)
                .send()
                .await
                .map_err(error_text)?;
            names.extend(page.queue_urls().iter().map(|url| last_segment(url)));
        }
        Kind::Schedule => {
            let page = deps
                .scheduler
                .list_schedules()
                .name_prefix(&prefix)
                .send()
                .await
                .map_err(error_text)?;
            names.extend(
                page.schedules()
                    .iter()
                    .filter_map(|s| s.name().map(str::to_owned)),
            );
        }
        Kind::Secret => {
            let filter = aws_sdk_secretsmanager::types::Filter::builder()
                .key(aws_sdk_secretsmanager::types::FilterNameStringType::Name)
                .values(format!("{}/", deps.stack))
                .build();
            let page = deps
                .secrets
                .list_secrets()
                .filters(filter)
                .max_results(100)
                .send()
                .await
                .map_err(error_text)?;
            names.extend(
                page.secret_list()
                    .iter()
                    .filter_map(|s| s.name())
                    .filter(|n| n.starts_with(&format!("{}/", deps.stack)))
                    .map(str::to_owned),
            );
        }
        Kind::Function => {
            let mut marker: Option<String> = None;
            loop {
                let page = deps
                    .lambda
                    .list_functions()
                    .set_marker(marker.take())
                    .send()
                    .await
                    .map_err(error_text)?;
                names.extend(
                    page.functions()
                        .iter()
                        .filter_map(|f| f.function_name())
                        .filter(|n| n.starts_with(&prefix))
                        .map(str::to_owned),
                );
                match page.next_marker() {
                    Some(next) => marker = Some(next.to_owned()),
                    None => break,
                }
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_manifest_names_the_stack_everywhere() {
        let resources = manifest("prod").unwrap();
        assert!(resources.len() >= 20);
        assert!(resources.iter().all(|r| !r.name.contains("{stack}")));
        let queue = resources.iter().find(|r| r.logical == "JobsQueue").unwrap();
        assert_eq!(queue.name, "prod-jobs");
        assert_eq!(queue.properties["dead_letter_queue"], "prod-jobs-dlq");
    }

    #[test]
    fn only_differing_properties_are_reported() {
        let desired = Desired {
            kind: Kind::Queue,
            logical: "Q".into(),
            name: "q".into(),
            properties: [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "2".to_owned()),
                ("rotation".to_owned(), "x".to_owned()),
            ]
            .into(),
        };
        let actual: BTreeMap<String, String> = [
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "3".to_owned()),
        ]
        .into();
        let changes = compare(&desired, &actual, &["rotation".to_owned()].into());
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (
                changes[0].property.as_str(),
                changes[0].expected.as_str(),
                changes[0].actual.as_str()
            ),
            ("b", "2", "3")
        );
    }

    #[test]
    fn arns_and_urls_end_in_the_name() {
        assert_eq!(
            last_segment("arn:aws:sqs:us-east-1:1:stack-jobs-dlq"),
            "stack-jobs-dlq"
        );
        assert_eq!(
            last_segment("http://127.0.0.1:5055/123456789012/stack-jobs"),
            "stack-jobs"
        );
        assert_eq!(
            last_segment("arn:aws:lambda:r:1:function:stack-job"),
            "stack-job"
        );
    }
}
