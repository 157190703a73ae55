//! api-jobs: chat completions as asynchronous jobs.
pub mod handler;
