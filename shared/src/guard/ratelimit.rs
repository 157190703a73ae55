//! Rate limits that hold across Lambda instances: GCRA with its state in DynamoDB.
//!
//! Process-local limiters (governor, tower's) count per Lambda instance, so N
//! instances would admit N times the limit; the state has to be shared. Each key
//! has one item holding its theoretical arrival time (TAT); a decision is one
//! conditional `UpdateItem` (see [`Limiter::check`]), two when a bucket turns
//! from idle to busy. Because a TAT only grows, a denial computed from a TAT this
//! instance saw is always right, so repeated denials cost no round trip at all.
//!
//! A caller that keeps coming back takes a lease with its write: as many
//! requests as it made here in the last lease time (`RATE_LIMIT_LEASE_MS`,
//! 1 s), at most a tenth of the burst and [`MAX_LEASE`], are taken from the
//! shared bucket at once and admitted here without a round trip within the
//! lease time. Once half of a lease is used, the next is taken on a task of its
//! own, after the request's answer where the handler marks it (api-chat; see
//! `background`), so a steady caller waits neither for its bucket nor for the
//! refill's write. Every admission is still a token taken from the one shared
//! TAT, so the total admitted across instances never exceeds GCRA's; what a
//! lease changes is *when* a token is used: within two lease times of being
//! taken, so a window may see up to that much more of the sustained rate than
//! GCRA alone would allow, and an instance whose caller stops wastes what it
//! still holds (about one lease time of the caller's own rate). Near the limit,
//! where a lease no longer fits, every request writes alone, as without leases.
//!
//! When DynamoDB cannot be reached the limiter fails open (logged): a limiter
//! outage must not become an API outage.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use tokio::sync::Mutex;

use crate::bounded::make_room;
use crate::config::{ConfigError, Env};

const MAX_ATTEMPTS: usize = 4;
const MAX_CACHED_KEYS: usize = 10_000;

/// The most requests one write takes for this instance.
pub const MAX_LEASE: u64 = 16;

/// `per_minute` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rule {
    fn interval_us(self) -> u64 {
        60_000_000 / u64::from(self.per_minute.max(1))
    }

    fn tolerance_us(self) -> u64 {
        self.interval_us() * u64::from(self.burst.max(1))
    }

    /// Requests one write takes for a returning caller: a tenth of the burst,
    /// between 1 (no lease) and [`MAX_LEASE`].
    pub fn lease(self) -> u64 {
        (u64::from(self.burst) / 10).clamp(1, MAX_LEASE)
    }
}

/// The outcome, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// When denied: seconds until one request would be admitted.
    pub retry_after_secs: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// GCRA step: from the stored TAT (or none), `now` and the rule, the new TAT if
/// admitted and the decision.
pub fn decide(stored_tat: Option<u64>, now: u64, rule: Rule) -> (Option<u64>, Decision) {
    decide_n(stored_tat, now, rule, 1)
}

/// [`decide`] for `n` requests at once (a lease): admitted only if all fit.
fn decide_n(stored_tat: Option<u64>, now: u64, rule: Rule, n: u64) -> (Option<u64>, Decision) {
    let interval = rule.interval_us();
    let tolerance = rule.tolerance_us();
    let tat = stored_tat.unwrap_or(0).max(now);
    let new_tat = tat + interval * n;
    let ahead = new_tat - now;
    if ahead > tolerance {
        let wait = ahead - tolerance;
        let decision = Decision {
            allowed: false,
            limit: rule.burst,
            remaining: 0,
            reset_secs: (tat - now).div_ceil(1_000_000),
            retry_after_secs: wait.div_ceil(1_000_000).max(1),
        };
        return (None, decision);
    }
    (Some(new_tat), admitted(rule, ahead, n - 1))
}

/// The decision for an admitted request whose write left the TAT `ahead` of
/// now, with `leased` more requests held by this instance.
fn admitted(rule: Rule, ahead: u64, leased: u64) -> Decision {
    let interval = rule.interval_us();
    let room = rule.tolerance_us().saturating_sub(ahead) / interval + leased;
    Decision {
        allowed: true,
        limit: rule.burst,
        remaining: u32::try_from(room).unwrap_or(u32::MAX).min(rule.burst),
        reset_secs: ahead.div_ceil(1_000_000),
        retry_after_secs: 0,
    }
}

