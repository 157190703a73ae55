//! Per-tenant daily quotas (requests and tokens), enforced across instances.
//!
//! A tenant's usage of the day lives in one counter item of the usage table
//! (`tenant#<t>`, `daily#<yyyy-mm-dd>`). Before the fleet is called, one
//! conditional `ADD requests 1` succeeds only while both counters are under the
//! tenant's quota, so concurrent instances can never overshoot the request quota
//! and overshoot the token quota by at most the requests in flight. Tokens are
//! added when the answer's usage is known. Quotas are stored in the auth table
//! (`tenant#<t>`, `quota`) and cached for 30 s per instance.
//!
//! The same item carries a tenant's budget block (`blocked_until`,
//! `blocked_period`), written by `inference::budget` on every remaining day of
//! a spent period, so the one admission write also refuses a tenant over its
//! hard budget limit: budgets add no round trip to the request path.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::aws::dynamo::error_text as aws;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure, Update,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::clock::{now_secs, rfc3339, utc_date};
use crate::config::{ConfigError, Env};
use crate::problem::ApiError;

const CACHE_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub requests_per_day: u64,
    pub tokens_per_day: u64,
}

/// A budget block on a day's counter: requests are refused until `until` (Unix
/// seconds), the end of the spent `period` (`monthly` or `daily`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub period: &'static str,
    pub until: u64,
}

impl Block {
    fn of(item: &HashMap<String, AttributeValue>) -> Option<Self> {
        let until = item.get("blocked_until")?.as_n().ok()?.parse().ok()?;
        let period = match item.get("blocked_period").and_then(|v| v.as_s().ok()) {
            Some(p) if p == "daily" => "daily",
            _ => "monthly",
        };
        Some(Self { period, until })
    }

    /// The 429 a blocked request gets at `now`.
    pub fn refusal(&self, now: u64) -> ApiError {
        ApiError::BudgetExceeded {
            period: self.period,
            resets_at: rfc3339(self.until),
            retry_after_secs: u32::try_from(self.until.saturating_sub(now)).unwrap_or(u32::MAX),
        }
    }
}

#[derive(Debug)]
pub struct Quotas {
    dynamodb: aws_sdk_dynamodb::Client,
    auth_table: String,
    usage_table: String,
    default: Quota,
    cache: Mutex<HashMap<String, (Instant, Quota)>>,
}

impl Quotas {
    /// `AUTH_TABLE`, `USAGE_TABLE`; defaults for tenants without their own quota:
    /// `TENANT_DEFAULT_REQUESTS_PER_DAY` (10000), `TENANT_DEFAULT_TOKENS_PER_DAY` (2000000).
    pub fn from_env(
        env: &Env<'_>,
        dynamodb: aws_sdk_dynamodb::Client,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            dynamodb,
            auth_table: env.required("AUTH_TABLE")?,
            usage_table: env.required("USAGE_TABLE")?,
            default: Quota {
                requests_per_day: env.parse_or("TENANT_DEFAULT_REQUESTS_PER_DAY", 10_000)?,
                tokens_per_day: env.parse_or("TENANT_DEFAULT_TOKENS_PER_DAY", 2_000_000)?,
            },
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The tenant's quota (its own, or the default).
    pub async fn quota(&self, tenant: &str) -> Result<Quota, String> {
        if let Some((at, quota)) = self.cache.lock().await.get(tenant)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(*quota);
        }
        let output = self
            .dynamodb
            .get_item()
            .table_name(&self.auth_table)
            .key("pk", AttributeValue::S(format!("tenant#{tenant}")))
            .key("sk", AttributeValue::S("quota".to_owned()))
            .send()
            .await
            .map_err(aws)?;
        let number = |name: &str| {
            output
                .item()
                .and_then(|item| item.get(name))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
        };
        let quota = Quota {
            requests_per_day: number("requests_per_day").unwrap_or(self.default.requests_per_day),
            tokens_per_day: number("tokens_per_day").unwrap_or(self.default.tokens_per_day),
        };
        self.cache
            .lock()
            .await
            .insert(tenant.to_owned(), (Instant::now(), quota));
        Ok(quota)
    }

