//! job-drift-detect against a stack provisioned from infra/template.yaml.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use harness::{local_aws, python, unique_stack, workspace_root};
use job_drift_detect::handler::{Deps, DriftError, handle};
use job_drift_detect::report::Kind;
use serde_json::json;
use sophia_shared::config::Env;

#[test]
fn the_embedded_manifest_matches_the_template() {
    let status = Command::new(python())
        .arg(workspace_root().join("infra/desired_state.py"))
        .arg("--check")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "infra/desired-state.json is stale: run python3 infra/desired_state.py"
    );
}

#[tokio::test]
async fn out_of_band_changes_are_reported_exactly_alerted_once_and_resolved_once() {
    let stack_name = unique_stack("drift");
    let stack = local_aws().provision(&stack_name, &[]);
    let sdk = local_aws().sdk_config().await;
    let received = harness::alert_webhook(&stack).await;
    let deps = Deps::from_env(&Env::new(&stack.env), &sdk).unwrap();
    let run = |id: &str| handle(&deps, json!({ "run": id }));

    let clean = run("r1").await.unwrap();
    assert!(!clean.drifted(), "{clean:?}");
    assert!(clean.checked >= 15);
    assert!(received.lock().unwrap().is_empty());

    // Out of band: a queue's visibility timeout, a table's PITR, a deleted queue,
    // and a table nobody declared.
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    sqs.set_queue_attributes()
        .queue_url(stack.env("JOBS_QUEUE_URL"))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "60",
        )
        .send()
        .await
        .unwrap();
    dynamodb
        .update_continuous_backups()
        .table_name(stack.env("AUDIT_TABLE"))
        .point_in_time_recovery_specification(
            aws_sdk_dynamodb::types::PointInTimeRecoverySpecification::builder()
                .point_in_time_recovery_enabled(false)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let probe_dlq = sqs
        .get_queue_url()
        .queue_name(format!("{stack_name}-job-fleet-probe-dlq"))
        .send()
        .await
        .unwrap();
    sqs.delete_queue()
        .queue_url(probe_dlq.queue_url().unwrap())
        .send()
        .await
        .unwrap();
    let rogue = format!("{stack_name}-rogue");
    dynamodb
        .create_table()
        .table_name(&rogue)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    for id in ["r2", "r3"] {
        let report = run(id).await.unwrap();
        let mut changed: Vec<_> = report
            .changed
            .iter()
            .map(|c| {
                (
                    c.logical.as_str(),
                    c.property.as_str(),
                    c.expected.as_str(),
                    c.actual.as_str(),
                )
            })
            .collect();
        changed.sort();
        assert_eq!(
            changed,
            vec![
                ("AuditTable", "point_in_time_recovery", "true", "false"),
                ("JobsQueue", "visibility_timeout", "180", "60"),
            ],
            "exactly the two changes"
        );
        let missing: Vec<_> = report.missing.iter().map(|m| m.logical.as_str()).collect();
        assert_eq!(missing, vec!["JobFleetProbeDeadLetterQueue"]);
        let extras: Vec<_> = report
            .extras
            .iter()
            .map(|e| (e.kind, e.name.as_str()))
            .collect();
        assert_eq!(extras, vec![(Kind::Table, rogue.as_str())]);
    }
    {
        let messages = received.lock().unwrap();
        assert_eq!(messages.len(), 1, "one alert for two runs: {messages:?}");
        assert!(messages[0].starts_with("[FIRING]"));
        assert!(
            messages[0].contains("visibility_timeout expected \"180\", actual \"60\""),
            "{}",
            messages[0]
        );
    }

    // Repair: provision again (it converges) and drop the stray table.
    local_aws().provision(&stack_name, &[]);
    dynamodb
        .delete_table()
        .table_name(&rogue)
        .send()
        .await
        .unwrap();
    let repaired = run("r4").await.unwrap();
    assert!(!repaired.drifted(), "{repaired:?}");
    let again = run("r5").await.unwrap();
    assert!(!again.drifted());
    {
        let messages = received.lock().unwrap();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[1].starts_with("[RESOLVED]"));
    }

    // The latest report is stored.
    let latest = dynamodb
        .get_item()
        .table_name(stack.env("STATE_TABLE"))
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("drift#{stack_name}")),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("latest".into()),
        )
        .send()
        .await
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(latest.item().unwrap()["report"].as_s().unwrap()).unwrap();
    assert_eq!(report["run"], "r5");
}

#[tokio::test]
async fn a_bad_event_is_not_retried() {
    let stack = local_aws().provision(&unique_stack("drift-bad"), &[]);
    let deps = Deps::from_env(&Env::new(&stack.env), &local_aws().sdk_config().await).unwrap();
    let event: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("events/job-drift-detect/bad.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(matches!(
        handle(&deps, event).await,
        Err(DriftError::Invalid(_))
    ));
}

/// Where CloudFormation drift detection is unavailable (the local AWS does not
/// implement it), the report still comes, saying why that part is missing.
#[tokio::test]
async fn cloudformation_detection_failing_does_not_fail_the_report() {
    let stack = local_aws().provision(&unique_stack("drift-cfn"), &[]);
    let env = stack.env_with(&[("DRIFT_SKIP", "functions,rotation")]);
    let deps = Deps::from_env(&Env::new(&env), &local_aws().sdk_config().await).unwrap();
    let report = handle(&deps, json!({"run": "cfn"})).await.unwrap();
    assert!(!report.drifted(), "{report:?}");
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.starts_with("CloudFormation drift detection failed")),
        "{:?}",
        report.skipped
    );
}
