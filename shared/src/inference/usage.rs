//! Usage accounting: tokens and cost per tenant, day and model, in DynamoDB.
//!
//! One atomic `UpdateItem ... ADD` per answered request on
//! `pk = tenant#<tenant>`, `sk = usage#<yyyy-mm-dd>#<model>`, so concurrent
//! instances never lose an increment and the dashboard reads a day with one Query.

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::utc_date;
use crate::config::{ConfigError, Env};
use crate::guard::quota::Quotas;
use crate::inference::budget::Budgets;
use crate::inference::ledger::{Ledger, Owed, Settled, Tokens};
use crate::observability::MetricSet;
use aws_sdk_dynamodb::types::builders::UpdateBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, Update};
use serde::Deserialize;

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub prompt_per_mtok: f64,
    pub completion_per_mtok: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable(HashMap<String, Price>);

impl PriceTable {
    /// `PRICE_TABLE`: `{"model": {"prompt_per_mtok": 0.1, "completion_per_mtok": 0.3}}`;
    /// every allowed model must have a price, so no answer is ever billed at zero by accident.
    pub fn parse(raw: &str, models: &[String]) -> Result<Self, ConfigError> {
        let table: HashMap<String, Price> = serde_json::from_str(raw).map_err(|error| {
            ConfigError::new("PRICE_TABLE", format!("is not valid JSON: {error}"))
        })?;
        for model in models {
            let Some(price) = table.get(model) else {
                return Err(ConfigError::new(
                    "PRICE_TABLE",
                    format!("has no price for model {model}"),
                ));
            };
            let valid = |v: f64| v.is_finite() && v >= 0.0;
            if !valid(price.prompt_per_mtok) || !valid(price.completion_per_mtok) {
                return Err(ConfigError::new(
                    "PRICE_TABLE",
                    format!("prices of {model} must be non-negative numbers"),
                ));
            }
        }
        Ok(Self(table))
    }

    /// Cost in micro-USD (USD per million tokens × tokens).
    pub fn cost_micro_usd(&self, model: &str, usage: &Usage) -> f64 {
        self.0.get(model).map_or(0.0, |price| {
            price.prompt_per_mtok * usage.prompt_tokens as f64
                + price.completion_per_mtok * usage.completion_tokens as f64
        })
    }
}

/// Quota, usage and cost accounting of answered requests, shared by every
/// route and tool that calls the fleet.
#[derive(Debug, Clone)]
pub struct Billing {
    /// The function billing, as the `Service` metric dimension.
    pub service: &'static str,
    pub prices: PriceTable,
    pub usage: UsageRecorder,
    pub quotas: Arc<Quotas>,
    /// Usage owed by requests being answered (see [`crate::inference::ledger`]).
    pub ledger: Ledger,
    /// The tenants' cost budgets, checked after each answer is billed.
    pub budgets: Arc<Budgets>,
}

/// A request's billing, due once the caller has the answer: see [`Billing::settle`].
#[derive(Debug, Clone)]
pub struct Settlement {
    pub owed: Owed,
    /// Whether the ledger entry's write was confirmed (else it may still land,
    /// and billing puts a tombstone in its place).
    pub opened: bool,
    /// The answer's usage; `None`: no answer, nothing to bill.
    pub usage: Option<Usage>,
}

impl Settlement {
    pub async fn settle(self, billing: &Billing) {
        billing
            .settle(&self.owed, self.opened, self.usage.as_ref())
            .await;
    }
}

/// What one run of [`Billing::recover`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Recovery {
    /// Billed with the answer's own figures (stored when settling collided).
    pub billed_exactly: usize,
    /// Billed with the prompt's estimate: the answer's usage was never known.
    pub billed_estimated: usize,
    /// Settled meanwhile by the function itself: nothing billed.
    pub already_settled: usize,
}

