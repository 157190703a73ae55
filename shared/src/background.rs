//! Work a request leaves behind (a rate-limit lease refill) waits until no
//! answer is in progress on this instance, within a bound.
//!
//! A Lambda instance serves one request at a time, so "no answer in progress"
//! is the moment the caller has had the last byte: work started then no longer
//! competes with the request for the CPU or the scheduler (a refill's SDK call
//! alongside the request made api-chat's rounds with a refill ~0.3 ms slower at
//! p50 on 2 cores). Where requests overlap (the local server, tests), the bound
//! keeps such work from waiting for a quiet moment that never comes.
//!
//! Process-wide on purpose: what it counts is this instance's answers, whichever
//! handler or client serves them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

static IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);
static QUIET: Notify = Notify::const_new();

/// An answer in progress on this instance, until dropped: held by the HTTP
/// pipeline while it serves a request, and by a handler whose answer outlives
/// the pipeline (a body sent after the handler returned) until its last byte.
#[must_use = "the answer counts as in progress only while this is held"]
#[derive(Debug)]
pub struct Answering(());

impl Answering {
    pub fn start() -> Self {
        IN_PROGRESS.fetch_add(1, Ordering::AcqRel);
        Self(())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if IN_PROGRESS.fetch_sub(1, Ordering::AcqRel) == 1 {
            QUIET.notify_waiters();
        }
    }
}

/// Returns once no answer is in progress here, or after `bound`.
pub async fn after_answers(bound: Duration) {
    let quiet = QUIET.notified();
    tokio::pin!(quiet);
    // Registered before the count is read: a last answer ending in between
    // still wakes this.
    quiet.as_mut().enable();
    if IN_PROGRESS.load(Ordering::Acquire) == 0 {
        return;
    }
    // The bound passing is the other way out, not an error.
    let _ = tokio::time::timeout(bound, quiet).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn work_waits_for_the_answer_in_progress() {
        let answering = Answering::start();
        let waiting = tokio::spawn(after_answers(Duration::from_secs(60)));
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "an answer is in progress");
        drop(answering);
        // Other tests' answers may still be in progress: they end quickly.
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the wait ends with the last answer")
            .expect("the waiting task");
    }

    #[tokio::test]
    async fn the_bound_ends_the_wait() {
        let _answering = Answering::start();
        let started = Instant::now();
        after_answers(Duration::from_millis(20)).await;
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(IN_PROGRESS.load(Ordering::Acquire) >= 1, "still answering");
    }
}
