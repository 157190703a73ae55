//! Service-level objectives as configured (`SLOS`, `SLO_PERIOD_DAYS`): one
//! definition read by job-slo-check, which evaluates them and stores each
//! one's status (state table, `slo#<name>` / `status`), and by api-dashboard,
//! which reads those statuses back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Env};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sli {
    /// Good = not a 5xx.
    Availability,
    /// Good = answered within the function's `SLOW_REQUEST_MS`.
    Latency,
}

impl Sli {
    /// The request-outcome metric that counts this SLI's bad requests.
    pub fn bad_metric(self) -> &'static str {
        match self {
            Self::Availability => "Errors",
            Self::Latency => "SlowRequests",
        }
    }
}

/// One SLO from `SLOS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    pub name: String,
    pub service: String,
    pub route: String,
    pub sli: Sli,
    /// e.g. 99.9
    pub objective_percent: f64,
}

impl Slo {
    /// The error budget as a ratio (99.9 % → 0.001).
    pub fn budget(&self) -> f64 {
        1.0 - self.objective_percent / 100.0
    }
}

/// `SLOS`: a JSON array of [`Slo`].
pub fn parse_slos(raw: &str) -> Result<Vec<Slo>, ConfigError> {
    let slos: Vec<Slo> = serde_json::from_str(raw)
        .map_err(|e| ConfigError::new("SLOS", format!("is not a JSON list of SLOs: {e}")))?;
    for slo in &slos {
        let valid_name = !slo.name.is_empty()
            && slo
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name {
            return Err(ConfigError::new(
                "SLOS",
                format!(
                    "name {:?} must be lowercase letters, digits and '-'",
                    slo.name
                ),
            ));
        }
        if !(slo.objective_percent > 0.0 && slo.objective_percent < 100.0) {
            return Err(ConfigError::new(
                "SLOS",
                format!("{}: objective_percent must be between 0 and 100", slo.name),
            ));
        }
    }
    Ok(slos)
}

/// `SLO_PERIOD_DAYS` (default 30, 1 to 90): the error budget's period.
pub fn period_from_env(env: &Env<'_>) -> Result<Duration, ConfigError> {
    let days: u64 = env.parse_or("SLO_PERIOD_DAYS", 30)?;
    if !(1..=90).contains(&days) {
        return Err(ConfigError::new("SLO_PERIOD_DAYS", "must be 1 to 90"));
    }
    Ok(Duration::from_secs(days * 86_400))
}

/// The state-table key of an SLO's stored status.
pub fn status_key(name: &str) -> (String, &'static str) {
    (format!("slo#{name}"), "status")
}
