//! What the client keeps per endpoint: its upstream, circuit breaker, bulkhead
//! and 429 cool-down; and how a breaker transition is reported.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::fleet::breaker::{Breaker, Transition};
use crate::fleet::settings::Upstream;
use crate::observability::MetricSet;

const METRICS_NAMESPACE: &str = "Sophia";

pub(crate) struct EndpointState {
    pub(crate) upstream: Upstream,
    pub(crate) breaker: Mutex<Breaker>,
    pub(crate) bulkhead: Arc<Semaphore>,
    pub(crate) cooling_until: Mutex<Option<Instant>>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (plain
    // counters), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn report_transition(endpoint: &str, transition: Option<Transition>) {
    let Some(Transition { from, to }) = transition else {
        return;
    };
    tracing::warn!(
        endpoint,
        from = from.as_str(),
        to = to.as_str(),
        "circuit breaker transition"
    );
    MetricSet::new(METRICS_NAMESPACE)
        .dimension("Endpoint", endpoint)
        // By the state entered, so the dashboard can tell the last state seen.
        .dimension("To", to.as_str())
        .count("BreakerTransitions", 1.0)
        .property("from", from.as_str())
        .property("to", to.as_str())
        .emit();
}
