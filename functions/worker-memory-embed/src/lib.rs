//! worker-memory-embed: memory vectors the fleet could not compute at once.
pub mod handler;