/// Requests this instance took from a bucket and has not used yet.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Requests left to admit without a write.
    left: u64,
    /// The TAT the write left (a lower bound of the stored one).
    tat: u64,
    /// When the lease was taken (the caller's last write here).
    taken_us: u64,
    /// A refill is on the wire.
    refilling: bool,
    /// The caller's requests here in the current window of one lease time
    /// (since `window_us`) and in the window before: its demand, which sizes
    /// the next lease, so a slow caller leases little and wastes little if it
    /// stops.
    window_us: u64,
    in_window: u64,
    in_last_window: u64,
}

impl Lease {
    fn first(now: u64) -> Self {
        Self {
            left: 0,
            tat: 0,
            taken_us: 0,
            refilling: false,
            window_us: now,
            in_window: 0,
            in_last_window: 0,
        }
    }

    /// Counts one request of the caller at `now`.
    fn count(&mut self, now: u64, ttl: u64) {
        let age = now.saturating_sub(self.window_us);
        if age >= ttl {
            self.in_last_window = if age < 2 * ttl { self.in_window } else { 0 };
            self.in_window = 0;
            self.window_us = now;
        }
        self.in_window += 1;
    }

    /// The next lease's size: the caller's requests per lease time here, at
    /// most the rule's lease.
    fn demand(&self, rule: Rule) -> u64 {
        self.in_window
            .max(self.in_last_window)
            .clamp(1, rule.lease())
    }
}

#[derive(Debug)]
pub struct Limiter {
    state: std::sync::Arc<State>,
    /// How long leased requests may be used, and how recent a caller's last
    /// write here must be for the next one to take a lease; 0: no leases.
    lease_ttl_us: u64,
}

/// What a limiter shares with its lease refills.
#[derive(Debug)]
struct State {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    /// The last TAT this instance saw per key: a lower bound of the stored one.
    seen: Mutex<HashMap<String, u64>>,
    /// The last lease per key, used or not (its time tells a returning caller).
    leases: std::sync::Mutex<HashMap<String, Lease>>,
}

/// `RATE_LIMIT_LEASE_MS` (default 1000, at most 10000; 0 turns leases off).
pub fn lease_ttl_from_env(env: &Env<'_>) -> Result<std::time::Duration, ConfigError> {
    let ms: u64 = env.parse_or("RATE_LIMIT_LEASE_MS", 1_000)?;
    if ms > 10_000 {
        return Err(ConfigError::new(
            "RATE_LIMIT_LEASE_MS",
            format!("must be at most 10000 milliseconds, got {ms}"),
        ));
    }
    Ok(std::time::Duration::from_millis(ms))
}

