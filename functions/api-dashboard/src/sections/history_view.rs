//! The drift, secrets and alerts sections: the last drift report, secret ages
//! against their policy, and the alert history.

use serde_json::{Value, json};
use sophia_shared::aws::dynamo::{error_text, s};
use sophia_shared::ops::alerts;

use super::{Section, Sources, number};

/// Alert messages read from the history.
const RECENT_ALERTS: i32 = 50;

/// Drift detection's last report.
pub async fn drift(src: &Sources) -> Result<Section, String> {
    let Some(stack) = &src.stack else {
        return Err("STACK_NAME is not set: no stack to show the drift of".to_owned());
    };
    let item = src
        .dynamodb
        .get_item()
        .table_name(&src.state_table)
        .key("pk", s(&format!("drift#{stack}")))
        .key("sk", s("latest"))
        .send()
        .await
        .map_err(error_text)?
        .item;
    let Some(item) = item else {
        return Ok(Section {
            data: json!({ "stack": stack, "never_run": true }),
            as_of: None,
        });
    };
    let report = item
        .get("report")
        .and_then(|v| v.as_s().ok())
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .ok_or("the stored drift report is malformed")?;
    Ok(Section {
        data: json!({
            "stack": stack,
            "drifted": item.get("drifted").and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
            "report": report,
        }),
        as_of: number(&item, "checked_at").map(|t| t as u64),
    })
}

/// The recent alert messages, newest first, and which of their conditions are
/// firing (the latest message per condition says so).
pub async fn alerts(src: &Sources) -> Result<Section, String> {
    let recent = alerts::recent(&src.dynamodb, &src.state_table, RECENT_ALERTS).await?;
    let mut seen = std::collections::HashSet::new();
    let firing: Vec<&str> = recent
        .iter()
        .filter(|event| seen.insert(event.key.as_str()))
        .filter(|event| event.firing)
        .map(|event| event.key.as_str())
        .collect();
    Ok(Section {
        data: json!({ "firing": firing, "recent": recent }),
        as_of: recent.first().map(|event| event.changed_at),
    })
}

/// Every secret with an age policy, overdue ones and those nearest their limit first.
pub async fn secrets(src: &Sources, now: u64) -> Result<Section, String> {
    let mut ages = sophia_shared::aws::secrets::ages(&src.secrets, now as i64).await?;
    let used = |age: &sophia_shared::aws::secrets::SecretAge| {
        age.age_days as f64 / age.max_age_days.max(1) as f64
    };
    ages.sort_by(|a, b| used(b).total_cmp(&used(a)));
    Ok(Section {
        data: json!({
            "overdue": ages.iter().filter(|a| a.overdue).count(),
            "secrets": ages,
        }),
        as_of: None,
    })
}