impl Billing {
    /// `PRICE_TABLE` (a price for each of `priced`), `USAGE_TABLE`, and the
    /// quotas ([`Quotas::from_env`]).
    pub fn from_env(
        service: &'static str,
        env: &Env<'_>,
        dynamodb: aws_sdk_dynamodb::Client,
        priced: &[String],
    ) -> Result<Self, ConfigError> {
        let table = env.required("USAGE_TABLE")?;
        let quotas = Arc::new(Quotas::from_env(env, dynamodb.clone())?);
        Ok(Self {
            service,
            prices: PriceTable::parse(&env.required("PRICE_TABLE")?, priced)?,
            budgets: Arc::new(Budgets::new(
                dynamodb.clone(),
                env.required("AUTH_TABLE")?,
                table.clone(),
                quotas.clone(),
            )),
            quotas,
            ledger: Ledger::new(dynamodb.clone(), table.clone()),
            usage: UsageRecorder::new(dynamodb, table),
        })
    }

    /// Records the usage of one answer that had no ledger entry (embeddings, a
    /// tool's completion): tokens and cost in the usage table, tokens against
    /// the daily quota, and as metrics, in one transaction with a tombstone of
    /// its own, so an SDK retry of a write that did land (its answer lost in a
    /// timeout) cannot bill it twice. A failure is logged with the figures (so
    /// it can be replayed) but does not fail an answer the caller already has.
    pub async fn account(&self, tenant: &str, model: &str, usage: &Usage) {
        let receipt = uuid::Uuid::new_v4().simple().to_string();
        let owed = Owed::new(tenant, model, &receipt, 0);
        self.settle(&owed, false, Some(usage)).await;
    }

    fn emit(&self, tenant: &str, model: &str, usage: &Usage, cost: f64) {
        MetricSet::new("Sophia")
            .dimension("Service", self.service)
            .dimension("Model", model)
            .count("PromptTokens", usage.prompt_tokens as f64)
            .count("CompletionTokens", usage.completion_tokens as f64)
            .count("CostMicroUsd", cost)
            .property("tenant", tenant)
            .emit();
    }

    /// Bills a request whose entry was opened in the ledger (`opened`; if its
    /// write failed, a tombstone takes the entry's place, see
    /// [`Ledger::settle_unconfirmed`]): with its answer's usage, or, without an
    /// answer, closes the entry unbilled. Exactly once: the entry is deleted
    /// (or replaced) in the billing transaction.
    pub async fn settle(&self, owed: &Owed, opened: bool, usage: Option<&Usage>) {
        let (tenant, model) = (owed.tenant.as_str(), owed.model.as_str());
        match (opened, usage) {
            (false, None) => {
                if let Err(error) = self.ledger.close_unconfirmed(owed).await {
                    tracing::warn!(%error, tenant, request_id = %owed.request_id, "closing an unconfirmed ledger entry failed");
                }
            }
            (true, None) => {
                if let Err(error) = self.ledger.close_unbilled(owed).await {
                    // The recovery will bill the prompt's estimate for it.
                    tracing::error!(%error, tenant, request_id = %owed.request_id, "closing an unanswered request's ledger entry failed");
                }
            }
            (opened, Some(usage)) => {
                let cost = self.prices.cost_micro_usd(model, usage);
                let settled = if opened {
                    self.settle_owed(owed, usage, cost, false).await
                } else {
                    // The entry's write failed, perhaps only on our side (it may
                    // land later): billed with a tombstone at its key, so the
                    // recovery can never bill it again.
                    match self.billing_updates(owed, usage, cost, false) {
                        Ok(updates) => self.ledger.settle_unconfirmed(owed, updates).await,
                        Err(error) => Err(error),
                    }
                };
                match settled {
                    Ok(Settled::Billed) => {
                        self.emit(tenant, model, usage, cost);
                        self.budgets.enforce(tenant).await;
                    }
                    Ok(outcome) => {
                        tracing::info!(?outcome, tenant, request_id = %owed.request_id, "billed already, or left to the recovery");
                    }
                    Err(error) => log_unrecorded(&error, tenant, model, usage, cost),
                }
            }
        }
    }