impl Limiter {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self {
            state: std::sync::Arc::new(State {
                dynamodb,
                table,
                seen: Mutex::new(HashMap::new()),
                leases: std::sync::Mutex::new(HashMap::new()),
            }),
            lease_ttl_us: 1_000_000,
        }
    }

    /// Sets the lease time (zero: every admission writes).
    pub fn with_lease_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.lease_ttl_us = u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX);
        self
    }

    /// Decides one request for `key` under `rule`.
    ///
    /// Two atomic writes, chosen by what this instance last saw:
    /// - busy bucket (TAT ahead of now): `tat = tat + interval` if it stays within
    ///   the tolerance; concurrent callers on any instance all succeed until the
    ///   limit, with no compare-and-set contention;
    /// - idle or unknown bucket: `tat = now + interval` if the stored TAT is in the
    ///   past (or absent), so idle time never banks more than the burst.
    ///
    /// A failed condition returns the stored TAT, which picks the other write or
    /// proves a denial. Usually one round trip, two when a bucket turns busy, none
    /// while this instance holds a lease for the key (see the module's notes).
    pub async fn check(&self, key: &str, rule: Rule) -> Decision {
        let demand = match self.use_lease(key, rule) {
            Ok((decision, refill)) => {
                if let Some(take) = refill {
                    self.refill(key, rule, take);
                }
                return decision;
            }
            Err(demand) => demand,
        };
        let mut known = self.state.seen.lock().await.get(key).copied();
        let mut room = None;
        for _ in 0..MAX_ATTEMPTS {
            let now = now_us();
            let (admit, decision) = decide(known, now, rule);
            if admit.is_none() {
                // `known` is a lower bound of the stored TAT: the denial stands.
                return decision;
            }
            room = Some(decision);
            // A lease only where it fits in what this instance last saw; the
            // write's condition checks the same against the stored TAT.
            let take = match demand {
                lease if lease > 1 && decide_n(known, now, rule, lease).0.is_some() => lease,
                _ => 1,
            };
            match self
                .state
                .write(key, Write::taking(known, now, rule, take))
                .await
            {
                Ok(new_tat) => {
                    self.state.remember(key, new_tat).await;
                    self.keep_lease(key, take - 1, new_tat, now);
                    return admitted(rule, new_tat.saturating_sub(now), take - 1);
                }
                Err(WriteError::Moved(current)) => {
                    if let Some(tat) = current {
                        self.state.remember(key, tat).await;
                    }
                    known = current;
                }
                Err(WriteError::Unavailable(error)) => {
                    tracing::error!(%error, key, "rate limit state unavailable; admitting");
                    return decision;
                }
            }
        }
        // Contention alone is no evidence of excess: the stored TAT, as last read,
        // still leaves room (a full bucket is denied above without a write). Under
        // a burst of concurrent requests on a fast rule, the TAT flips between past
        // and future between round trips and every write can lose; admit then.
        if let Some(decision) = room {
            tracing::warn!(
                key,
                "rate limit state kept moving; admitting on the last known room"
            );
            return decision;
        }
        tracing::warn!(key, "rate limit state kept moving; refusing");
        Decision {
            allowed: false,
            limit: rule.burst,
            remaining: 0,
            reset_secs: 1,
            retry_after_secs: 1,
        }
    }

    /// Admits from this instance's lease on `key` if one is left and fresh,
    /// telling how much to refill it by once half of it is used (none while a
    /// refill is on the wire); otherwise the size of the lease the request's
    /// write may take (1, none, for a caller not seen here within the lease time).
    fn use_lease(&self, key: &str, rule: Rule) -> Result<(Decision, Option<u64>), u64> {
        let ttl = self.lease_ttl_us;
        if ttl == 0 {
            return Err(1);
        }
        let now = now_us();
        let mut leases = self.state.leases();
        let Some(lease) = leases.get_mut(key) else {
            return Err(1);
        };
        lease.count(now, ttl);
        if now.saturating_sub(lease.taken_us) >= ttl {
            lease.left = 0;
        }
        let demand = lease.demand(rule);
        if lease.left == 0 {
            return Err(demand);
        }
        lease.left -= 1;
        let refill = !lease.refilling && demand > 1 && lease.left <= demand / 2;
        lease.refilling |= refill;
        let decision = admitted(rule, lease.tat.saturating_sub(now), lease.left);
        Ok((decision, refill.then_some(demand)))
    }

    /// Takes the next lease for `key` on a task of its own while the current
    /// one still admits, so a steady caller never waits for its bucket's write.
    /// Only where a whole lease fits; any failure leaves the next request to
    /// write for itself. In Lambda a refill the invocation's end freezes goes on
    /// when the instance thaws, and its lease is only used within the lease
    /// time of the moment it was asked for.
    fn refill(&self, key: &str, rule: Rule, take: u64) {
        use tracing::Instrument;
        let state = self.state.clone();
        let key = key.to_owned();
        // Half the lease is left to admit from meanwhile; where answers keep
        // overlapping, the refill goes ahead after a quarter of the lease time
        // (at most a second).
        let bound = std::time::Duration::from_micros(self.lease_ttl_us / 4)
            .min(std::time::Duration::from_secs(1));
        let task = async move {
            let now = now_us();
            let known = state.seen.lock().await.get(&key).copied();
            let taken = if decide_n(known, now, rule, take).0.is_none() {
                None
            } else {
                match state
                    .write(&key, Write::taking(known, now, rule, take))
                    .await
                {
                    Ok(tat) => {
                        state.remember(&key, tat).await;
                        Some(tat)
                    }
                    Err(WriteError::Moved(current)) => {
                        if let Some(tat) = current {
                            state.remember(&key, tat).await;
                        }
                        None
                    }
                    Err(WriteError::Unavailable(error)) => {
                        tracing::warn!(%error, key, "refilling a rate-limit lease failed");
                        None
                    }
                }
            };
            let mut leases = state.leases();
            if let Some(lease) = leases.get_mut(&key) {
                lease.refilling = false;
                if let Some(tat) = taken {
                    lease.left += take;
                    lease.tat = lease.tat.max(tat);
                    lease.taken_us = now;
                }
            }
        };
        // Background work steps aside: it starts once the request that asked
        // for it has its answer where the handler marks it, else after one
        // pass of the scheduler (see `background`). A span of its own: a
        // refill may outlive the request, whose span (and trace) must end
        // with it.
        crate::background::spawn_after_answers(
            bound,
            task.instrument(tracing::info_span!(parent: None, "rate_limit_refill")),
        );
    }

    /// How many lease refills are waiting or on the wire (tests, benches).
    pub fn refills_in_flight(&self) -> usize {
        self.state
            .leases()
            .values()
            .filter(|lease| lease.refilling)
            .count()
    }

    /// Whether a lease refill for `key` is on the wire (tests, diagnostics).
    pub fn refilling(&self, key: &str) -> bool {
        self.state
            .leases()
            .get(key)
            .is_some_and(|lease| lease.refilling)
    }

    /// After a write at `now` that left `tat`: `left` more requests leased.
    fn keep_lease(&self, key: &str, left: u64, tat: u64, now: u64) {
        let ttl = self.lease_ttl_us;
        if ttl == 0 {
            return;
        }
        let mut leases = self.state.leases();
        // Callers not seen for two lease times have no demand left to keep.
        make_room(&mut leases, key, MAX_CACHED_KEYS, |l| {
            now.saturating_sub(l.window_us) < 2 * ttl
        });
        let lease = leases.entry(key.to_owned()).or_insert_with(|| {
            let mut first = Lease::first(now);
            first.count(now, ttl);
            first
        });
        lease.left = left;
        lease.tat = tat;
        lease.taken_us = now;
    }
}

