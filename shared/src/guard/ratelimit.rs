//! Rate limits that hold across Lambda instances: GCRA with its state in DynamoDB.
//!
//! Process-local limiters (governor, tower's) count per Lambda instance, so N
//! instances would admit N times the limit; the state has to be shared. Each key
//! has one item holding its theoretical arrival time (TAT); a decision is one
//! conditional `UpdateItem` (see [`Limiter::check`]), two when a bucket turns
//! from idle to busy. Because a TAT only grows, a denial computed from a TAT this
//! instance saw is always right, so repeated denials cost no round trip at all.
//!
//! When DynamoDB cannot be reached the limiter fails open (logged): a limiter
//! outage must not become an API outage.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use tokio::sync::Mutex;

use crate::config::{ConfigError, Env};

const MAX_ATTEMPTS: usize = 4;
const MAX_CACHED_KEYS: usize = 10_000;

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
    let interval = rule.interval_us();
    let tolerance = rule.tolerance_us();
    let tat = stored_tat.unwrap_or(0).max(now);
    let new_tat = tat + interval;
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
    let decision = Decision {
        allowed: true,
        limit: rule.burst,
        remaining: ((tolerance - ahead) / interval) as u32,
        reset_secs: ahead.div_ceil(1_000_000),
        retry_after_secs: 0,
    };
    (Some(new_tat), decision)
}

#[derive(Debug)]
pub struct Limiter {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    /// The last TAT this instance saw per key: a lower bound of the stored one.
    seen: Mutex<HashMap<String, u64>>,
}

impl Limiter {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self {
            dynamodb,
            table,
            seen: Mutex::new(HashMap::new()),
        }
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
    /// proves a denial. Usually one round trip, two when a bucket turns busy.
    pub async fn check(&self, key: &str, rule: Rule) -> Decision {
        let interval = rule.interval_us();
        let tolerance = rule.tolerance_us();
        let mut known = self.seen.lock().await.get(key).copied();
        let mut room = None;
        for _ in 0..MAX_ATTEMPTS {
            let now = now_us();
            let (admit, decision) = decide(known, now, rule);
            if admit.is_none() {
                // `known` is a lower bound of the stored TAT: the denial stands.
                return decision;
            }
            room = Some(decision);
            let busy = known.is_some_and(|tat| tat >= now);
            let outcome = if busy {
                self.write(
                    key,
                    Write::Increment {
                        now,
                        limit: now + tolerance - interval,
                        interval,
                    },
                )
                .await
            } else {
                self.write(
                    key,
                    Write::Start {
                        now,
                        tat: now + interval,
                    },
                )
                .await
            };
            match outcome {
                Ok(new_tat) => {
                    self.remember(key, new_tat).await;
                    let ahead = new_tat.saturating_sub(now);
                    return Decision {
                        allowed: true,
                        limit: rule.burst,
                        remaining: (tolerance.saturating_sub(ahead) / interval) as u32,
                        reset_secs: ahead.div_ceil(1_000_000),
                        retry_after_secs: 0,
                    };
                }
                Err(WriteError::Moved(current)) => {
                    if let Some(tat) = current {
                        self.remember(key, tat).await;
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

    async fn remember(&self, key: &str, tat: u64) {
        let mut seen = self.seen.lock().await;
        if seen.len() >= MAX_CACHED_KEYS && !seen.contains_key(key) {
            // Keys of long-gone callers: forgetting one only costs a round trip.
            let now = now_us();
            seen.retain(|_, tat| *tat > now);
            if seen.len() >= MAX_CACHED_KEYS {
                seen.clear();
            }
        }
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
            limiter: Limiter::new(dynamodb, env.required("STATE_TABLE")?),
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