    /// The usage row's and the daily tokens' updates of one answer.
    fn billing_updates(
        &self,
        owed: &Owed,
        usage: &Usage,
        cost: f64,
        recovered: bool,
    ) -> Result<Vec<Update>, String> {
        let (tenant, model) = (owed.tenant.as_str(), owed.model.as_str());
        let error = |e: aws_sdk_dynamodb::error::BuildError| e.to_string();
        Ok(vec![
            self.usage
                .update_on(owed.opened_at, tenant, model, usage, cost, recovered)
                .map_err(error)?,
            self.quotas
                .add_tokens_update_on(
                    owed.opened_at,
                    tenant,
                    usage.prompt_tokens + usage.completion_tokens,
                )
                .map_err(error)?,
        ])
    }

    async fn settle_owed(
        &self,
        owed: &Owed,
        usage: &Usage,
        cost: f64,
        recovered: bool,
    ) -> Result<Settled, String> {
        let billing = self.billing_updates(owed, usage, cost, recovered)?;
        let tokens = Tokens {
            prompt: usage.prompt_tokens,
            completion: usage.completion_tokens,
        };
        self.ledger.settle(owed, billing, tokens).await
    }

    /// Bills every ledger entry opened at or before `cutoff` (Unix seconds) on today
    /// or the `days_back` days before: requests whose function died between the
    /// answer and its billing. Each is billed once, on the day it was opened,
    /// counted as `recovered_requests`.
    pub async fn recover(&self, cutoff: u64, days_back: u64) -> Result<Recovery, String> {
        let mut report = Recovery::default();
        let mut billed_tenants = std::collections::BTreeSet::new();
        for owed in self.ledger.unsettled(cutoff, days_back).await? {
            let usage = match owed.answered {
                Some(tokens) => Usage {
                    prompt_tokens: tokens.prompt,
                    completion_tokens: tokens.completion,
                },
                None => Usage {
                    prompt_tokens: owed.prompt_tokens_estimate,
                    completion_tokens: 0,
                },
            };
            let cost = self.prices.cost_micro_usd(&owed.model, &usage);
            match self.settle_owed(&owed, &usage, cost, true).await? {
                Settled::Billed => {
                    self.emit(&owed.tenant, &owed.model, &usage, cost);
                    billed_tenants.insert(owed.tenant.clone());
                    if owed.answered.is_some() {
                        report.billed_exactly += 1;
                    } else {
                        report.billed_estimated += 1;
                    }
                }
                Settled::AlreadySettled => report.already_settled += 1,
                Settled::Deferred => {
                    return Err(format!(
                        "billing request {} of tenant {} keeps colliding",
                        owed.request_id, owed.tenant
                    ));
                }
            }
        }
        for tenant in billed_tenants {
            self.budgets.enforce(&tenant).await;
        }
        Ok(report)
    }
}

fn log_unrecorded(error: &str, tenant: &str, model: &str, usage: &Usage, cost: f64) {
    tracing::error!(
        %error,
        tenant,
        model,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        cost_micro_usd = cost,
        "recording usage failed"
    );
}

impl Billing {
    /// Records an answer served from the response cache (see
    /// [`UsageRecorder::record_cached`]); a failure is logged, as in [`Self::account`].
    pub async fn account_cached(&self, tenant: &str, model: &str) {
        MetricSet::new("Sophia")
            .dimension("Service", self.service)
            .dimension("Model", model)
            .count("CachedAnswers", 1.0)
            .property("tenant", tenant)
            .emit();
        if let Err(error) = self.usage.record_cached(tenant, model).await {
            tracing::error!(%error, tenant, model, "recording a cached answer failed");
        }
    }
}

/// The `usage` object of an OpenAI-compatible answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct UsageRecorder {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
}

/// Usage items are kept 400 days (monthly reports over a year, with margin).
const RETENTION_SECS: u64 = 400 * 86_400;

