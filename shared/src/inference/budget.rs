//! Per-tenant cost budgets in USD: monthly and optionally daily (UTC periods),
//! soft alert thresholds, and a hard limit.
//!
//! - **Spend** is read from the usage rows billing writes (`usage_rows::read`), so the
//!   dashboard, the budget and the usage table cannot disagree.
//! - **The hard limit** is checked after each billed answer ([`Budgets::enforce`],
//!   off the caller's critical path): once a period's spend reaches its budget,
//!   every remaining day of the period gets a block on the tenant's daily quota
//!   counter (`guard::quota`), which the one admission write already reads. The
//!   request that crosses the limit completes and is billed (as Vercel's spend
//!   management does); the requests admitted after its billing are refused with
//!   a 429 `budget-exceeded` naming the reset time. Requests already in flight
//!   when the limit is crossed complete too, so a period can end slightly over
//!   its budget, by at most what those requests cost.
//! - **Alerts**: each threshold (default 50, 80, 100 %) of each period alerts
//!   once per period through the de-duplicated [`Alerter`] (the period is in the
//!   alert key), sent by job-queue-sweep every minute ([`Budgets::check`]), which
//!   also re-applies the blocks, so a function that died before blocking delays
//!   the block by a minute at most.
//!
//! Budgets live in the auth table under one partition (`budgets`, `<tenant>`) so
//! the sweep lists them with one Query. A new period starts unblocked: blocks
//! are written per day and end with their period.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::aws::dynamo::{error_text as aws, query_all, s};
use crate::clock::{next_midnight, next_month_start, now_secs, rfc3339, utc_date, utc_month};
use crate::guard::quota::{Block, Quotas};
use crate::inference::usage_rows;
use crate::ops::alerts::Alerter;

const PARTITION: &str = "budgets";
/// How long an instance trusts that a tenant has no budget.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// No budget is larger (USD per period): a typo, not a budget.
const MAX_USD: f64 = 100_000_000.0;

fn default_thresholds() -> Vec<u32> {
    vec![50, 80, 100]
}

fn yes() -> bool {
    true
}

/// A tenant's budget, as the platform sets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub monthly_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    /// Percentages of a period's budget that each alert once per period.
    #[serde(default = "default_thresholds")]
    pub alert_thresholds_percent: Vec<u32>,
    /// At 100 %: refuse inference until the period ends (else alerts only).
    #[serde(default = "yes")]
    pub hard_limit: bool,
}

impl Budget {
    /// Why the budget cannot be stored, if it cannot.
    pub fn problem(&self) -> Option<String> {
        let amount = |usd: f64| usd.is_finite() && usd > 0.0 && usd <= MAX_USD;
        if !amount(self.monthly_usd) || !self.daily_usd.is_none_or(amount) {
            return Some(format!(
                "budgets are positive amounts of USD up to {MAX_USD:.0}"
            ));
        }
        let thresholds = &self.alert_thresholds_percent;
        if thresholds.len() > 10 || thresholds.iter().any(|p| !(1..=1000).contains(p)) {
            return Some(
                "alert_thresholds_percent takes up to 10 percentages from 1 to 1000".to_owned(),
            );
        }
        None
    }

    /// The budget as stored: thresholds in ascending order, each once.
    pub fn normalized(mut self) -> Self {
        self.alert_thresholds_percent.sort_unstable();
        self.alert_thresholds_percent.dedup();
        self
    }

    fn periods(&self) -> impl Iterator<Item = (Period, f64)> {
        std::iter::once((Period::Monthly, self.monthly_usd))
            .chain(self.daily_usd.map(|usd| (Period::Daily, usd)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Monthly,
    Daily,
}

impl Period {
    fn name(self) -> &'static str {
        match self {
            Self::Monthly => "monthly",
            Self::Daily => "daily",
        }
    }

    /// (the period's name as it appears in alert keys, its first day, its end).
    fn around(self, now: u64) -> (String, String, u64) {
        match self {
            Self::Monthly => (
                utc_month(now),
                format!("{}-01", utc_month(now)),
                next_month_start(now),
            ),
            Self::Daily => (utc_date(now), utc_date(now), next_midnight(now)),
        }
    }
}

/// One period of a budget at a moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodStatus {
    /// `monthly` or `daily`.
    pub period: &'static str,
    /// `yyyy-mm` or `yyyy-mm-dd` (UTC).
    pub id: String,
    pub budget_usd: f64,
    pub spent_usd: f64,
    pub percent: f64,
    /// The alert thresholds reached.
    pub crossed_percent: Vec<u32>,
    pub resets_at: String,
    #[serde(skip)]
    ends: u64,
    /// The spend unrounded: a chat answer costs micro-dollars.
    #[serde(skip)]
    spent_micro_usd: f64,
}

impl PeriodStatus {
    fn spent(&self) -> bool {
        self.spent_micro_usd >= self.budget_usd * 1e6
    }
}

/// A tenant's budget, its spend per period and whether inference is refused.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetStatus {
    pub tenant: String,
    pub budget: Budget,
    pub periods: Vec<PeriodStatus>,
    /// The block on today's counter, as admission sees it.
    pub blocked_until: Option<String>,
    #[serde(skip)]
    block: Option<Block>,
}

