//! Inference as every route and tool serves it: chat completions, embeddings
//! and the model list, validated the same way, sent through the fleet client,
//! and billed to the caller's tenant the same way.
//!
//! - [`chat`]: the chat-completion request and its validation;
//! - [`cache`]: the opt-in exact-match response cache of completions;
//! - [`embeddings`]: the embeddings request, the call, OpenAI's answer shape;
//! - [`models`]: the model catalog;
//! - [`usage`]: prices, the usage table, and [`usage::Billing`];
//! - [`usage_rows`]: the usage table's rows read back (dashboard, budgets);
//! - [`budget`]: per-tenant cost budgets, their alerts and hard limit.
//!
//! The REST routes (api-chat), the MCP tools (api-mcp), the memory (api-memory)
//! and the worker call these functions; none of them calls another over HTTP.

pub mod budget;
pub mod cache;
pub mod chat;
pub mod embeddings;
pub mod ledger;
pub mod models;
pub mod openai;
pub mod usage;
pub mod usage_rows;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::config::Env;
use crate::fleet::client::{FleetClient, FleetReply};
use crate::fleet::error::FleetError;
use crate::guard::bulkhead::BulkheadPermit;
use crate::observability::RequestContext;
use crate::outbound::{OutboundClient, OutboundSettings};
use crate::problem::ApiError;
use crate::startup::InitError;
use cache::ResponseCache;
use chat::Limits;
use embeddings::{Embedder, EmbeddingLimits};
use ledger::Owed;
use models::Catalog;
use usage::{Billing, Settlement, Usage};

/// The usage an answer reports (none reported: nothing billed but the request).
fn answered_usage(reply: &FleetReply) -> Usage {
    Usage::deserialize(&reply.body["usage"]).unwrap_or_default()
}

/// Everything inference needs, built once per cold start.
#[derive(Debug)]
pub struct Inference {
    pub fleet: Arc<FleetClient>,
    pub chat_limits: Limits,
    pub embedding_limits: EmbeddingLimits,
    pub catalog: Catalog,
    pub billing: Billing,
    pub cache: ResponseCache,
}

impl Inference {
    /// The fleet client (`FLEET_*`, `BREAKER_*`, `FALLBACK_*`, `STATE_TABLE`), the
    /// chat and embedding limits (`CHAT_*`, `EMBEDDING_*`), `PRICE_TABLE` (every
    /// model needs a price), `USAGE_TABLE`, `AUTH_TABLE` and the quotas.
    pub fn from_env(
        service: &'static str,
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, InitError> {
        let outbound = OutboundClient::new(OutboundSettings::from_env(env)?)?;
        Self::from_env_sharing(service, env, sdk, &outbound)
    }

    /// [`Self::from_env`] with the fleet client on the function's own pool.
    pub fn from_env_sharing(
        service: &'static str,
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        outbound: &OutboundClient,
    ) -> Result<Self, InitError> {
        let chat_limits = Limits::from_env(env)?;
        let embedding_limits = EmbeddingLimits::from_env(env)?;
        let priced: Vec<String> = chat_limits
            .models
            .iter()
            .chain(&embedding_limits.models)
            .cloned()
            .collect();
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        Ok(Self {
            fleet: Arc::new(FleetClient::from_env_sharing(env, sdk, outbound)?),
            catalog: Catalog::new(env, &chat_limits.models, &embedding_limits.models)?,
            chat_limits,
            embedding_limits,
            cache: ResponseCache::from_env(env, dynamodb.clone())?,
            billing: Billing::from_env(service, env, dynamodb, &priced)?,
        })
    }

    pub fn embedder(&self) -> Embedder<'_> {
        Embedder {
            fleet: &self.fleet,
            billing: &self.billing,
        }
    }

    /// A bulkhead slot for one fleet call, or a 503 at once.
    pub fn admit(&self) -> Result<BulkheadPermit, ApiError> {
        self.fleet.admit().map_err(|error| error.to_api_error())
    }

    /// A non-streamed completion of `body` (a validated request's upstream body)
    /// whose quota was reserved, billed to `tenant` once answered.
    pub async fn complete_reserved(
        &self,
        permit: BulkheadPermit,
        tenant: &str,
        model: &str,
        body: &Value,
        ctx: &RequestContext,
    ) -> Result<FleetReply, FleetError> {
        let reply = self.fleet.chat(permit, body, ctx).await?;
        self.billing
            .account(tenant, model, &answered_usage(&reply))
            .await;
        Ok(reply)
    }

    /// [`Self::complete_reserved`] billed later: the request's ledger entry is
    /// written while the fleet works (never before it), and the returned
    /// [`Settlement`] bills the answer once the caller has it (or closes the
    /// entry of a request that got none).
    pub async fn complete_owed(
        &self,
        permit: BulkheadPermit,
        owed: Owed,
        body: &Value,
        ctx: &RequestContext,
    ) -> (Result<FleetReply, FleetError>, Settlement) {
        // The fleet call first: its request leaves before the ledger's PutItem
        // is built and signed, so that work overlaps the fleet's answer.
        let (reply, opened) = futures_util::join!(
            self.fleet.chat(permit, body, ctx),
            self.billing.ledger.open(&owed)
        );
        let opened = opened
            .inspect_err(
                |error| tracing::error!(%error, "opening the ledger entry failed; billing inline"),
            )
            .is_ok();
        let usage = reply.as_ref().ok().map(answered_usage);
        (
            reply,
            Settlement {
                owed,
                opened,
                usage,
            },
        )
    }

    /// One whole non-streamed completion: validation, quota, fleet, billing.
    pub async fn complete(
        &self,
        permit: BulkheadPermit,
        tenant: &str,
        chat: &chat::ChatRequest,
        ctx: &RequestContext,
    ) -> Result<Value, ApiError> {
        chat.validate(&self.chat_limits)?;
        if chat.stream {
            return Err(ApiError::invalid("stream: true is not possible here"));
        }
        let body = chat.upstream_body(&self.chat_limits)?;
        self.billing.quotas.reserve(tenant).await?;
        let reply = self
            .complete_reserved(permit, tenant, &chat.model, &body, ctx)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "chat completion failed");
                error.to_api_error()
            })?;
        Ok(reply.body)
    }
}