impl UsageRecorder {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { dynamodb, table }
    }

    pub async fn record(
        &self,
        tenant: &str,
        model: &str,
        usage: &Usage,
        cost_micro_usd: f64,
    ) -> Result<(), String> {
        let update = self
            .update(tenant, model, usage, cost_micro_usd)
            .map_err(|error| error.to_string())?;
        crate::aws::dynamo::apply(&self.dynamodb, update).await
    }

    /// One answer served from the response cache: a request, counted as
    /// cached, with no upstream tokens and no cost.
    pub async fn record_cached(&self, tenant: &str, model: &str) -> Result<(), String> {
        let update = self
            .increment(
                crate::clock::now_secs(),
                tenant,
                model,
                "cached_requests :one",
            )
            .build()
            .map_err(|error| error.to_string())?;
        crate::aws::dynamo::apply(&self.dynamodb, update).await
    }

    /// The usage increment as an update, for [`Self::record`] and for transactions
    /// that must bill exactly when something else is written (a job completing).
    pub fn update(
        &self,
        tenant: &str,
        model: &str,
        usage: &Usage,
        cost_micro_usd: f64,
    ) -> Result<Update, aws_sdk_dynamodb::error::BuildError> {
        self.update_on(
            crate::clock::now_secs(),
            tenant,
            model,
            usage,
            cost_micro_usd,
            false,
        )
    }

    /// [`Self::update`] on the row of the day of `at` (Unix seconds); a
    /// `recovered` request is also counted as `recovered_requests`.
    pub fn update_on(
        &self,
        at: u64,
        tenant: &str,
        model: &str,
        usage: &Usage,
        cost_micro_usd: f64,
        recovered: bool,
    ) -> Result<Update, aws_sdk_dynamodb::error::BuildError> {
        let adds = if recovered {
            "recovered_requests :one, prompt_tokens :p, completion_tokens :c, cost_micro_usd :cost"
        } else {
            "prompt_tokens :p, completion_tokens :c, cost_micro_usd :cost"
        };
        self.increment(at, tenant, model, adds)
            .expression_attribute_values(":p", AttributeValue::N(usage.prompt_tokens.to_string()))
            .expression_attribute_values(
                ":c",
                AttributeValue::N(usage.completion_tokens.to_string()),
            )
            .expression_attribute_values(":cost", AttributeValue::N(format!("{cost_micro_usd:.3}")))
            .build()
    }

    /// One more request on the row of `tenant` and `model` of the day of `at`,
    /// plus `adds` (more `ADD` terms, whose values the caller binds).
    fn increment(&self, at: u64, tenant: &str, model: &str, adds: &str) -> UpdateBuilder {
        let now = crate::clock::now_secs();
        Update::builder()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("tenant#{tenant}")))
            .key("sk", AttributeValue::S(format!("usage#{}#{model}", utc_date(at))))
            .update_expression(format!(
                "ADD requests :one, {adds} \
                 SET expires_at = if_not_exists(expires_at, :expires), model = :model, tenant = :tenant"
            ))
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .expression_attribute_values(":expires", AttributeValue::N((now + RETENTION_SECS).to_string()))
            .expression_attribute_values(":model", AttributeValue::S(model.to_owned()))
            .expression_attribute_values(":tenant", AttributeValue::S(tenant.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_needs_a_price() {
        let models = vec!["a".to_owned(), "b".to_owned()];
        let raw = r#"{"a": {"prompt_per_mtok": 0.1, "completion_per_mtok": 0.3}}"#;
        assert!(
            PriceTable::parse(raw, &models)
                .unwrap_err()
                .problem
                .contains("model b")
        );
        let negative = r#"{"a": {"prompt_per_mtok": -1, "completion_per_mtok": 0.3}}"#;
        assert!(PriceTable::parse(negative, &models[..1]).is_err());
        assert!(PriceTable::parse("{", &models).is_err());
    }

    #[test]
    fn cost_is_tokens_times_price() {
        let table = PriceTable::parse(
            r#"{"a": {"prompt_per_mtok": 0.5, "completion_per_mtok": 2.0}}"#,
            &["a".to_owned()],
        )
        .unwrap();
        let usage = Usage {
            prompt_tokens: 100,
            completion_tokens: 10,
        };
        assert!((table.cost_micro_usd("a", &usage) - 70.0).abs() < 1e-9);
    }
}
