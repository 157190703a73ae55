//! The client's settings and its upstreams, from the environment.

use std::sync::Arc;
use std::time::Duration;

use crate::aws::secrets::SecretToken;
use crate::config::{ConfigError, Env};
use crate::fleet::breaker::BreakerSettings;

/// One inference endpoint of the fleet: a stable name (used in logs, metrics and
/// readiness output) and its base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub base_url: String,
}

/// Parses `FLEET_ENDPOINTS`: `name=url` pairs in priority order, comma-separated,
/// e.g. `primary=http://10.0.0.10:8000,secondary=http://10.0.0.11:8000`.
pub fn parse_endpoints(variable: &str, raw: &[String]) -> Result<Vec<Endpoint>, ConfigError> {
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(raw.len());
    for item in raw {
        let Some((name, url)) = item.split_once('=') else {
            return Err(ConfigError::new(
                variable,
                format!("entry {item:?} is not of the form name=url"),
            ));
        };
        let (name, url) = (name.trim(), url.trim().trim_end_matches('/'));
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(ConfigError::new(
                variable,
                format!("endpoint name {name:?} must be letters, digits, '-' or '_'"),
            ));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(ConfigError::new(
                variable,
                format!("endpoint {name} has no http(s) URL: {url:?}"),
            ));
        }
        if endpoints.iter().any(|known| known.name == name) {
            return Err(ConfigError::new(
                variable,
                format!("endpoint name {name} appears twice"),
            ));
        }
        endpoints.push(Endpoint {
            name: name.to_owned(),
            base_url: url.to_owned(),
        });
    }
    Ok(endpoints)
}

/// Tuning of the client; every value can be set from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    pub attempt_timeout: Duration,
    /// Time to the first chunk for an empty prompt; longer prompts add
    /// `ttft_per_prompt_kib` per KiB of request body (prefill takes longer).
    pub ttft_timeout: Duration,
    pub ttft_per_prompt_kib: Duration,
    pub idle_timeout: Duration,
    pub deadline_margin: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub endpoint_concurrency: usize,
    pub total_concurrency: usize,
    pub retry_budget_percent: f32,
    pub retry_budget_min_per_sec: u32,
    pub health_cache: Duration,
    pub breaker: BreakerSettings,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(20),
            ttft_timeout: Duration::from_secs(5),
            ttft_per_prompt_kib: Duration::from_millis(25),
            idle_timeout: Duration::from_secs(10),
            deadline_margin: Duration::from_millis(300),
            max_attempts: 3,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(1),
            endpoint_concurrency: 32,
            total_concurrency: 64,
            retry_budget_percent: 0.1,
            retry_budget_min_per_sec: 1,
            health_cache: Duration::from_secs(5),
            breaker: BreakerSettings::default(),
        }
    }
}