impl State {
    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn remember(&self, key: &str, tat: u64) {
        let mut seen = self.seen.lock().await;
        // Keys of long-gone callers: forgetting one only costs a round trip.
        let now = now_us();
        make_room(&mut seen, key, MAX_CACHED_KEYS, |tat| *tat > now);
        let entry = seen.entry(key.to_owned()).or_insert(tat);
        *entry = (*entry).max(tat);
    }

    async fn write(&self, key: &str, write: Write) -> Result<u64, WriteError> {
        let request = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("ratelimit#{key}")))
            .key("sk", AttributeValue::S("gcra".to_owned()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let n = |v: u64| AttributeValue::N(v.to_string());
        let request = match write {
            Write::Increment {
                now,
                limit,
                interval,
            } => request
                .update_expression("SET tat = tat + :interval, expires_at = :expires")
                .condition_expression("tat >= :now AND tat <= :limit")
                .expression_attribute_values(":interval", n(interval))
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":limit", n(limit))
                .expression_attribute_values(":expires", n((limit + interval) / 1_000_000 + 3_600)),
            Write::Start { now, tat } => request
                .update_expression("SET tat = :tat, expires_at = :expires")
                .condition_expression("attribute_not_exists(tat) OR tat < :now")
                .expression_attribute_values(":tat", n(tat))
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":expires", n(tat / 1_000_000 + 3_600)),
        };
        match request.send().await {
            Ok(output) => output
                .attributes()
                .and_then(|item| item.get("tat"))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| WriteError::Unavailable("the update returned no TAT".to_owned())),
            Err(error) => match error.as_service_error() {
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(failed)) => {
                    let current = failed
                        .item()
                        .and_then(|item| item.get("tat"))
                        .and_then(|v| v.as_n().ok())
                        .and_then(|n| n.parse().ok());
                    Err(WriteError::Moved(current))
                }
                _ => Err(WriteError::Unavailable(crate::aws::dynamo::error_text(error))),
            },
        }
    }
}

enum Write {
    Increment { now: u64, limit: u64, interval: u64 },
    Start { now: u64, tat: u64 },
}

