//! The local AWS provisioned from infra/template.yaml has every declared table and
//! queue with the declared properties, and provisioning twice converges.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_dynamodb::types::{ContinuousBackupsStatus, SseStatus, TimeToLiveStatus};
use aws_sdk_sqs::types::QueueAttributeName;
use harness::{local_aws, unique_stack};
use serde_json::Value;

#[tokio::test]
async fn every_declared_table_and_queue_exists_as_declared() {
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("prov"), &[]);
    let config = aws.sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let manifest = stack.report["manifest"].as_object().unwrap();
    let (mut tables, mut queues) = (0, 0);

    for (logical, resource) in manifest {
        let id = resource["physical_id"].as_str().unwrap();
        let props = &resource["properties"];
        match resource["type"].as_str().unwrap() {
            "AWS::DynamoDB::Table" => {
                tables += 1;
                // Policy: every table has PITR and encryption on.
                assert_eq!(
                    props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"], true,
                    "{logical}"
                );
                assert_eq!(props["SSESpecification"]["SSEEnabled"], true, "{logical}");

                let table = dynamodb
                    .describe_table()
                    .table_name(id)
                    .send()
                    .await
                    .unwrap()
                    .table
                    .unwrap();
                assert_eq!(
                    table.sse_description().and_then(|s| s.status()),
                    Some(&SseStatus::Enabled),
                    "{logical}"
                );
                let keys: Vec<(String, String)> = table
                    .key_schema()
                    .iter()
                    .map(|k| {
                        (
                            k.attribute_name().to_owned(),
                            k.key_type().as_str().to_owned(),
                        )
                    })
                    .collect();
                let declared: Vec<(String, String)> = props["KeySchema"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| {
                        (
                            k["AttributeName"].as_str().unwrap().to_owned(),
                            k["KeyType"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect();
                assert_eq!(keys, declared, "{logical}");
                assert_eq!(
                    table
                        .billing_mode_summary()
                        .and_then(|b| b.billing_mode())
                        .map(|m| m.as_str()),
                    props["BillingMode"].as_str(),
                    "{logical}"
                );

                let backups = dynamodb
                    .describe_continuous_backups()
                    .table_name(id)
                    .send()
                    .await
                    .unwrap();
                let pitr = backups
                    .continuous_backups_description()
                    .and_then(|d| d.point_in_time_recovery_description())
                    .and_then(|p| p.point_in_time_recovery_status())
                    .cloned();
                assert_eq!(
                    pitr,
                    Some(aws_sdk_dynamodb::types::PointInTimeRecoveryStatus::Enabled),
                    "{logical}"
                );
                assert_eq!(
                    backups
                        .continuous_backups_description()
                        .unwrap()
                        .continuous_backups_status(),
                    &ContinuousBackupsStatus::Enabled
                );

                if let Some(ttl) = props.get("TimeToLiveSpecification") {
                    let live = dynamodb
                        .describe_time_to_live()
                        .table_name(id)
                        .send()
                        .await
                        .unwrap();
                    let live = live.time_to_live_description().unwrap();
                    assert_eq!(
                        live.time_to_live_status(),
                        Some(&TimeToLiveStatus::Enabled),
                        "{logical}"
                    );
                    assert_eq!(
                        live.attribute_name(),
                        ttl["AttributeName"].as_str(),
                        "{logical}"
                    );
                }
            }
            "AWS::SQS::Queue" => {
                queues += 1;
                let attributes = sqs
                    .get_queue_attributes()
                    .queue_url(id)
                    .attribute_names(QueueAttributeName::All)
                    .send()
                    .await
                    .unwrap()
                    .attributes
                    .unwrap();
                let live = |name: QueueAttributeName| attributes.get(&name).cloned();
                for (declared, name) in [
                    ("VisibilityTimeout", QueueAttributeName::VisibilityTimeout),
                    (
                        "MessageRetentionPeriod",
                        QueueAttributeName::MessageRetentionPeriod,
                    ),
                ] {
                    if let Some(value) = props.get(declared) {
                        assert_eq!(live(name), Some(value.to_string()), "{logical}.{declared}");
                    }
                }
                assert_eq!(
                    props["SqsManagedSseEnabled"], true,
                    "{logical}: queues are encrypted"
                );
                assert_eq!(
                    live(QueueAttributeName::SqsManagedSseEnabled).as_deref(),
                    Some("true"),
                    "{logical}"
                );

                if let Some(redrive) = props.get("RedrivePolicy") {
                    let live_redrive: Value = serde_json::from_str(
                        &live(QueueAttributeName::RedrivePolicy).expect("redrive policy"),
                    )
                    .unwrap();
                    assert_eq!(
                        live_redrive["deadLetterTargetArn"], redrive["deadLetterTargetArn"],
                        "{logical}"
                    );
                    assert_eq!(
                        live_redrive["maxReceiveCount"]
                            .to_string()
                            .trim_matches('"'),
                        redrive["maxReceiveCount"].to_string(),
                        "{logical}"
                    );
                    let max = redrive["maxReceiveCount"].as_u64().unwrap();
                    assert!(
                        (1..=10).contains(&max),
                        "{logical}: maxReceiveCount is bounded"
                    );
                } else {
                    // Policy: a queue without a DLQ must itself be the DLQ of a queue or a schedule.
                    let arn = live(QueueAttributeName::QueueArn).unwrap();
                    let is_dlq = manifest.values().any(|other| {
                        other["properties"]["RedrivePolicy"]["deadLetterTargetArn"] == arn.as_str()
                            || other["properties"]["Target"]["DeadLetterConfig"]["Arn"]
                                == arn.as_str()
                    });
                    assert!(is_dlq, "{logical} has no dead-letter queue and is none");
                }
            }
            "AWS::SecretsManager::Secret" => {
                let secrets = aws_sdk_secretsmanager::Client::new(&config);
                let value = secrets
                    .get_secret_value()
                    .secret_id(id)
                    .version_stage("AWSCURRENT")
                    .send()
                    .await
                    .unwrap();
                let stored = value.secret_string().unwrap_or_default();
                match props.get("SecretString").and_then(|v| v.as_str()) {
                    Some(declared) => assert_eq!(stored, declared, "{logical}"),
                    None => assert!(stored.len() >= 32, "{logical} has a generated value"),
                }
            }
            "AWS::Scheduler::Schedule" => {
                // Policy: every schedule retries a bounded number of times, then dead-letters.
                let retries = props["Target"]["RetryPolicy"]["MaximumRetryAttempts"]
                    .as_u64()
                    .expect("retry policy");
                assert!((1..=5).contains(&retries), "{logical}");
                let scheduler = aws_sdk_scheduler::Client::new(&config);
                let live = scheduler.get_schedule().name(id).send().await.unwrap();
                assert_eq!(
                    live.schedule_expression(),
                    props["ScheduleExpression"].as_str(),
                    "{logical}"
                );
                let target = live.target().unwrap();
                assert_eq!(
                    target.dead_letter_config().and_then(|d| d.arn()),
                    props["Target"]["DeadLetterConfig"]["Arn"].as_str(),
                    "{logical}"
                );
                assert_eq!(
                    target
                        .retry_policy()
                        .and_then(|r| r.maximum_retry_attempts())
                        .map(|n| n as u64),
                    Some(retries),
                    "{logical}"
                );
            }
            other => panic!("manifest has an unexpected type {other}"),
        }
    }
    assert!(
        tables >= 2 && queues >= 2,
        "tables {tables}, queues {queues}"
    );
}

#[tokio::test]
async fn provisioning_twice_converges() {
    let aws = local_aws();
    let name = unique_stack("prov-twice");
    let first = aws.provision(&name, &[]);
    let second = aws.provision(&name, &[]);
    assert_eq!(first.env, second.env);
    for resource in second.report["resources"].as_object().unwrap().values() {
        assert_ne!(resource["action"], "created", "{resource}");
    }
}

#[tokio::test]
async fn function_environment_comes_from_the_template() {
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("prov-env"), &[("LogLevel", "debug")]);
    let health = &stack.report["functions"]["api-health"];
    assert_eq!(health["RUST_LOG"], "debug");
    assert_eq!(health["STATE_TABLE"], format!("{}-state", stack.stack));
    assert!(
        health["JOBS_QUEUE_URL"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{}-jobs", stack.stack))
    );
    assert_eq!(health["READY_CHECK_TIMEOUT_MS"], "800");
}

/// Each function cold-starts with exactly the environment the template gives it
/// (Globals and its own variables; `make dev` shares one merged file, which
/// would hide a variable set on one function and needed by another).
#[tokio::test]
async fn every_function_starts_with_only_its_own_template_environment() {
    use std::collections::HashMap;

    use sophia_shared::config::Env;
    let aws = local_aws();
    let stack = aws.provision(&unique_stack("envs"), &[]);
    let sdk = aws.sdk_config().await;
    let functions = stack.report["functions"].as_object().unwrap();
    let env_of = |name: &str| -> HashMap<String, String> {
        functions
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the template"))
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect()
    };
    let mut started = Vec::new();
    macro_rules! starts {
        ($name:literal, $build:expr) => {{
            let env = env_of($name);
            let env = Env::new(&env);
            let result = $build(&env).await;
            if let Err(error) = result {
                panic!(
                    "{} does not start from its template environment: {error}",
                    $name
                );
            }
            started.push($name);
        }};
    }
    starts!("api-health", |env: &Env<'_>| {
        let config = api_health::handler::HealthConfig::from_env(env);
        async move { config.map(|_| ()) }
    });
    starts!("api-auth", |env| api_auth::handler::Deps::from_env(
        env, &sdk
    ));
    starts!("api-admin", |env| api_admin::handler::Deps::from_env(
        env, &sdk
    ));
    starts!("api-chat", |env| api_chat::handler::Deps::from_env(
        env, &sdk
    ));
    starts!("api-jobs", |env| api_jobs::handler::Deps::from_env(
        env, &sdk
    ));
    starts!("api-dashboard", |env| {
        api_dashboard::handler::Deps::from_env(env, &sdk)
    });
    starts!("api-memory", |env| api_memory::handler::Deps::from_env(
        env, &sdk
    ));
    starts!("api-mcp", |env| api_mcp::handler::Deps::from_env(env, &sdk));
    starts!("worker-memory-embed", |env| {
        let deps = worker_memory_embed::handler::Deps::from_env(env, &sdk);
        async move { deps.map(|_| ()) }
    });
    starts!("worker-inference", |env| {
        let deps = worker_inference::handler::Deps::from_env(env, &sdk);
        async move { deps.map(|_| ()) }
    });
    starts!("job-queue-sweep", |env| {
        let deps = job_queue_sweep::handler::Deps::from_env(env, &sdk);
        async move { deps.map(|_| ()) }
    });
    starts!("job-drift-detect", |env| {
        let deps = job_drift_detect::handler::Deps::from_env(env, &sdk);
        async move { deps.map(|_| ()) }
    });
    starts!("job-fleet-probe", |env| {
        let deps = job_fleet_probe::handler::Deps::from_env(env, &sdk);
        async move { deps.map(|_| ()) }
    });
    starts!("job-secret-rotate", |env| {
        let deps = job_secret_rotate::handler::Deps::from_env(env, &sdk);
        async move { deps.map(|_| ()) }
    });
    starts!("job-slo-check", |env| {
        let deps = job_slo_check::handler::Deps::from_env(env, &sdk);
        async move { deps.map(|_| ()) }
    });
    starts!("deploy-pre-traffic", |env| {
        let deps = deploy_pre_traffic::handler::Deps::from_env(env, &sdk);
        async move { deps.map(|_| ()) }
    });
    starts!("deploy-post-traffic", |env| {
        let deps = deploy_post_traffic::handler::Deps::from_env(env, &sdk);
        async move { deps.map(|_| ()) }
    });
    assert_eq!(
        started.len(),
        functions.len(),
        "every function in the template is checked"
    );
}