impl FleetSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let ms = |d: Duration| d.as_millis() as u64;
        let settings = Self {
            attempt_timeout: env.millis_or(
                "FLEET_ATTEMPT_TIMEOUT_MS",
                ms(defaults.attempt_timeout),
                900_000,
            )?,
            ttft_timeout: env.millis_or(
                "FLEET_TTFT_TIMEOUT_MS",
                ms(defaults.ttft_timeout),
                120_000,
            )?,
            ttft_per_prompt_kib: env.millis_or(
                "FLEET_TTFT_PER_PROMPT_KIB_MS",
                ms(defaults.ttft_per_prompt_kib),
                10_000,
            )?,
            idle_timeout: env.millis_or(
                "FLEET_IDLE_TIMEOUT_MS",
                ms(defaults.idle_timeout),
                300_000,
            )?,
            deadline_margin: env.millis_or(
                "FLEET_DEADLINE_MARGIN_MS",
                ms(defaults.deadline_margin),
                10_000,
            )?,
            max_attempts: env.parse_or("FLEET_MAX_ATTEMPTS", defaults.max_attempts)?,
            backoff_base: env.millis_or(
                "FLEET_BACKOFF_BASE_MS",
                ms(defaults.backoff_base),
                10_000,
            )?,
            backoff_cap: env.millis_or("FLEET_BACKOFF_CAP_MS", ms(defaults.backoff_cap), 60_000)?,
            endpoint_concurrency: env
                .parse_or("FLEET_ENDPOINT_CONCURRENCY", defaults.endpoint_concurrency)?,
            total_concurrency: env
                .parse_or("FLEET_TOTAL_CONCURRENCY", defaults.total_concurrency)?,
            retry_budget_percent: env
                .parse_or("FLEET_RETRY_BUDGET_PERCENT", defaults.retry_budget_percent)?,
            retry_budget_min_per_sec: env.parse_or(
                "FLEET_RETRY_BUDGET_MIN_PER_SEC",
                defaults.retry_budget_min_per_sec,
            )?,
            health_cache: env.millis_or(
                "FLEET_HEALTH_CACHE_MS",
                ms(defaults.health_cache),
                600_000,
            )?,
            breaker: BreakerSettings {
                consecutive_failures: env.parse_or(
                    "BREAKER_CONSECUTIVE_FAILURES",
                    defaults.breaker.consecutive_failures,
                )?,
                failure_rate: env
                    .parse_or("BREAKER_FAILURE_RATE", defaults.breaker.failure_rate)?,
                window: env.parse_or("BREAKER_WINDOW", defaults.breaker.window)?,
                min_calls: env.parse_or("BREAKER_MIN_CALLS", defaults.breaker.min_calls)?,
                cool_down: env.millis_or(
                    "BREAKER_COOL_DOWN_MS",
                    ms(defaults.breaker.cool_down),
                    600_000,
                )?,
                half_open_probes: env.parse_or(
                    "BREAKER_HALF_OPEN_PROBES",
                    defaults.breaker.half_open_probes,
                )?,
            },
        };
        settings.validate()?;
        Ok(settings)
    }

    /// How long an attempt may wait for its first chunk with a request body of
    /// `body_bytes`: the base, plus the per-KiB allowance, never past `cap`.
    pub fn first_chunk_timeout(&self, body_bytes: usize, cap: Duration) -> Duration {
        let kib = u32::try_from(body_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        self.ttft_timeout
            .saturating_add(self.ttft_per_prompt_kib.saturating_mul(kib))
            .min(cap)
    }

    /// Bounds that would otherwise panic (TpsBudget) or make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&str, bool, &str); 7] = [
            (
                "FLEET_MAX_ATTEMPTS",
                (1..=10).contains(&self.max_attempts),
                "must be between 1 and 10",
            ),
            (
                "FLEET_ENDPOINT_CONCURRENCY",
                self.endpoint_concurrency >= 1,
                "must be at least 1",
            ),
            (
                "FLEET_TOTAL_CONCURRENCY",
                self.total_concurrency >= 1,
                "must be at least 1",
            ),
            (
                "FLEET_RETRY_BUDGET_PERCENT",
                (0.0..=10.0).contains(&self.retry_budget_percent),
                "must be between 0 and 10 (a share: 0.1 is 10 %)",
            ),
            (
                "FLEET_RETRY_BUDGET_MIN_PER_SEC",
                self.retry_budget_min_per_sec <= 1000,
                "must be at most 1000",
            ),
            (
                "BREAKER_FAILURE_RATE",
                self.breaker.failure_rate > 0.0 && self.breaker.failure_rate <= 1.0,
                "must be in (0, 1]",
            ),
            (
                "BREAKER_HALF_OPEN_PROBES",
                self.breaker.half_open_probes >= 1
                    && self.breaker.consecutive_failures >= 1
                    && self.breaker.window >= 1,
                "breaker counts must be at least 1",
            ),
        ];
        for (variable, ok, problem) in checks {
            if !ok {
                return Err(ConfigError::new(variable, problem));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    Fleet,
    Fallback,
}

/// One place the client can send a request to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub endpoint: Endpoint,
    pub kind: UpstreamKind,
    /// Model name to send instead of the caller's (the fallback names models differently).
    pub model_override: Option<String>,
    pub credentials: Option<Arc<SecretToken>>,
}

