//! A circuit breaker per endpoint: closed → open → half-open → closed.
//!
//! Written here rather than taken from a crate because it must be driven by the
//! client's own attempt loop (one permit per attempt, outcomes reported after
//! failover decisions), expose its state for metrics and the dashboard, and take
//! the clock as an argument so its tests are exact. It is per process (per Lambda
//! instance); shared health written by the probe job covers other instances.
//!
//! - Closed: calls flow. It opens after `consecutive_failures` failures in a row,
//!   or when at least `min_calls` of the last `window` outcomes include a failure
//!   rate of `failure_rate` or more.
//! - Open: calls are refused at once until `cool_down` has passed.
//! - Half-open: at most `half_open_probes` calls at a time are let through; one
//!   failure reopens, `half_open_probes` successes close.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub window: usize,
    pub min_calls: usize,
    pub cool_down: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: 20,
            min_calls: 10,
            cool_down: Duration::from_secs(10),
            half_open_probes: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Whether an attempt may go ahead; a granted permit must be reported back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Refused; the breaker may let a probe through after this long.
    Refused {
        retry_in: Duration,
    },
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    consecutive: u32,
    outcomes: VecDeque<bool>,
    opened_at: Option<Instant>,
    probes_in_flight: u32,
    probe_successes: u32,
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: BreakerState::Closed,
            consecutive: 0,
            outcomes: VecDeque::with_capacity(settings.window),
            opened_at: None,
            probes_in_flight: 0,
            probe_successes: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to make one call now. May move open → half-open when the cool-down is over.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (Admission::Allowed, None),
            BreakerState::Open => {
                let opened = self.opened_at.unwrap_or(now);
                let elapsed = now.saturating_duration_since(opened);
                if elapsed < self.settings.cool_down {
                    return (
                        Admission::Refused {
                            retry_in: self.settings.cool_down - elapsed,
                        },
                        None,
                    );
                }
                let transition = self.move_to(BreakerState::HalfOpen);
                self.probes_in_flight = 1;
                (Admission::Allowed, transition)
            }
            BreakerState::HalfOpen => {
                if self.probes_in_flight < self.settings.half_open_probes {
                    self.probes_in_flight += 1;
                    (Admission::Allowed, None)
                } else {
                    (
                        Admission::Refused {
                            retry_in: Duration::from_millis(100),
                        },
                        None,
                    )
                }
            }
        }
    }

    /// Reports the outcome of an admitted call.
    pub fn record(&mut self, success: bool, now: Instant) -> Option<Transition> {
        match self.state {
            BreakerState::HalfOpen => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                if !success {
                    return self.open(now);
                }
                self.probe_successes += 1;
                if self.probe_successes >= self.settings.half_open_probes {
                    self.outcomes.clear();
                    self.consecutive = 0;
                    return self.move_to(BreakerState::Closed);
                }
                None
            }
            BreakerState::Closed => {
                if self.outcomes.len() == self.settings.window {
                    self.outcomes.pop_front();
                }
                self.outcomes.push_back(success);
                self.consecutive = if success { 0 } else { self.consecutive + 1 };
                if !success && self.should_open() {
                    return self.open(now);
                }
                None
            }
            // A late outcome of a call admitted before the breaker opened.
            BreakerState::Open => None,
        }
    }

    /// Abandons an admitted call without an outcome (e.g. the caller's deadline ran
    /// out before it was sent), so a half-open probe slot is not leaked.
    pub fn release(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    fn should_open(&self) -> bool {
        if self.consecutive >= self.settings.consecutive_failures {
            return true;
        }
        let calls = self.outcomes.len();
        if calls < self.settings.min_calls {
            return false;
        }
        let failures = self.outcomes.iter().filter(|ok| !**ok).count();
        failures as f64 / calls as f64 >= self.settings.failure_rate
    }

    fn open(&mut self, now: Instant) -> Option<Transition> {
        self.opened_at = Some(now);
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        self.move_to(BreakerState::Open)
    }

    fn move_to(&mut self, to: BreakerState) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        if to == BreakerState::HalfOpen {
            self.probe_successes = 0;
        }
        (from != to).then_some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: 10,
            min_calls: 6,
            cool_down: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses() {
        let now = Instant::now();
        let mut breaker = Breaker::new(settings());
        assert_eq!(breaker.record(false, now), None);
        assert_eq!(breaker.record(false, now), None);
        let transition = breaker.record(false, now).unwrap();
        assert_eq!(transition.to, BreakerState::Open);
        let (admission, _) = breaker.admit(now + Duration::from_secs(1));
        assert_eq!(
            admission,
            Admission::Refused {
                retry_in: Duration::from_secs(4)
            }
        );
    }

    #[test]
    fn opens_on_failure_rate_even_without_a_streak() {
        let now = Instant::now();
        let mut breaker = Breaker::new(settings());
        for ok in [true, false, true, false, true, false] {
            breaker.record(ok, now);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn successes_keep_it_closed() {
        let now = Instant::now();
        let mut breaker = Breaker::new(settings());
        for i in 0..50 {
            breaker.record(i % 4 != 0, now);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_admits_bounded_probes_then_closes() {
        let now = Instant::now();
        let mut breaker = Breaker::new(settings());
        for _ in 0..3 {
            breaker.record(false, now);
        }
        let later = now + Duration::from_secs(6);
        let (first, transition) = breaker.admit(later);
        assert_eq!(first, Admission::Allowed);
        assert_eq!(transition.unwrap().to, BreakerState::HalfOpen);
        assert_eq!(breaker.admit(later).0, Admission::Allowed);
        assert!(matches!(breaker.admit(later).0, Admission::Refused { .. }));
        assert_eq!(breaker.record(true, later), None);
        assert_eq!(
            breaker.record(true, later).unwrap().to,
            BreakerState::Closed
        );
        assert_eq!(breaker.admit(later).0, Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_cool_down() {
        let now = Instant::now();
        let mut breaker = Breaker::new(settings());
        for _ in 0..3 {
            breaker.record(false, now);
        }
        let later = now + Duration::from_secs(6);
        breaker.admit(later);
        assert_eq!(breaker.record(false, later).unwrap().to, BreakerState::Open);
        assert!(matches!(
            breaker.admit(later + Duration::from_secs(4)).0,
            Admission::Refused { .. }
        ));
        assert_eq!(
            breaker.admit(later + Duration::from_secs(5)).0,
            Admission::Allowed
        );
    }

    #[test]
    fn released_probe_frees_its_slot() {
        let now = Instant::now();
        let mut breaker = Breaker::new(BreakerSettings {
            half_open_probes: 1,
            ..settings()
        });
        for _ in 0..3 {
            breaker.record(false, now);
        }
        let later = now + Duration::from_secs(6);
        assert_eq!(breaker.admit(later).0, Admission::Allowed);
        assert!(matches!(breaker.admit(later).0, Admission::Refused { .. }));
        breaker.release();
        assert_eq!(breaker.admit(later).0, Admission::Allowed);
    }
}
