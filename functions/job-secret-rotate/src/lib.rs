//! job-secret-rotate: the four-step rotation of Sophia's own secrets.
pub mod handler;
