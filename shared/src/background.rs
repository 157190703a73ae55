//! Work a request leaves behind (a rate-limit lease refill) and the answer it
//! must not slow down.
//!
//! A handler that sends its answer before the invocation ends (api-chat: the
//! last byte, then billing) marks the answer in progress ([`Answering`]): such
//! work waits until the caller has the last byte, so its SDK call no longer
//! competes with the request for the CPU (a refill beside the request made
//! api-chat's rounds with one ~0.3 ms slower at p50 on 2 cores); the handler's
//! post-answer tail then waits for the work ([`tail_beside_work`]), so the
//! invocation never ends, and Lambda never freezes the instance, with it on the
//! wire.
//!
//! Where nothing marks an answer (a buffered response goes out only when the
//! handler returns, and the invocation ends with it), the work steps aside for
//! one pass of the scheduler and runs beside the request's own I/O, as before.
//!
//! Process-wide on purpose: what it counts is this instance's answers and work,
//! whichever handler or client serves them. Where requests overlap (the local
//! server, tests), the bounds keep anything from waiting for a quiet moment
//! that never comes.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// A count with a wake-up for whoever waits for it to reach zero.
#[derive(Debug)]
struct Gauge {
    count: AtomicUsize,
    zero: Notify,
}

impl Gauge {
    const fn new() -> Self {
        Self {
            count: AtomicUsize::new(0),
            zero: Notify::const_new(),
        }
    }

    /// One more, until the returned guard is dropped.
    fn hold(&'static self) -> Held {
        self.count.fetch_add(1, Ordering::AcqRel);
        Held(self)
    }

    fn is_zero(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Whether it was zero already; otherwise waits for zero, at most `bound`.
    async fn wait_for_zero(&self, bound: Duration) -> bool {
        let zero = self.zero.notified();
        tokio::pin!(zero);
        // Registered before the count is read: a last count given back in
        // between still wakes this.
        zero.as_mut().enable();
        if self.is_zero() {
            return true;
        }
        // The bound passing is the other way out, not an error.
        let _ = tokio::time::timeout(bound, zero).await;
        false
    }
}

/// One count of a [`Gauge`], given back when dropped.
#[derive(Debug)]
struct Held(&'static Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

static ANSWERS: Gauge = Gauge::new();
static WORK: Gauge = Gauge::new();

/// How long an answer's tail waits for the work its request left behind (a
/// lease refill: one DynamoDB write) before the invocation may end anyway.
const WORK_WAIT: Duration = Duration::from_secs(1);

/// An answer in progress on this instance, until dropped (at its last byte).
#[must_use = "the answer counts as in progress only while this is held"]
#[derive(Debug)]
pub struct Answering {
    _held: Held,
}

impl Answering {
    pub fn start() -> Self {
        Self {
            _held: ANSWERS.hold(),
        }
    }
}

/// Runs `work` on a task of its own once no answer is in progress here (at
/// most `bound` later), or after one pass of the scheduler where none is.
pub fn spawn_after_answers<F>(bound: Duration, work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let counted = WORK.hold();
    tokio::spawn(async move {
        let _counted = counted;
        if ANSWERS.wait_for_zero(bound).await {
            // The request that left this work runs on to its own I/O first.
            tokio::task::yield_now().await;
        }
        work.await;
    });
}

/// An answer's tail (billing, once the caller has the last byte) beside the
/// work its request left: returns when both are done, the work waited for at
/// most a second, so the invocation ends after them.
pub async fn tail_beside_work(tail: impl Future<Output = ()>) {
    futures_util::join!(tail, WORK.wait_for_zero(WORK_WAIT));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    #[tokio::test]
    async fn work_waits_for_the_answer_and_the_tail_for_the_work() {
        let answering = Answering::start();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        spawn_after_answers(Duration::from_secs(60), async move {
            flag.store(true, Ordering::Release);
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!done.load(Ordering::Acquire), "the answer is in progress");
        drop(answering);
        // Other tests' answers and work may be in progress too: they end quickly.
        WORK.wait_for_zero(Duration::from_secs(30)).await;
        assert!(
            done.load(Ordering::Acquire),
            "the work ran once the answer was complete"
        );
    }

    #[tokio::test]
    async fn the_bound_ends_the_wait_for_an_answer() {
        let _answering = Answering::start();
        let started = Instant::now();
        assert!(!ANSWERS.wait_for_zero(Duration::from_millis(20)).await);
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
