//! What every Sophia function shares, in layers. Imports run one way, from the
//! top of this list to the bottom: a function uses capabilities, capabilities
//! use the AWS helpers and the core, and the core uses nothing of ours.
//!
//! **Capabilities** (what the functions are made of):
//! - [`http`]: the pipeline every API function runs its handler in (policy,
//!   routing, request parsing, CORS, problem responses, security headers);
//! - [`fleet`]: the resilient client for the inference fleet and the fallback
//!   provider (settings, client, streams, errors, breaker, shared health);
//! - [`inference`]: chat completions, embeddings and models as every route and
//!   tool serves them, with their billing;
//! - [`jobs`]: asynchronous jobs: the record, its status machine, the store,
//!   submission;
//! - [`auth`]: access tokens, API keys, refresh-token families, the authenticator;
//! - [`memory`]: the assistant's memory: store, hybrid recall, forget, export;
//! - [`guard`]: what admits or refuses a request: the bulkhead, rate limits and
//!   quotas (budgets join here: `guard/budget.rs`);
//! - [`ops`]: what operators rely on: alerts, the audit log, feature flags (the
//!   dashboard's readers join here: `ops/dashboard.rs`).
//!
//! Where this batch's new capabilities go: the response cache in `inference/`;
//! the MCP gateway's protocol, tools and
//! federation in `mcp/`; OpenTelemetry export beside the logs in `observability`.
//!
//! **AWS** ([`aws`]): SDK configuration with explicit timeouts and retries,
//! DynamoDB helpers, SQS partial batch failures and dead-letter queues, cached
//! secrets from Secrets Manager.
//!
//! **Core** (everything stands on it):
//! - [`config`]: typed configuration from the environment, failing fast at cold start;
//! - [`clock`]: Unix time and UTC days;
//! - [`bounded`]: how the per-instance caller maps make room;
//! - [`background`]: work a request leaves behind waits for its answer;
//! - [`observability`]: JSON logs, correlation and trace IDs, EMF metrics;
//! - [`outbound`]: the one client for outbound HTTP;
//! - [`problem`]: the error every layer answers clients with, and its RFC 9457
//!   rendering;
//! - [`startup`]: why a function could not start.

pub mod auth;
pub mod aws;
pub mod background;
pub mod bounded;
pub mod clock;
pub mod config;
pub mod fleet;
pub mod guard;
pub mod http;
pub mod inference;
pub mod jobs;
pub mod mcp;
pub mod memory;
pub mod observability;
pub mod ops;
pub mod outbound;
pub mod problem;
pub mod startup;

#[cfg(test)]
mod layering;

/// Every binary that links this crate (each function, the benches, the tests)
/// allocates with mimalloc rather than the platform's malloc: a request is
/// mostly small, short-lived allocations (JSON values, headers, SDK request
/// builders), and on the chat route glibc's malloc and its free-list
/// consolidation took a fifth of the CPU samples (mimalloc: a twelfth;
/// BENCHMARKS.md, api-chat's "After (3)"). Built with `no_thp`
/// (and `MIMALLOC_ALLOW_THP=0` in the template): its arenas on transparent huge
/// pages raised every function's peak RSS by ~7 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
