//! Per-function HTTP settings: allowed origins, body limit, authentication,
//! rate limits, the bulkhead, the latency SLI threshold.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Authenticator;
use crate::config::{ConfigError, Env};
use crate::guard::bulkhead::Bulkhead;
use crate::guard::ratelimit::RateLimits;

const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// Per-function HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// The function's name, used as the `Service` metric dimension.
    pub service: &'static str,
    /// Exact origins (`https://app.example.com`) allowed to call from a browser.
    pub cors_allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    /// Time budget when no Lambda deadline is known (tests, local tools).
    pub default_budget: Duration,
    /// Verifies bearer tokens for protected routes; required if any route is.
    pub auth: Option<Arc<Authenticator>>,
    /// Per-IP and per-principal limits shared across instances.
    pub limits: Option<Arc<RateLimits>>,
    /// Answers slower than this count as `SlowRequests` (the latency SLI).
    pub slow_request_ms: f64,
    /// Consulted for routes that [`Route::sheds_when_busy`], after authentication
    /// and before the rate limits: a request that would be shed pays no round trip.
    pub bulkhead: Option<Arc<Bulkhead>>,
    /// Refuse (403) any request whose `Origin` is present and not allowed, not
    /// only preflights: what the MCP transport requires against DNS rebinding.
    pub reject_unknown_origins: bool,
}

impl HttpPolicy {
    /// Reads `CORS_ALLOWED_ORIGINS` (comma-separated exact origins) and `MAX_BODY_BYTES`.
    pub fn from_env(service: &'static str, env: &Env<'_>) -> Result<Self, ConfigError> {
        let origins = env.list("CORS_ALLOWED_ORIGINS");
        for origin in &origins {
            let valid = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && !origin.contains('*');
            if !valid {
                return Err(ConfigError::new(
                    "CORS_ALLOWED_ORIGINS",
                    format!("{origin:?} is not an exact origin like https://app.example.com"),
                ));
            }
        }
        let max_body_bytes = env.parse_or("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?;
        if max_body_bytes == 0 || max_body_bytes > 6 * 1024 * 1024 {
            return Err(ConfigError::new(
                "MAX_BODY_BYTES",
                "must be between 1 and 6291456 (Lambda's payload limit)",
            ));
        }
        let slow_request_ms: u32 = env.parse_or("SLOW_REQUEST_MS", 200)?;
        if !(1..=60_000).contains(&slow_request_ms) {
            return Err(ConfigError::new("SLOW_REQUEST_MS", "must be 1 to 60000"));
        }
        Ok(Self {
            service,
            cors_allowed_origins: origins,
            max_body_bytes,
            default_budget: Duration::from_secs(10),
            auth: None,
            limits: None,
            slow_request_ms: f64::from(slow_request_ms),
            bulkhead: None,
            reject_unknown_origins: false,
        })
    }

    /// The same policy, shedding routes marked [`Route::sheds_when_busy`] when
    /// `bulkhead` is full.
    pub fn with_bulkhead(mut self, bulkhead: Arc<Bulkhead>) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// The same policy, answering 403 to every request from an origin that is
    /// not allowed (browsers' requests carry `Origin`; other clients send none).
    pub fn rejecting_unknown_origins(mut self) -> Self {
        self.reject_unknown_origins = true;
        self
    }

    /// The same policy, enforcing `limits` on every routed request.
    pub fn with_rate_limits(mut self, limits: Arc<RateLimits>) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The same policy, verifying tokens with `auth`.
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The policy of a function whose routes are protected: [`Self::from_env`],
    /// verified by `auth`, with the rate limits from the environment
    /// ([`RateLimits::from_env`]).
    pub fn protected_from_env(
        service: &'static str,
        env: &Env<'_>,
        auth: Arc<Authenticator>,
        dynamodb: aws_sdk_dynamodb::Client,
    ) -> Result<Self, ConfigError> {
        let limits = RateLimits::from_env(env, dynamodb)?;
        Ok(Self::from_env(service, env)?
            .with_auth(auth)
            .with_rate_limits(Arc::new(limits)))
    }

    pub(crate) fn origin_allowed(&self, origin: &str) -> bool {
        self.cors_allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rejects_wildcard_origins() {
        let env = [("CORS_ALLOWED_ORIGINS", "https://ok.example, *")];
        assert!(HttpPolicy::from_env("t", &Env::new(&env)).is_err());
        let env = [("MAX_BODY_BYTES", "0")];
        assert!(HttpPolicy::from_env("t", &Env::new(&env)).is_err());
    }
}
