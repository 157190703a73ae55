//! A function's start: logs and traces first ([`init_observability`]), and why
//! a cold start failed ([`InitError`]).
//!
//! A cold start reads its configuration ([`crate::config`]) and builds its
//! clients ([`crate::outbound`]); this error says which failed. It sits above
//! both so that neither has to know the other's errors.

use std::sync::Arc;

use crate::config::{ConfigError, Env};
use crate::observability::{self, otel::OtelSettings};
use crate::outbound::{OutboundClient, OutboundError, OutboundSettings};

/// The JSON logs, and the OpenTelemetry traces of `service` (the function's
/// name) when an OTLP endpoint is configured ([`OtelSettings::from_env`]),
/// exported through the one outbound client. Call it first in `main`.
pub fn init_observability(service: &str, env: &Env<'_>) -> Result<(), InitError> {
    let Some(settings) = OtelSettings::from_env(env)? else {
        observability::init_logging();
        return Ok(());
    };
    let client = OutboundClient::new(OutboundSettings::from_env(env)?)?;
    observability::init(service, Some((&settings, Arc::new(client))))
        .map_err(|error| ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", error))?;
    tracing::info!(endpoint = %settings.endpoint, "exporting traces over OTLP/HTTP");
    Ok(())
}

/// Why a function could not start: its configuration, or a client it builds.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Outbound(#[from] OutboundError),
}
