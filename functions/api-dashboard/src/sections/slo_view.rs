//! The SLOs section: job-slo-check's stored statuses.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sophia_shared::aws::dynamo::{error_text, s};
use sophia_shared::ops::slo::{Slo, status_key};

use super::{Section, Sources, number};

/// Every configured SLO with its stored status, least budget left first.
pub async fn slos(src: &Sources) -> Result<Section, String> {
    let reads = src.slos.iter().map(|slo| slo_row(src, slo));
    let mut entries = futures_util::future::try_join_all(reads).await?;
    entries.sort_by(|a, b| {
        let left = |v: &Value| v["budget_remaining"].as_f64().unwrap_or(f64::INFINITY);
        left(a).total_cmp(&left(b))
    });
    let as_of = entries
        .iter()
        .filter_map(|e| e["checked_at"].as_u64())
        .min();
    Ok(Section {
        data: Value::Array(entries),
        as_of,
    })
}

async fn slo_row(src: &Sources, slo: &Slo) -> Result<Value, String> {
    let (pk, sk) = status_key(&slo.name);
    let item = src
        .dynamodb
        .get_item()
        .table_name(&src.state_table)
        .key("pk", s(&pk))
        .key("sk", s(sk))
        .send()
        .await
        .map_err(error_text)?
        .item;
    let stored = item.as_ref().and_then(|item| {
        let status = item.get("status")?.as_s().ok()?;
        let checked_at = number(item, "checked_at")? as u64;
        Some((serde_json::from_str::<Value>(status).ok()?, checked_at))
    });
    Ok(slo_entry(slo, stored.as_ref(), src.slo_period))
}

/// One SLO's dashboard row from its stored status (`None`: never checked).
/// Time to exhaustion: the budget left lasts `remaining × period ÷ burn` at the
/// last hour's burn rate (a burn rate of 1 spends the budget in exactly the period).
pub fn slo_entry(slo: &Slo, stored: Option<&(Value, u64)>, period: Duration) -> Value {
    let mut entry = json!({
        "name": slo.name,
        "service": slo.service,
        "route": slo.route,
        "sli": slo.sli,
        "objective_percent": slo.objective_percent,
    });
    let Some((status, checked_at)) = stored else {
        entry["never_checked"] = json!(true);
        return entry;
    };
    let burn_rates: BTreeMap<u64, f64> = status["burn_rates"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(secs, rate)| Some((secs.parse().ok()?, rate.as_f64()?)))
        .collect();
    let remaining = status["budget_remaining"].as_f64().unwrap_or(1.0);
    let hour_burn = burn_rates.get(&3600).copied().unwrap_or(0.0);
    let hours_left = if remaining <= 0.0 {
        Some(0.0)
    } else if hour_burn > 0.0 {
        Some(remaining * period.as_secs_f64() / 3600.0 / hour_burn)
    } else {
        None
    };
    entry["budget_remaining"] = json!(remaining);
    entry["burn_rates"] = burn_rates
        .iter()
        .map(|(secs, rate)| (window_label(*secs), json!(rate)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    entry["time_to_exhaustion_hours"] = json!(hours_left);
    entry["firing"] = status["firing"].clone();
    entry["period_counts"] = status["period_counts"].clone();
    entry["checked_at"] = json!(checked_at);
    entry
}

/// 300 → "5m", 21600 → "6h", 259200 → "3d".
pub fn window_label(secs: u64) -> String {
    if secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        format!("{}m", secs / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sophia_shared::ops::slo::Sli;

    fn slo() -> Slo {
        Slo {
            name: "chat-availability".into(),
            service: "api-chat".into(),
            route: "/v1/chat/completions".into(),
            sli: Sli::Availability,
            objective_percent: 99.9,
        }
    }

    #[test]
    fn time_to_exhaustion_follows_the_hour_burn_rate() {
        let period = Duration::from_secs(30 * 86_400);
        let status = json!({
            "burn_rates": {"300": 20.0, "3600": 2.0, "2592000": 0.5},
            "budget_remaining": 0.5, "firing": ["page-slow"],
            "period_counts": {"total": 10.0, "bad": 1.0},
        });
        let entry = slo_entry(&slo(), Some(&(status, 7)), period);
        // Half of a 30-day budget at twice the sustainable rate: 7.5 days.
        assert_eq!(entry["time_to_exhaustion_hours"], json!(180.0));
        assert_eq!(entry["burn_rates"]["5m"], json!(20.0));
        assert_eq!(entry["burn_rates"]["30d"], json!(0.5));
        assert_eq!(entry["checked_at"], json!(7));
        let calm = json!({"burn_rates": {"3600": 0.0}, "budget_remaining": 1.0});
        let entry = slo_entry(&slo(), Some(&(calm, 1)), period);
        assert_eq!(entry["time_to_exhaustion_hours"], Value::Null);
        let spent = json!({"burn_rates": {"3600": 0.0}, "budget_remaining": -0.2});
        let entry = slo_entry(&slo(), Some(&(spent, 1)), period);
        assert_eq!(entry["time_to_exhaustion_hours"], json!(0.0));
        assert_eq!(
            slo_entry(&slo(), None, period)["never_checked"],
            json!(true)
        );
    }
}
