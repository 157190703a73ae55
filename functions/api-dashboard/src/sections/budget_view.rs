//! The budgets section: each tenant's cost budget and its spend per period, as
//! budgets themselves count it (`inference::budget`, from billing's usage rows).

use serde_json::json;
use sophia_shared::inference::budget::BudgetStatus;

use super::{Section, Sources, TenantView};

/// Budgets read at once (the platform view).
const READS_AT_ONCE: usize = 8;

/// Every budget the caller may see, the most used-up first.
pub async fn budgets(src: &Sources, view: &TenantView, now: u64) -> Result<Section, String> {
    let budgets = match view {
        TenantView::All => src.budgets.all().await?,
        TenantView::Own(tenant) => src
            .budgets
            .get(tenant)
            .await?
            .map(|budget| vec![(tenant.clone(), budget)])
            .unwrap_or_default(),
    };
    let mut statuses: Vec<BudgetStatus> = Vec::with_capacity(budgets.len());
    for batch in budgets.chunks(READS_AT_ONCE) {
        let reads = batch
            .iter()
            .map(|(tenant, budget)| src.budgets.status(tenant, budget, now));
        statuses.extend(futures_util::future::try_join_all(reads).await?);
    }
    let used = |status: &BudgetStatus| status.periods.iter().map(|p| p.percent).fold(0.0, f64::max);
    statuses.sort_by(|a, b| used(b).total_cmp(&used(a)));
    let blocked = statuses
        .iter()
        .filter(|s| s.blocked_until.is_some())
        .count();
    Ok(Section {
        data: json!({ "budgets": statuses, "blocked": blocked }),
        as_of: None,
    })
}
