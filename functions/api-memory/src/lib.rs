//! api-memory: the assistant's memory per user.
pub mod handler;
