//! What the people who run Sophia rely on.
//!
//! - [`alerts`]: de-duplicated alerts to a Slack-compatible webhook;
//! - [`audit`]: the append-only, hash-chained audit log and its verification;
//! - [`flags`]: typed per-tenant feature flags, cached.

pub mod alerts;
pub mod audit;
pub mod flags;
