//! job-slo-check: burn-rate alerts on the API's SLOs.
pub mod handler;
