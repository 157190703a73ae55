//! worker-inference: the jobs queue's consumer.
pub mod handler;
