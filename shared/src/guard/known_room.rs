//! Callers this instance admitted a moment ago.
//!
//! For them the fleet call starts together with the admission writes (rate
//! limits and the quota reservation) instead of after them, so a steady caller
//! waits for no AWS round trip before the fleet. The answer is still released
//! only once admission agreed: a refusal discards it (nothing billed, the ledger
//! entry closed) and the caller gets the 429. The price is fleet work wasted on
//! a request that crosses a limit while admission still left room for two
//! more (concurrent requests, or a token quota spent by one long answer): the
//! room is only counted while the last admission left at least
//! [`MIN_HEADROOM`] requests of every limit, so a caller at its limit waits for
//! admission first and costs the fleet nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bounded::make_room;
use crate::config::{ConfigError, Env};

/// Callers remembered at most; beyond it those outside the window are
/// forgotten, and all of them if none is ([`make_room`]; which only costs each
/// one sequential round trip).
const MAX_CALLERS: usize = 10_000;

/// Requests left (of the rate limits and of the daily quota) for the last
/// admission to count as room for the next request.
pub const MIN_HEADROOM: u64 = 2;

#[derive(Debug)]
pub struct KnownRoom {
    window: Duration,
    admitted: Mutex<HashMap<String, Instant>>,
}

impl KnownRoom {
    /// `window`: how long an admission counts as room; zero turns it off.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            admitted: Mutex::new(HashMap::new()),
        }
    }

    /// `ADMIT_ALONGSIDE_FLEET_SECS` (default 30; 0: always admit first).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let secs: u64 = env.parse_or("ADMIT_ALONGSIDE_FLEET_SECS", 30)?;
        if secs > 3_600 {
            return Err(ConfigError::new(
                "ADMIT_ALONGSIDE_FLEET_SECS",
                "must be at most 3600",
            ));
        }
        Ok(Self::new(Duration::from_secs(secs)))
    }

    /// Whether `caller` was admitted here within the window.
    pub fn has_room(&self, caller: &str) -> bool {
        !self.window.is_zero()
            && self
                .lock()
                .get(caller)
                .is_some_and(|at| at.elapsed() < self.window)
    }

    /// What admission decided for `caller`: `None` refused, else the requests
    /// left after this one (the least of every limit; 0 when unknown).
    pub fn record(&self, caller: &str, left: Option<u64>) {
        if self.window.is_zero() {
            return;
        }
        let mut callers = self.lock();
        if left.is_none_or(|left| left < MIN_HEADROOM) {
            callers.remove(caller);
            return;
        }
        let window = self.window;
        make_room(&mut callers, caller, MAX_CALLERS, |at| {
            at.elapsed() < window
        });
        callers.insert(caller.to_owned(), Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.admitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_follows_the_last_decision_within_the_window() {
        let room = KnownRoom::new(Duration::from_secs(30));
        assert!(!room.has_room("t/a"), "unknown callers wait for admission");
        room.record("t/a", Some(5));
        assert!(room.has_room("t/a"));
        assert!(!room.has_room("t/b"));
        room.record("t/a", None);
        assert!(!room.has_room("t/a"), "a refusal ends the room");
        room.record("t/a", Some(MIN_HEADROOM - 1));
        assert!(
            !room.has_room("t/a"),
            "a caller near a limit waits for admission"
        );
        room.record("t/a", Some(MIN_HEADROOM));
        assert!(room.has_room("t/a"));
    }

    #[test]
    fn room_expires_and_can_be_turned_off() {
        let room = KnownRoom::new(Duration::from_millis(1));
        room.record("t/a", Some(100));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!room.has_room("t/a"));
        let off = KnownRoom::new(Duration::ZERO);
        off.record("t/a", Some(100));
        assert!(!off.has_room("t/a"));
    }

    #[test]
    fn the_setting_is_bounded() {
        let env = |v: &str| {
            KnownRoom::from_env(&Env::new(&[("ADMIT_ALONGSIDE_FLEET_SECS", v)])).map(|r| r.window)
        };
        assert_eq!(env("0").unwrap(), Duration::ZERO);
        assert_eq!(env("30").unwrap(), Duration::from_secs(30));
        assert!(env("3601").is_err());
        assert!(env("soon").is_err());
    }
}
