//! Reading the live resources: one reader per kind (tables, queues, functions,
//! schedules, secrets), each giving the properties the manifest compares.

use std::collections::BTreeMap;

use sophia_shared::aws::error_text;

use crate::handler::Deps;
use crate::report::{Desired, Kind};

fn last_segment(arn: &str) -> String {
    arn.rsplit([':', '/']).next().unwrap_or_default().to_owned()
}

/// What a schedule invokes: `function[:alias]` for a Lambda ARN, else the ARN's
/// last segment (as infra/desired_state.py writes it).
fn invoked(arn: &str) -> String {
    match arn.split_once(":function:") {
        Some((_, function)) => function.to_owned(),
        None => last_segment(arn),
    }
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
pub(crate) async fn read(
    deps: &Deps,
    desired: &Desired,
) -> Result<Option<BTreeMap<String, String>>, String> {
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
                target.map(|t| invoked(t.arn())).unwrap_or_default(),
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
pub(crate) async fn list(deps: &Deps, kind: Kind) -> Result<Vec<String>, String> {
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

    #[test]
    fn a_schedule_invokes_a_function_and_its_alias() {
        assert_eq!(
            invoked("arn:aws:lambda:r:1:function:stack-job:live"),
            "stack-job:live"
        );
        assert_eq!(
            invoked("arn:aws:lambda:r:1:function:stack-job"),
            "stack-job"
        );
        assert_eq!(invoked("arn:aws:sqs:r:1:stack-queue"), "stack-queue");
    }
}
