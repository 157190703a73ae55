//! api-admin: a tenant's keys, flags and audit log; the platform's quotas.
pub mod handler;