impl Write {
    /// The write that takes `take` requests at `now`, chosen by what this
    /// instance last saw (`known`): an increment of a busy bucket, or a fresh
    /// start of an idle or unknown one.
    fn taking(known: Option<u64>, now: u64, rule: Rule, take: u64) -> Self {
        let interval = rule.interval_us() * take;
        if known.is_some_and(|tat| tat >= now) {
            Self::Increment {
                now,
                limit: now + rule.tolerance_us() - interval,
                interval,
            }
        } else {
            Self::Start {
                now,
                tat: now + interval,
            }
        }
    }
}

enum WriteError {
    /// The condition failed; this is the stored TAT (none: no item).
    Moved(Option<u64>),
    Unavailable(String),
}

/// The limits every API request passes: per client IP, and per principal on
/// protected routes.
#[derive(Debug)]
pub struct RateLimits {
    pub limiter: Limiter,
    pub per_ip: Rule,
    pub per_principal: Rule,
}

impl RateLimits {
    /// `RATE_LIMIT_IP_PER_MIN` (1200), `RATE_LIMIT_IP_BURST` (120),
    /// `RATE_LIMIT_PRINCIPAL_PER_MIN` (600), `RATE_LIMIT_PRINCIPAL_BURST` (60);
    /// the state lives in `STATE_TABLE`.
    pub fn from_env(
        env: &Env<'_>,
        dynamodb: aws_sdk_dynamodb::Client,
    ) -> Result<Self, ConfigError> {
        let rule = |rate: &str,
                    default_rate: u32,
                    burst: &str,
                    default_burst: u32|
         -> Result<Rule, ConfigError> {
            let rule = Rule {
                per_minute: env.parse_or(rate, default_rate)?,
                burst: env.parse_or(burst, default_burst)?,
            };
            if rule.per_minute == 0 || rule.per_minute > 6_000_000 {
                return Err(ConfigError::new(rate, "must be between 1 and 6000000"));
            }
            if rule.burst == 0 {
                return Err(ConfigError::new(burst, "must be at least 1"));
            }
            Ok(rule)
        };
        Ok(Self {
            limiter: Limiter::new(dynamodb, env.required("STATE_TABLE")?)
                .with_lease_ttl(lease_ttl_from_env(env)?),
            per_ip: rule("RATE_LIMIT_IP_PER_MIN", 1200, "RATE_LIMIT_IP_BURST", 120)?,
            per_principal: rule(
                "RATE_LIMIT_PRINCIPAL_PER_MIN",
                600,
                "RATE_LIMIT_PRINCIPAL_BURST",
                60,
            )?,
        })
    }

    /// Both checks at once (one round trip of latency); the stricter one speaks.
    pub async fn check(&self, ip: &str, principal: Option<&str>) -> Decision {
        let ip_key = format!("ip:{ip}");
        let by_ip = self.limiter.check(&ip_key, self.per_ip);
        match principal {
            None => by_ip.await,
            Some(subject) => {
                let principal_key = format!("sub:{subject}");
                let by_principal = self.limiter.check(&principal_key, self.per_principal);
                let (a, b) = futures_util::join!(by_ip, by_principal);
                stricter(a, b)
            }
        }
    }
}

/// A rate-limit check already on the wire, for routes whose handler makes its
/// own admission write (the quota reservation): both travel in the same round
/// trip instead of one after the other. Started before the handler parses
/// anything, so a malformed request still pays its rate limit; the handler
/// awaits [`Self::decision`] before it calls the fleet, and the pipeline awaits
/// it after every handler, which turns any answer into a 429 when denied.
#[derive(Clone)]
pub struct PendingDecision(
    futures_util::future::Shared<futures_util::future::BoxFuture<'static, Decision>>,
);

impl std::fmt::Debug for PendingDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingDecision")
    }
}

impl PendingDecision {
    /// Spawns [`RateLimits::check`] at once (on the current tracing span).
    pub fn start(
        limits: std::sync::Arc<RateLimits>,
        ip: String,
        principal: Option<String>,
    ) -> Self {
        use futures_util::FutureExt;
        use tracing::Instrument;
        let task = tokio::spawn(
            async move { limits.check(&ip, principal.as_deref()).await }
                .instrument(tracing::Span::current()),
        );
        let decision = async move {
            task.await.unwrap_or_else(|error| {
                // The check never panics; if its task did, admitting is what a
                // storage failure does too (rate limits fail open).
                tracing::error!(%error, "the rate-limit check was lost; admitting");
                Decision {
                    allowed: true,
                    limit: 0,
                    remaining: 0,
                    reset_secs: 0,
                    retry_after_secs: 0,
                }
            })
        };
        Self(decision.boxed().shared())
    }