    pub async fn set(&self, tenant: &str, quota: Quota) -> Result<(), String> {
        self.dynamodb
            .put_item()
            .table_name(&self.auth_table)
            .item("pk", AttributeValue::S(format!("tenant#{tenant}")))
            .item("sk", AttributeValue::S("quota".to_owned()))
            .item(
                "requests_per_day",
                AttributeValue::N(quota.requests_per_day.to_string()),
            )
            .item(
                "tokens_per_day",
                AttributeValue::N(quota.tokens_per_day.to_string()),
            )
            .send()
            .await
            .map_err(aws)?;
        self.cache
            .lock()
            .await
            .insert(tenant.to_owned(), (Instant::now(), quota));
        Ok(())
    }

    /// Counts one request against today's quota, or refuses with 429 until the
    /// next UTC midnight. A storage failure admits (logged): quotas are billing
    /// policy, not a reason for an outage.
    pub async fn reserve(&self, tenant: &str) -> Result<(), ApiError> {
        self.reserve_counted(tenant).await.map(|_| ())
    }

    /// [`Self::reserve`], telling how many requests of today's quota are left
    /// after this one (`None`: unknown, the storage failed and admitted).
    pub async fn reserve_counted(&self, tenant: &str) -> Result<Option<u64>, ApiError> {
        let quota = match self.quota(tenant).await {
            Ok(quota) => quota,
            Err(error) => {
                tracing::error!(%error, tenant, "reading the quota failed; admitting");
                return Ok(None);
            }
        };
        self.reserve_counted_at(tenant, quota, now_secs()).await
    }