impl BudgetStatus {
    /// The block the budget calls for now: until the end of the longest spent
    /// period, if the hard limit is on.
    fn required_block(&self) -> Option<Block> {
        if !self.budget.hard_limit {
            return None;
        }
        self.periods
            .iter()
            .filter(|p| p.spent())
            .max_by_key(|p| p.ends)
            .map(|p| Block {
                period: p.period,
                until: p.ends,
            })
    }
}

/// The UTC days from `now`'s to the last before `until`.
fn days_until(now: u64, until: u64) -> Vec<String> {
    (now / 86_400..until.div_ceil(86_400))
        .map(|day| utc_date(day * 86_400))
        .collect()
}

/// Micro-USD as USD, to the micro-dollar.
fn usd(micro: f64) -> f64 {
    micro.round() / 1e6
}

#[derive(Debug)]
pub struct Budgets {
    dynamodb: aws_sdk_dynamodb::Client,
    auth_table: String,
    usage_table: String,
    quotas: Arc<Quotas>,
    /// Whether a tenant had a budget, as last read (budgets themselves are
    /// read fresh where they decide something).
    known: Mutex<HashMap<String, (Instant, bool)>>,
}

impl Budgets {
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        auth_table: String,
        usage_table: String,
        quotas: Arc<Quotas>,
    ) -> Self {
        Self {
            dynamodb,
            auth_table,
            usage_table,
            quotas,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// `tenant`'s budget, read now.
    pub async fn get(&self, tenant: &str) -> Result<Option<Budget>, String> {
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.auth_table)
            .key("pk", s(PARTITION))
            .key("sk", s(tenant))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws)?;
        let budget = output.item().map(parse).transpose()?;
        self.remember(tenant, budget.is_some()).await;
        Ok(budget)
    }

    async fn remember(&self, tenant: &str, exists: bool) {
        self.known
            .lock()
            .await
            .insert(tenant.to_owned(), (Instant::now(), exists));
    }

    /// Every tenant's budget.
    pub async fn all(&self) -> Result<Vec<(String, Budget)>, String> {
        let query = self
            .dynamodb
            .query()
            .table_name(&self.auth_table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(PARTITION));
        let items = query_all(query).await.map_err(aws)?;
        items
            .iter()
            .map(|item| {
                let tenant = item
                    .get("sk")
                    .and_then(|v| v.as_s().ok())
                    .ok_or("a budget item without a tenant")?;
                Ok((tenant.clone(), parse(item)?))
            })
            .collect()
    }

    /// Stores `tenant`'s budget (`None`: removes it) and applies it at once:
    /// blocks it calls for are written, blocks it no longer calls for lifted.
    pub async fn set(
        &self,
        tenant: &str,
        budget: Option<&Budget>,
        now: u64,
    ) -> Result<Option<BudgetStatus>, String> {
        match budget {
            Some(budget) => {
                let body = serde_json::to_string(budget).map_err(|e| e.to_string())?;
                self.dynamodb
                    .put_item()
                    .table_name(&self.auth_table)
                    .item("pk", s(PARTITION))
                    .item("sk", s(tenant))
                    .item("budget", s(&body))
                    .item("updated_at", AttributeValue::N(now.to_string()))
                    .send()
                    .await
                    .map_err(aws)?;
            }
            None => {
                self.dynamodb
                    .delete_item()
                    .table_name(&self.auth_table)
                    .key("pk", s(PARTITION))
                    .key("sk", s(tenant))
                    .send()
                    .await
                    .map_err(aws)?;
            }
        }
        self.remember(tenant, budget.is_some()).await;
        self.reconcile(tenant, budget, now).await
    }

    /// `tenant`'s spend against `budget` at `now`, and today's block.
    pub async fn status(
        &self,
        tenant: &str,
        budget: &Budget,
        now: u64,
    ) -> Result<BudgetStatus, String> {
        let (_, month_start, _) = Period::Monthly.around(now);
        let today = utc_date(now);
        let days = [today.clone()];
        let (rows, blocks) = futures_util::join!(
            usage_rows::read(
                &self.dynamodb,
                &self.usage_table,
                tenant,
                &month_start,
                &today
            ),
            self.quotas.blocks(tenant, &days),
        );
        let (rows, blocks) = (rows?, blocks?);
        let periods = budget
            .periods()
            .map(|(period, budget_usd)| {
                let (id, first, ends) = period.around(now);
                let micro: f64 = rows
                    .iter()
                    .filter(|row| row.date.as_str() >= first.as_str())
                    .map(|row| row.cost_micro_usd)
                    .sum();
                let percent = micro / (budget_usd * 1e6) * 100.0;
                PeriodStatus {
                    period: period.name(),
                    id,
                    budget_usd,
                    spent_usd: usd(micro),
                    spent_micro_usd: micro,
                    percent: (percent * 100.0).round() / 100.0,
                    crossed_percent: budget
                        .alert_thresholds_percent
                        .iter()
                        .copied()
                        .filter(|&p| percent >= f64::from(p))
                        .collect(),
                    resets_at: rfc3339(ends),
                    ends,
                }
            })
            .collect();
        let block = blocks
            .into_iter()
            .map(|(_, block)| block)
            .find(|block| block.until > now);
        Ok(BudgetStatus {
            tenant: tenant.to_owned(),
            budget: budget.clone(),
            periods,
            blocked_until: block.map(|b| rfc3339(b.until)),
            block,
        })
    }

    /// After an answer of `tenant` was billed: blocks the tenant if a period's
    /// budget is now spent. Never fails the caller; a failure is logged and the
    /// sweep applies the block within a minute.
    pub async fn enforce(&self, tenant: &str) {
        let cached = self.known.lock().await.get(tenant).copied();
        if let Some((at, false)) = cached
            && at.elapsed() < CACHE_TTL
        {
            return;
        }
        if let Err(error) = self.enforce_at(tenant, now_secs()).await {
            tracing::error!(%error, tenant, "checking the budget failed; the sweep retries");
        }
    }

    async fn enforce_at(&self, tenant: &str, now: u64) -> Result<(), String> {
        let Some(budget) = self.get(tenant).await? else {
            return Ok(());
        };
        let status = self.status(tenant, &budget, now).await?;
        match status.required_block() {
            Some(block) if status.block.is_none_or(|b| b.until < block.until) => {
                tracing::warn!(
                    tenant,
                    period = block.period,
                    "budget spent; blocking inference"
                );
                self.quotas
                    .block(tenant, &days_until(now, block.until), &block)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Makes the blocks of `tenant`'s current month exactly what `budget` calls
    /// for at `now`.
    async fn reconcile(
        &self,
        tenant: &str,
        budget: Option<&Budget>,
        now: u64,
    ) -> Result<Option<BudgetStatus>, String> {
        let mut status = match budget {
            Some(budget) => Some(self.status(tenant, budget, now).await?),
            None => None,
        };
        let required = status.as_ref().and_then(BudgetStatus::required_block);
        let month = days_until(now, next_month_start(now));
        let wanted = required.map_or_else(Vec::new, |b| days_until(now, b.until));
        let stale: Vec<String> = self
            .quotas
            .blocks(tenant, &month)
            .await?
            .into_iter()
            .filter(|(day, block)| Some(*block) != required || !wanted.contains(day))
            .map(|(day, _)| day)
            .collect();
        self.quotas.unblock(tenant, &stale).await?;
        if let Some(block) = required {
            self.quotas.block(tenant, &wanted, &block).await?;
        }
        // Today's block is now the one the budget calls for.
        if let Some(status) = status.as_mut() {
            status.block = required;
            status.blocked_until = required.map(|b| rfc3339(b.until));
        }
        Ok(status)
    }

    /// The sweep's run over every budget at `now`: blocks as each calls for, and
    /// one alert per threshold reached per period. Returns the alerts sent.
    pub async fn check(&self, alerts: &Alerter, now: u64) -> Result<Vec<String>, String> {
        let mut sent = Vec::new();
        for (tenant, budget) in self.all().await? {
            let Some(status) = self.reconcile(&tenant, Some(&budget), now).await? else {
                continue;
            };
            for period in &status.periods {
                for percent in &period.crossed_percent {
                    let key = format!("budget#{tenant}#{}#{percent}", period.id);
                    let summary = format!(
                        "tenant {tenant} has spent ${:.2} of its {} budget of ${:.2} for {} ({:.0} %, threshold {percent} %){}",
                        period.spent_usd,
                        period.period,
                        period.budget_usd,
                        period.id,
                        period.percent,
                        if period.spent() && budget.hard_limit {
                            format!("; inference is refused until {}", period.resets_at)
                        } else {
                            String::new()
                        },
                    );
                    if alerts.update(&key, true, &summary).await?.is_some() {
                        sent.push(key);
                    }
                }
            }
        }
        Ok(sent)
    }
}

fn parse(item: &HashMap<String, AttributeValue>) -> Result<Budget, String> {
    let body = item
        .get("budget")
        .and_then(|v| v.as_s().ok())
        .ok_or("a budget item without its budget")?;
    serde_json::from_str(body).map_err(|e| format!("a stored budget does not parse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_of_date;

    fn budget(json: serde_json::Value) -> Budget {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn budgets_default_to_three_thresholds_and_a_hard_limit() {
        let b = budget(serde_json::json!({"monthly_usd": 100}));
        assert_eq!(b.alert_thresholds_percent, vec![50, 80, 100]);
        assert!(b.hard_limit && b.daily_usd.is_none() && b.problem().is_none());
        for bad in [
            serde_json::json!({"monthly_usd": 0}),
            serde_json::json!({"monthly_usd": -5}),
            serde_json::json!({"monthly_usd": 1e12}),
            serde_json::json!({"monthly_usd": 10, "daily_usd": 0}),
            serde_json::json!({"monthly_usd": 10, "alert_thresholds_percent": [0]}),
            serde_json::json!({"monthly_usd": 10, "alert_thresholds_percent": [1,2,3,4,5,6,7,8,9,10,11]}),
            serde_json::json!({"monthly_usd": 10, "alert_thresholds_percent": [0]}),
        ] {
            assert!(budget(bad.clone()).problem().is_some(), "{bad}");
        }
        assert!(serde_json::from_value::<Budget>(serde_json::json!({"monthly": 1})).is_err());
        let unordered =
            budget(serde_json::json!({"monthly_usd": 1, "alert_thresholds_percent": [80, 50, 80]}));
        assert_eq!(
            unordered.normalized().alert_thresholds_percent,
            vec![50, 80]
        );
    }

    #[test]
    fn a_period_blocks_every_remaining_day_until_it_ends() {
        let now = unix_of_date(2026, 12, 29) + 3_600;
        let (id, first, ends) = Period::Monthly.around(now);
        assert_eq!((id.as_str(), first.as_str()), ("2026-12", "2026-12-01"));
        assert_eq!(
            days_until(now, ends),
            vec!["2026-12-29", "2026-12-30", "2026-12-31"]
        );
        let (id, _, ends) = Period::Daily.around(now);
        assert_eq!(id, "2026-12-29");
        assert_eq!(days_until(now, ends), vec!["2026-12-29"]);
    }

    #[test]
    fn the_longest_spent_period_blocks() {
        let status = |monthly: f64, daily: f64, hard_limit: bool| BudgetStatus {
            tenant: "t".into(),
            budget: Budget {
                monthly_usd: 10.0,
                daily_usd: Some(1.0),
                alert_thresholds_percent: vec![50],
                hard_limit,
            },
            periods: vec![
                PeriodStatus {
                    period: "monthly",
                    id: "2026-12".into(),
                    budget_usd: 10.0,
                    spent_usd: monthly,
                    percent: 0.0,
                    crossed_percent: vec![],
                    resets_at: String::new(),
                    ends: 2_000,
                    spent_micro_usd: monthly * 1e6,
                },
                PeriodStatus {
                    period: "daily",
                    id: "2026-12-29".into(),
                    budget_usd: 1.0,
                    spent_usd: daily,
                    percent: 0.0,
                    crossed_percent: vec![],
                    resets_at: String::new(),
                    ends: 1_000,
                    spent_micro_usd: daily * 1e6,
                },
            ],
            blocked_until: None,
            block: None,
        };
        assert_eq!(status(5.0, 0.5, true).required_block(), None);
        assert_eq!(
            status(5.0, 1.0, true).required_block().map(|b| b.until),
            Some(1_000)
        );
        assert_eq!(
            status(10.0, 1.0, true).required_block().map(|b| b.until),
            Some(2_000)
        );
        assert_eq!(status(10.0, 1.0, false).required_block(), None);
    }
}
