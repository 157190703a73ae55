//! The assistant's memory: facts about the people who use Sophia, stored per
//! user and recalled into later conversations.
//!
//! - [`model`]: the memory, its requests and their limits;
//! - [`queue`]: the memory-embed queue and its outbox;
//! - [`store`]: the memory table (one partition per user) and its writes;
//!   whole-user operations (forget, export, history) in `store/bulk.rs`, vectors
//!   filled later and their outbox in `store/vectors.rs`;
//! - [`service`]: what the routes, the MCP tools and the worker call: store (with
//!   exact and near-duplicate merging), patch, delete, forget-all, export, and
//!   filling vectors later; recall in `service/search.rs`, the per-instance
//!   cache in `service/cache.rs`;
//! - [`recall`]: hybrid ranking (vector, BM25, recency, fused by RRF);
//! - [`vector`]: the int8 vectors as stored.
//!
//! A memory belongs to (tenant, user) as the access token says; another user's
//! memory is not found, whatever the route. Writes never wait on a model: when
//! the fleet cannot embed, the memory is stored with its vector pending and
//! `worker-memory-embed` fills it later; recall then ranks by text and recency
//! and says it was degraded.

pub mod model;
pub mod queue;
pub mod recall;
pub mod service;
pub mod store;
pub mod vector;
