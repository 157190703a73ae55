//! The resilient client for the inference fleet and the fallback provider.
//!
//! - [`settings`]: tuning and the upstream list, from the environment;
//! - [`client`]: [`client::FleetClient`], the attempt loop described below;
//! - [`stream`]: a streamed answer after its first chunk;
//! - [`sse`]: server-sent events split into whole events;
//! - [`assemble`]: a non-streamed answer put together from a stream;
//! - [`endpoint`]: per-endpoint state (breaker, bulkhead, cool-down);
//! - [`error`]: per-attempt failures, the call's error, retryability;
//! - [`breaker`]: one circuit breaker per endpoint;
//! - [`health`]: the shared health the probe job writes and every client reads.
//!
//! One call reads, from the outside in (as tower layers would):
//!
//! 1. overall bulkhead: beyond `total_concurrency` calls in flight, shed at once
//!    (callers take the slot first, [`client::FleetClient::admit`]; the HTTP pipeline does
//!    it before any DynamoDB round trip, and a stream holds it until it ends);
//! 2. overall deadline: the invocation's deadline minus a margin; nothing outlives it;
//! 3. ordered failover over the endpoints (fleet in priority order, then the
//!    fallback provider), in passes, until `max_attempts` attempts were made;
//!    an endpoint is skipped without an attempt when the shared health (written
//!    by the probe job) says it is down, while it is cooling down after a 429's
//!    `Retry-After`, when its breaker is open, or when its own bulkhead is full;
//! 4. every attempt after the first draws on the retry budget (tower's
//!    `TpsBudget`: a share of recent requests plus a small floor), so an outage
//!    cannot multiply the load; retrying an endpoint already tried in this call
//!    first sleeps an exponential backoff with full jitter, while failing over to
//!    another endpoint does not wait;
//! 5. each attempt runs under its own timeout, capped by the time left: chat
//!    completions are always streamed from the fleet (and assembled for a caller
//!    that did not ask for a stream), so `ttft_timeout` plus
//!    `ttft_per_prompt_kib` per KiB of request bounds the wait for the first
//!    chunk, `idle_timeout` each later gap, and `attempt_timeout` the whole
//!    non-streamed answer; embeddings have `attempt_timeout` alone;
//! 6. a 401 re-reads the credential once and retries the same endpoint, so a
//!    rotated token never fails a request.
//!
//! Only connect errors, timeouts, broken connections, 429 and 502/503/504 are
//! retried. Other 4xx answers are the request's fault and come back as
//! `Rejected`; 500 and other 5xx come back as `Upstream`. When every endpoint
//! failed, the error names each endpoint's failure.

pub mod assemble;
pub mod breaker;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod health;
pub mod settings;
pub mod sse;
pub mod stream;
