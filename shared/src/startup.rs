//! Why a function could not start.
//!
//! A cold start reads its configuration ([`crate::config`]) and builds its
//! clients ([`crate::outbound`]); this error says which failed. It sits above
//! both so that neither has to know the other's errors.

use crate::config::ConfigError;
use crate::outbound::OutboundError;

/// Why a function could not start: its configuration, or a client it builds.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Outbound(#[from] OutboundError),
}
