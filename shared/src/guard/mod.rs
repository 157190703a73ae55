//! What admits or refuses a request before it costs anything upstream.
//!
//! - [`bulkhead`]: bounded concurrency per instance that sheds at once;
//! - [`known_room`]: callers admitted a moment ago, whose fleet call starts
//!   alongside their admission;
//! - [`ratelimit`]: per-IP and per-principal limits shared across instances
//!   (GCRA in DynamoDB);
//! - [`quota`]: per-tenant daily request and token quotas.

pub mod bulkhead;
pub mod known_room;
pub mod quota;
pub mod ratelimit;
