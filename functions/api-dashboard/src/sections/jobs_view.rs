//! The jobs section: how many of each tenant's jobs are pending, running, done
//! and failed, over the jobs kept (`JOB_RETENTION_DAYS`).

use serde_json::{Map, Value, json};
use sophia_shared::jobs::JobStatus;

use super::{Section, Sources, TenantView};

/// Tenants counted at once (each is one query per status).
const TENANTS_AT_ONCE: usize = 8;

/// Job counts by status per tenant, busiest first, and their totals.
pub async fn jobs(src: &Sources, view: &TenantView) -> Result<Section, String> {
    let tenants = match view {
        TenantView::Own(tenant) => vec![tenant.clone()],
        TenantView::All => {
            let mut all = src.auth.tenants().await.map_err(|e| e.to_string())?;
            all.sort();
            all.dedup();
            all.truncate(src.max_tenants);
            all
        }
    };
    let mut rows = Vec::with_capacity(tenants.len());
    for batch in tenants.chunks(TENANTS_AT_ONCE) {
        let reads = batch.iter().map(|tenant| async move {
            let counts = src.jobs.counts(tenant).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((tenant.clone(), counts))
        });
        rows.extend(futures_util::future::try_join_all(reads).await?);
    }
    let mut totals: Map<String, Value> = JobStatus::ALL
        .iter()
        .map(|status| (name(*status), json!(0)))
        .collect();
    let mut tenants: Vec<Value> = rows
        .iter()
        .map(|(tenant, counts)| {
            let mut row = Map::new();
            row.insert("tenant".to_owned(), json!(tenant));
            for (status, count) in counts {
                row.insert(name(*status), json!(count));
                if let Some(total) = totals.get_mut(&name(*status)) {
                    *total = json!(total.as_u64().unwrap_or(0) + count);
                }
            }
            Value::Object(row)
        })
        .collect();
    let all = |row: &Value| -> u64 {
        JobStatus::ALL
            .iter()
            .map(|s| row[name(*s).as_str()].as_u64().unwrap_or(0))
            .sum()
    };
    tenants.sort_by_key(|row| std::cmp::Reverse(all(row)));
    Ok(Section {
        data: json!({ "totals": totals, "tenants": tenants }),
        as_of: None,
    })
}

/// The status as the API shows it (`GET /v1/jobs/{id}`: lowercase).
fn name(status: JobStatus) -> String {
    status.as_str().to_ascii_lowercase()
}