/// Builds the ordered upstream list from the environment: `FLEET_ENDPOINTS`
/// (priority order), then `FALLBACK_ENDPOINT` (`name=url`) if set.
pub fn upstreams_from_env(
    env: &Env<'_>,
    secrets: Option<&aws_sdk_secretsmanager::Client>,
) -> Result<Vec<Upstream>, ConfigError> {
    let fleet = parse_endpoints("FLEET_ENDPOINTS", &env.list("FLEET_ENDPOINTS"))?;
    if fleet.is_empty() {
        return Err(ConfigError::new(
            "FLEET_ENDPOINTS",
            "is required: name=url pairs, comma-separated",
        ));
    }
    let secret = |variable: &str| -> Result<Option<Arc<SecretToken>>, ConfigError> {
        match (env.optional(variable), secrets) {
            (None, _) => Ok(None),
            (Some(id), Some(client)) => Ok(Some(Arc::new(SecretToken::new(
                client.clone(),
                id,
                Duration::from_secs(300),
            )))),
            (Some(_), None) => Err(ConfigError::new(
                variable,
                "is set but no Secrets Manager client was given",
            )),
        }
    };
    let fleet_token = secret("FLEET_TOKEN_SECRET")?;
    let mut upstreams: Vec<Upstream> = fleet
        .into_iter()
        .map(|endpoint| Upstream {
            endpoint,
            kind: UpstreamKind::Fleet,
            model_override: None,
            credentials: fleet_token.clone(),
        })
        .collect();
    if let Some(raw) = env.optional("FALLBACK_ENDPOINT") {
        let mut fallback = parse_endpoints("FALLBACK_ENDPOINT", &[raw])?;
        if let Some(endpoint) = fallback.pop() {
            if upstreams.iter().any(|u| u.endpoint.name == endpoint.name) {
                return Err(ConfigError::new(
                    "FALLBACK_ENDPOINT",
                    "its name is already used by a fleet endpoint",
                ));
            }
            upstreams.push(Upstream {
                endpoint,
                kind: UpstreamKind::Fallback,
                model_override: env.optional("FALLBACK_MODEL"),
                credentials: secret("FALLBACK_API_KEY_SECRET")?,
            });
        }
    }
    Ok(upstreams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        assert!(FleetSettings::default().validate().is_ok());
        let env = [("FLEET_MAX_ATTEMPTS", "0")];
        assert_eq!(
            FleetSettings::from_env(&Env::new(&env))
                .unwrap_err()
                .variable,
            "FLEET_MAX_ATTEMPTS"
        );
        let env = [("FLEET_RETRY_BUDGET_PERCENT", "-1")];
        assert_eq!(
            FleetSettings::from_env(&Env::new(&env))
                .unwrap_err()
                .variable,
            "FLEET_RETRY_BUDGET_PERCENT"
        );
    }

    #[test]
    fn the_first_chunk_may_take_longer_for_a_longer_prompt_up_to_the_cap() {
        let settings = FleetSettings {
            ttft_timeout: Duration::from_millis(200),
            ttft_per_prompt_kib: Duration::from_millis(10),
            ..FleetSettings::default()
        };
        let cap = Duration::from_secs(1);
        assert_eq!(
            settings.first_chunk_timeout(0, cap),
            Duration::from_millis(200)
        );
        assert_eq!(
            settings.first_chunk_timeout(1, cap),
            Duration::from_millis(210)
        );
        assert_eq!(
            settings.first_chunk_timeout(10 * 1024, cap),
            Duration::from_millis(300)
        );
        assert_eq!(settings.first_chunk_timeout(usize::MAX, cap), cap);
    }

    #[test]
    fn upstreams_keep_priority_and_append_the_fallback() {
        let env = [
            (
                "FLEET_ENDPOINTS",
                "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
            ),
            ("FALLBACK_ENDPOINT", "openrouter=https://openrouter.ai/api"),
            ("FALLBACK_MODEL", "meta-llama/llama-3.1-8b-instruct"),
        ];
        let upstreams = upstreams_from_env(&Env::new(&env), None).unwrap();
        let names: Vec<_> = upstreams.iter().map(|u| u.endpoint.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "openrouter"]);
        assert_eq!(upstreams[2].kind, UpstreamKind::Fallback);
        assert_eq!(
            upstreams[2].model_override.as_deref(),
            Some("meta-llama/llama-3.1-8b-instruct")
        );
        let env = [
            ("FLEET_ENDPOINTS", "a=http://127.0.0.1:1"),
            ("FLEET_TOKEN_SECRET", "s"),
        ];
        assert!(upstreams_from_env(&Env::new(&env), None).is_err());
    }

    #[test]
    fn endpoints_keep_their_order_and_names() {
        let raw = vec![
            "primary=http://127.0.0.1:8101/".to_owned(),
            "secondary=https://fleet-2.internal:8000".to_owned(),
        ];
        let endpoints = parse_endpoints("FLEET_ENDPOINTS", &raw).unwrap();
        assert_eq!(endpoints[0].name, "primary");
        assert_eq!(endpoints[0].base_url, "http://127.0.0.1:8101");
        assert_eq!(endpoints[1].name, "secondary");
    }

    #[test]
    fn endpoints_reject_bad_entries() {
        for bad in [
            "http://no-name:1",
            "=http://x:1",
            "a b=http://x:1",
            "a=ftp://x",
        ] {
            let raw = vec![bad.to_owned()];
            assert!(parse_endpoints("FLEET_ENDPOINTS", &raw).is_err(), "{bad}");
        }
        let twice = vec!["a=http://x:1000".to_owned(), "a=http://y:1000".to_owned()];
        assert!(parse_endpoints("FLEET_ENDPOINTS", &twice).is_err());
    }
}
