//! api-health: `GET /health` (liveness) and `GET /ready` (readiness).
pub mod handler;
