//! job-queue-sweep: keeps the jobs queue honest.
pub mod handler;
