//! api-auth: API keys in, short-lived access tokens and rotating refresh tokens out.
pub mod handler;
