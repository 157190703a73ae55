//! What every Sophia function shares.
//!
//! - [`alerts`]: de-duplicated alerts to a Slack-compatible webhook;
//! - [`audit`]: the append-only, hash-chained audit log and its verification;
//! - [`auth`]: access tokens, API keys, refresh-token families, the authenticator;
//! - [`batch`]: SQS partial batch failures for queue consumers;
//! - [`bulkhead`]: bounded concurrency that sheds at once;
//! - [`config`]: typed configuration from the environment, failing fast at cold start;
//! - [`deadletter`]: dead-letter queues: peek without losing, redrive;
//! - [`dynamo`]: small DynamoDB helpers (attribute values, error text);
//! - [`error`]: the HTTP layer's error type and RFC 9457 problem documents;
//! - [`observability`]: JSON logs, correlation and trace IDs, EMF metrics;
//! - [`http`]: the pipeline every API function runs its handler in;
//! - [`jobs`]: asynchronous jobs: the record, its status machine, submission;
//! - [`aws`]: SDK configuration with explicit timeouts and retries;
//! - [`ratelimit`]: rate limits shared across instances (GCRA in DynamoDB);
//! - [`quota`]: per-tenant daily quotas enforced across instances;
//! - [`outbound`]: the one client for outbound HTTP;
//! - [`flags`]: typed per-tenant feature flags, cached;
//! - [`fleet`]: the resilient client for the inference fleet and the fallback provider.

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod aws;
pub mod batch;
pub mod bulkhead;
pub mod config;
pub mod deadletter;
pub mod dynamo;
pub mod error;
pub mod flags;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod observability;
pub mod outbound;
pub mod quota;
pub mod ratelimit;

pub use error::ApiError;