    /// [`Self::reserve_counted`] at `now` (Unix seconds): the day's counter and
    /// any budget block on it.
    pub async fn reserve_counted_at(
        &self,
        tenant: &str,
        quota: Quota,
        now: u64,
    ) -> Result<Option<u64>, ApiError> {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.usage_table)
            .key("pk", AttributeValue::S(format!("tenant#{tenant}")))
            .key("sk", AttributeValue::S(format!("daily#{}", utc_date(now))))
            .update_expression("ADD requests :one SET expires_at = if_not_exists(expires_at, :expires)")
            .condition_expression(
                "(attribute_not_exists(requests) OR requests < :requests) AND (attribute_not_exists(tokens) OR tokens < :tokens) \
                 AND (attribute_not_exists(blocked_until) OR blocked_until <= :now)",
            )
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .expression_attribute_values(":requests", AttributeValue::N(quota.requests_per_day.to_string()))
            .expression_attribute_values(":tokens", AttributeValue::N(quota.tokens_per_day.to_string()))
            .expression_attribute_values(":expires", AttributeValue::N((now + 400 * 86_400).to_string()))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => Ok(output
                .attributes()
                .and_then(|item| item.get("requests"))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|counted| quota.requests_per_day.saturating_sub(counted))),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                let old = error.as_service_error().and_then(|e| match e {
                    UpdateItemError::ConditionalCheckFailedException(failed) => failed.item(),
                    _ => None,
                });
                if let Some(block) = old.and_then(Block::of).filter(|b| b.until > now) {
                    tracing::info!(tenant, period = block.period, "budget spent; refused");
                    return Err(block.refusal(now));
                }
                let until_midnight = 86_400 - now % 86_400;
                tracing::info!(tenant, "daily quota exhausted");
                Err(ApiError::QuotaExceeded {
                    retry_after_secs: until_midnight as u32,
                })
            }
            Err(error) => {
                tracing::error!(error = %aws(error), tenant, "counting the quota failed; admitting");
                Ok(None)
            }
        }
    }

    /// Gives back a request [`Self::reserve`] counted that was refused anyway
    /// (rate-limited in the same round trip). A failure is logged: it costs
    /// the tenant one request of its day, never an outage.
    pub async fn release(&self, tenant: &str) {
        let result = self
            .dynamodb
            .update_item()
            .table_name(&self.usage_table)
            .key("pk", AttributeValue::S(format!("tenant#{tenant}")))
            .key(
                "sk",
                AttributeValue::S(format!("daily#{}", utc_date(now_secs()))),
            )
            .update_expression("ADD requests :minus_one")
            .condition_expression("requests > :zero")
            .expression_attribute_values(":minus_one", AttributeValue::N("-1".to_owned()))
            .expression_attribute_values(":zero", AttributeValue::N("0".to_owned()))
            .send()
            .await;
        if let Err(error) = result {
            tracing::warn!(error = %aws(error), tenant, "giving back a refused request's quota failed");
        }
    }

    /// The budget block on `tenant`'s counter of each of `days` (`yyyy-mm-dd`),
    /// where there is one.
    pub async fn blocks(
        &self,
        tenant: &str,
        days: &[String],
    ) -> Result<Vec<(String, Block)>, String> {
        let (Some(first), Some(last)) = (days.first(), days.last()) else {
            return Ok(Vec::new());
        };
        let query = self
            .dynamodb
            .query()
            .table_name(&self.usage_table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", AttributeValue::S(format!("tenant#{tenant}")))
            .expression_attribute_values(":from", AttributeValue::S(format!("daily#{first}")))
            .expression_attribute_values(":to", AttributeValue::S(format!("daily#{last}")));
        let items = crate::aws::dynamo::query_all(query).await.map_err(aws)?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let day = item.get("sk")?.as_s().ok()?.strip_prefix("daily#")?;
                Some((day.to_owned(), Block::of(item)?))
            })
            .collect())
    }

    /// Refuses `tenant`'s requests on each of `days` until `block.until`; a
    /// longer block already there stays. Idempotent.
    pub async fn block(&self, tenant: &str, days: &[String], block: &Block) -> Result<(), String> {
        let expires = now_secs() + 400 * 86_400;
        self.update_days(
            tenant,
            days,
            "SET blocked_until = :until, blocked_period = :period, expires_at = if_not_exists(expires_at, :expires)",
            "attribute_not_exists(blocked_until) OR blocked_until < :until",
            &[
                (":until", AttributeValue::N(block.until.to_string())),
                (":period", AttributeValue::S(block.period.to_owned())),
                (":expires", AttributeValue::N(expires.to_string())),
            ],
        )
        .await
    }

    /// Lifts the budget block of `tenant` from each of `days` that has one.
    pub async fn unblock(&self, tenant: &str, days: &[String]) -> Result<(), String> {
        self.update_days(
            tenant,
            days,
            "REMOVE blocked_until, blocked_period",
            "attribute_exists(blocked_until)",
            &[],
        )
        .await
    }

    /// One conditional update of `tenant`'s counter of each of `days`, all at
    /// once; a failed condition means there was nothing to change.
    async fn update_days(
        &self,
        tenant: &str,
        days: &[String],
        update: &str,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<(), String> {
        let writes = days.iter().map(|day| {
            let mut request = self
                .dynamodb
                .update_item()
                .table_name(&self.usage_table)
                .key("pk", AttributeValue::S(format!("tenant#{tenant}")))
                .key("sk", AttributeValue::S(format!("daily#{day}")))
                .update_expression(update)
                .condition_expression(condition);
            for (name, value) in values {
                request = request.expression_attribute_values(*name, value.clone());
            }
            request.send()
        });
        for result in futures_util::future::join_all(writes).await {
            crate::aws::dynamo::unless_condition_failed(result.map(|_| ()))?;
        }
        Ok(())
    }

    /// Adds the tokens of an answered request to today's counter, as an update
    /// for the billing transactions.
    pub fn add_tokens_update(
        &self,
        tenant: &str,
        tokens: u64,
    ) -> Result<Update, aws_sdk_dynamodb::error::BuildError> {
        self.add_tokens_update_on(now_secs(), tenant, tokens)
    }

    /// [`Self::add_tokens_update`] on the counter of the day of `at` (Unix seconds).
    pub fn add_tokens_update_on(
        &self,
        at: u64,
        tenant: &str,
        tokens: u64,
    ) -> Result<Update, aws_sdk_dynamodb::error::BuildError> {
        Update::builder()
            .table_name(&self.usage_table)
            .key("pk", AttributeValue::S(format!("tenant#{tenant}")))
            .key("sk", AttributeValue::S(format!("daily#{}", utc_date(at))))
            .update_expression("ADD tokens :tokens")
            .expression_attribute_values(":tokens", AttributeValue::N(tokens.to_string()))
            .build()
    }
}
