//! The usage section: billing's usage rows per tenant, model and UTC day.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sophia_shared::clock::utc_date;
use sophia_shared::inference::usage_rows::{self, UsageRow};

use super::{Section, Sources};

/// Days of usage shown per tenant (today included).
pub const USAGE_DAYS: u64 = 30;
/// Tenants whose usage is read at once (the platform view).
const TENANT_READS_AT_ONCE: usize = 8;

/// Which tenants' usage a caller sees.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantView {
    /// Every tenant in the registry (scope `platform`).
    All,
    Own(String),
}

/// Usage and cost per tenant and model, today and per UTC day over
/// [`USAGE_DAYS`] days, with the top tenants and models by cost.
pub async fn usage(src: &Sources, view: &TenantView, now: u64) -> Result<Section, String> {
    let (mut tenants, total) = match view {
        TenantView::Own(tenant) => (vec![tenant.clone()], 1),
        TenantView::All => {
            let mut all = src.auth.tenants().await.map_err(|e| e.to_string())?;
            all.sort();
            let total = all.len();
            all.truncate(src.max_tenants);
            (all, total)
        }
    };
    tenants.dedup();
    let days: Vec<String> = (0..USAGE_DAYS)
        .rev()
        .map(|back| utc_date(now.saturating_sub(back * 86_400)))
        .collect();
    let mut summaries = Vec::with_capacity(tenants.len());
    for batch in tenants.chunks(TENANT_READS_AT_ONCE) {
        let reads = batch.iter().map(|tenant| tenant_usage(src, tenant, &days));
        summaries.extend(futures_util::future::try_join_all(reads).await?);
    }
    Ok(Section {
        data: overview(summaries, &days, total),
        as_of: None,
    })
}

async fn tenant_usage(src: &Sources, tenant: &str, days: &[String]) -> Result<Value, String> {
    let rows = usage_rows(src, tenant, days).await?;
    Ok(summarize(tenant, &rows, days))
}

async fn usage_rows(src: &Sources, tenant: &str, days: &[String]) -> Result<Vec<UsageRow>, String> {
    let (Some(first), Some(last)) = (days.first(), days.last()) else {
        return Ok(Vec::new());
    };
    usage_rows::read(&src.dynamodb, &src.usage_table, tenant, first, last).await
}

/// Micro-USD as USD to the micro-dollar (a chat answer costs fractions of a cent).
fn usd(micro: f64) -> f64 {
    micro.round() / 1e6
}

/// One tenant's today by model, its days (zeros included) and its totals.
pub fn summarize(tenant: &str, rows: &[UsageRow], days: &[String]) -> Value {
    let today = days.last().cloned().unwrap_or_default();
    let mut per_day: BTreeMap<&str, (f64, f64)> =
        days.iter().map(|d| (d.as_str(), (0.0, 0.0))).collect();
    let mut by_model: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut today_models = Vec::new();
    for row in rows {
        if let Some(day) = per_day.get_mut(row.date.as_str()) {
            day.0 += row.requests;
            day.1 += row.cost_micro_usd;
        }
        let model = by_model.entry(row.model.as_str()).or_default();
        model.0 += row.requests;
        model.1 += row.cost_micro_usd;
        if row.date == today {
            today_models.push(json!({
                "model": row.model,
                "requests": row.requests,
                "cached_requests": row.cached_requests,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "cost_usd": usd(row.cost_micro_usd),
            }));
        }
    }
    let (requests, cost): (f64, f64) = per_day
        .values()
        .fold((0.0, 0.0), |(r, c), (dr, dc)| (r + dr, c + dc));
    json!({
        "tenant": tenant,
        "today": {
            "date": today,
            "requests": per_day.get(today.as_str()).map(|d| d.0).unwrap_or(0.0),
            "cost_usd": usd(per_day.get(today.as_str()).map(|d| d.1).unwrap_or(0.0)),
            "by_model": today_models,
        },
        "days": per_day.iter().map(|(date, (r, c))| json!({
            "date": date, "requests": r, "cost_usd": usd(*c),
        })).collect::<Vec<_>>(),
        "by_model": by_model.iter().map(|(model, (r, c))| json!({
            "model": model, "requests": r, "cost_usd": usd(*c),
        })).collect::<Vec<_>>(),
        "requests": requests,
        "cost_usd": usd(cost),
    })
}

/// The tenants' summaries with the top tenants and models over the days.
pub fn overview(tenants: Vec<Value>, days: &[String], tenants_total: usize) -> Value {
    let mut models: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for tenant in &tenants {
        for model in tenant["by_model"].as_array().into_iter().flatten() {
            let entry = models
                .entry(model["model"].as_str().unwrap_or_default().to_owned())
                .or_default();
            entry.0 += model["requests"].as_f64().unwrap_or(0.0);
            entry.1 += model["cost_usd"].as_f64().unwrap_or(0.0);
        }
    }
    let cost = |v: &Value| v["cost_usd"].as_f64().unwrap_or(0.0);
    let mut top_tenants: Vec<Value> = tenants
        .iter()
        .map(|t| json!({ "tenant": t["tenant"], "requests": t["requests"], "cost_usd": t["cost_usd"] }))
        .collect();
    top_tenants.sort_by(|a, b| cost(b).total_cmp(&cost(a)));
    top_tenants.truncate(5);
    let mut top_models: Vec<Value> = models
        .into_iter()
        .map(|(model, (r, c))| json!({ "model": model, "requests": r, "cost_usd": (c * 1e6).round() / 1e6 }))
        .collect();
    top_models.sort_by(|a, b| cost(b).total_cmp(&cost(a)));
    top_models.truncate(5);
    json!({
        "days_are": "UTC",
        "from": days.first(),
        "to": days.last(),
        "tenants_total": tenants_total,
        "tenants_shown": tenants.len(),
        "tenants": tenants,
        "top_tenants": top_tenants,
        "top_models": top_models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_summed_per_day_and_model_with_zero_days() {
        let days = vec![
            "2026-12-01".to_owned(),
            "2026-12-02".to_owned(),
            "2026-12-03".to_owned(),
        ];
        let row = |date: &str, model: &str, requests: f64, cost: f64| UsageRow {
            date: date.into(),
            model: model.into(),
            requests,
            cost_micro_usd: cost,
            ..Default::default()
        };
        let rows = [
            row("2026-12-01", "small", 2.0, 1_000_000.0),
            row("2026-12-03", "small", 1.0, 250_000.0),
            row("2026-12-03", "large", 3.0, 3_000_000.0),
        ];
        let summary = summarize("t", &rows, &days);
        assert_eq!(summary["requests"], json!(6.0));
        assert_eq!(summary["cost_usd"], json!(4.25));
        assert_eq!(summary["today"]["requests"], json!(4.0));
        assert_eq!(summary["today"]["by_model"].as_array().unwrap().len(), 2);
        assert_eq!(
            summary["days"][1],
            json!({"date": "2026-12-02", "requests": 0.0, "cost_usd": 0.0})
        );
        let other = summarize("u", &[row("2026-12-02", "small", 1.0, 9_000_000.0)], &days);
        let all = overview(vec![summary, other], &days, 3);
        assert_eq!(all["top_tenants"][0]["tenant"], json!("u"));
        assert_eq!(
            all["top_models"][0],
            json!({"model": "small", "requests": 4.0, "cost_usd": 10.25})
        );
        assert_eq!(all["tenants_total"], json!(3));
        assert_eq!(all["days_are"], json!("UTC"));
    }
}
