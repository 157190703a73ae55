//! job-drift-detect: live resources against the template.
pub mod handler;
