//! What the people who run Sophia rely on.
//!
//! - [`alerts`]: de-duplicated alerts to a Slack-compatible webhook;
//! - [`audit`]: the append-only, hash-chained audit log and its verification;
//! - `deploy_hook` (feature `codedeploy`): the CodeDeploy hooks' event and verdict report;
//! - [`flags`]: typed per-tenant feature flags, cached;
//! - [`slo`]: the SLO definitions job-slo-check evaluates and the dashboard reads;
//! - [`smoke`]: the end-to-end smoke journey through the public API (`make
//!   smoke`, the post-traffic deploy hook).

pub mod alerts;
pub mod audit;
#[cfg(feature = "codedeploy")]
pub mod deploy_hook;
pub mod flags;
pub mod slo;
pub mod smoke;