    pub async fn decision(&self) -> Decision {
        self.0.clone().await
    }
}

fn stricter(a: Decision, b: Decision) -> Decision {
    match (a.allowed, b.allowed) {
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            if a.retry_after_secs >= b.retry_after_secs {
                a
            } else {
                b
            }
        }
        (true, true) => {
            if a.remaining <= b.remaining {
                a
            } else {
                b
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        per_minute: 60,
        burst: 5,
    };

    #[test]
    fn a_burst_is_admitted_then_the_sustained_rate() {
        let mut tat = None;
        let start = 1_000_000_000_000;
        let mut admitted = 0;
        for _ in 0..10 {
            let (next, decision) = decide(tat, start, RULE);
            if decision.allowed {
                admitted += 1;
                tat = next;
            }
        }
        assert_eq!(admitted, 5, "the burst");
        let (_, denied) = decide(tat, start, RULE);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_secs, 1);
        // One interval later exactly one more is admitted.
        let (next, later) = decide(tat, start + 1_000_000, RULE);
        assert!(later.allowed && next.is_some());
        let (_, again) = decide(next, start + 1_000_000, RULE);
        assert!(!again.allowed);
    }

    #[test]
    fn idle_time_does_not_bank_more_than_the_burst() {
        let start = 1_000_000_000_000;
        let (tat, _) = decide(None, start, RULE);
        let mut tat = tat;
        let much_later = start + 3_600_000_000;
        let mut admitted = 0;
        for _ in 0..20 {
            let (next, decision) = decide(tat, much_later, RULE);
            if decision.allowed {
                admitted += 1;
                tat = next;
            }
        }
        assert_eq!(admitted, 5);
    }

    #[test]
    fn a_lease_is_a_tenth_of_the_burst_and_fits_whole_or_not_at_all() {
        assert_eq!(RULE.lease(), 1, "small bursts take no lease");
        let rule = |burst| Rule {
            per_minute: 60,
            burst,
        };
        assert_eq!(rule(60).lease(), 6);
        assert_eq!(rule(100_000).lease(), MAX_LEASE);
        let start = 1_000_000_000_000;
        let (tat, first) = decide_n(None, start, rule(60), 6);
        assert_eq!(tat, Some(start + 6_000_000));
        assert_eq!(first.remaining, 59, "the leased five still count as room");
        // 57 taken: three left, a lease of six no longer fits, one still does.
        let full = Some(start + 57_000_000);
        assert_eq!(decide_n(full, start, rule(60), 6).0, None);
        assert_eq!(
            decide_n(full, start, rule(60), 1).0,
            Some(start + 58_000_000)
        );
    }

    #[test]
    fn a_lease_follows_the_callers_demand_per_lease_time() {
        let rule = Rule {
            per_minute: 600,
            burst: 100,
        };
        let ttl = 1_000_000;
        let mut lease = Lease::first(0);
        lease.count(0, ttl);
        assert_eq!(lease.demand(rule), 1, "a caller seen once leases nothing");
        for at in 1..=6 {
            lease.count(at * 100_000, ttl);
        }
        assert_eq!(lease.demand(rule), 7);
        for at in 0..30 {
            lease.count(700_000 + at * 1_000, ttl);
        }
        assert_eq!(lease.demand(rule), rule.lease(), "at most the rule's lease");
        // A window later the last window's demand still counts; two later, not.
        lease.count(1_800_000, ttl);
        assert_eq!(lease.demand(rule), rule.lease());
        lease.count(4_000_000, ttl);
        assert_eq!(lease.demand(rule), 1);
    }

    #[test]
    fn remaining_counts_down_and_the_stricter_decision_wins() {
        let start = 1_000_000_000_000;
        let (tat, first) = decide(None, start, RULE);
        assert_eq!(first.remaining, 4);
        let (_, second) = decide(tat, start, RULE);
        assert_eq!(second.remaining, 3);
        let deny = Decision {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset_secs: 3,
            retry_after_secs: 3,
        };
        assert_eq!(stricter(first, deny), deny);
        assert_eq!(stricter(first, second), second);
    }
}
