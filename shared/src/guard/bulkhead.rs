//! A bulkhead: bounded concurrency that sheds at once instead of queueing.
//!
//! The fleet client owns one for all its calls; the HTTP pipeline consults the
//! same one for routes that will call the fleet, right after authentication and
//! before any round trip to DynamoDB, so a request that is going to be shed costs
//! no rate-limit write and no quota reservation. The permit then travels with
//! the request into the fleet call (and a stream keeps it until its last byte),
//! so the count of calls in flight is exact.
//!
//! Like tower's `ConcurrencyLimit` this is per process, i.e. per Lambda
//! instance; Lambda's own concurrency bounds the number of instances.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Bulkhead {
    /// What it guards, as a client is told when shed ("the inference fleet").
    what: &'static str,
    slots: Arc<Semaphore>,
    limit: usize,
}

/// One admitted call. Dropping it frees the slot.
#[derive(Debug)]
pub struct BulkheadPermit {
    permit: OwnedSemaphorePermit,
}

impl Bulkhead {
    pub fn new(what: &'static str, limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            what,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A slot if one is free now; never waits.
    pub fn try_enter(&self) -> Option<BulkheadPermit> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| BulkheadPermit { permit })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn in_flight(&self) -> usize {
        self.limit - self.slots.available_permits()
    }

    /// The answer to a shed request: 503 with `Retry-After: 1`.
    pub fn refusal(&self) -> crate::problem::ApiError {
        crate::problem::ApiError::DependencyUnavailable {
            dependency: self.what,
            retry_after_secs: 1,
        }
    }

    /// Whether `permit` was issued by this bulkhead.
    pub fn issued(&self, permit: &BulkheadPermit) -> bool {
        Arc::ptr_eq(permit.permit.semaphore(), &self.slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_beyond_the_limit_and_frees_on_drop() {
        let bulkhead = Bulkhead::new("test", 2);
        let a = bulkhead.try_enter().unwrap();
        let _b = bulkhead.try_enter().unwrap();
        assert!(bulkhead.try_enter().is_none());
        assert_eq!(bulkhead.in_flight(), 2);
        assert!(bulkhead.issued(&a));
        assert!(!Bulkhead::new("other", 1).issued(&a));
        assert_eq!(bulkhead.refusal().status(), 503);
        drop(a);
        assert!(bulkhead.try_enter().is_some());
    }
}
