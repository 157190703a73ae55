//! job-drift-detect: live resources against the template.
//!
//! - [`handler`]: the run (read, compare, store, alert);
//! - [`report`]: the manifest and the comparison;
//! - [`live`]: the readers of live resources.
pub mod handler;
pub mod live;
pub mod report;
