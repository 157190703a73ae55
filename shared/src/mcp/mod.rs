//! Tools for the assistant, as the MCP gateway (api-mcp) serves them.
//!
//! - [`schemas`]: the tools' JSON Schemas, taken from `api/openapi.json` so the
//!   REST routes and the tools state their contract once;
//! - [`builtin`]: Sophia's own tools (memory, jobs, one chat completion), each
//!   calling the library code its REST route calls;
//! - [`registry`]: the upstream MCP servers a tenant's admin registers
//!   (DynamoDB, credentials in Secrets Manager), shared with api-admin;
//! - [`upstream`]: the client that calls those servers through the outbound
//!   client, with a breaker and a bulkhead per server;
//! - [`gateway`]: the merged tool list per tenant and every call's guards:
//!   argument size, rate limit per principal and tool, audit, metrics.
//!
//! The protocol itself (JSON-RPC, revisions, headers) is the function's: the
//! official SDK `rmcp` serves it there, and this module does not know MCP's wire
//! format beyond the tool and result shapes.

pub mod builtin;
pub mod gateway;
pub mod registry;
pub mod schemas;
pub mod upstream;

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{ConfigError, Env};
use crate::fleet::breaker::BreakerSettings;
use crate::guard::ratelimit::Rule;

/// `api-mcp`'s settings (`MCP_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct McpSettings {
    /// The largest `arguments` object of a call, as JSON.
    pub max_argument_bytes: usize,
    /// Calls of one tool by one principal.
    pub tool_rate: Rule,
    /// How long a tenant's merged tool list is reused by an instance.
    pub listing_ttl: Duration,
    /// Calls in flight per upstream server and instance.
    pub upstream_concurrency: usize,
    /// The largest answer read from an upstream server.
    pub max_upstream_answer_bytes: usize,
    /// A registration's timeout when it names none, and the most it may name.
    pub default_upstream_timeout: Duration,
    pub max_upstream_timeout: Duration,
    /// Upstream URLs on loopback or private addresses (development and tests
    /// only: on Lambda, 127.0.0.1:9001 is the runtime API).
    pub allow_private_upstreams: bool,
    /// Where the registrations' credentials live in Secrets Manager.
    pub secret_prefix: String,
    pub upstream_breaker: BreakerSettings,
    /// A tool call slower than this counts against the latency SLO.
    pub slow_call: Duration,
    /// Upstream servers per tenant.
    pub max_servers: usize,
}

impl McpSettings {
    /// `MCP_MAX_ARGUMENT_BYTES` (65536), `MCP_TOOL_RATE_PER_MIN` (120),
    /// `MCP_TOOL_RATE_BURST` (30), `MCP_TOOLS_CACHE_MS` (30000),
    /// `MCP_UPSTREAM_CONCURRENCY` (8), `MCP_UPSTREAM_MAX_ANSWER_BYTES` (4 MiB),
    /// `MCP_UPSTREAM_TIMEOUT_MS` (5000), `MCP_UPSTREAM_MAX_TIMEOUT_MS` (30000),
    /// `MCP_ALLOW_PRIVATE_UPSTREAMS` (false), `MCP_SECRET_PREFIX`
    /// (`sophia/mcp-servers/`), `MCP_BREAKER_FAILURES` (3),
    /// `MCP_BREAKER_COOL_DOWN_MS` (30000), `MCP_SLOW_TOOL_CALL_MS` (100),
    /// `MCP_MAX_SERVERS` (20).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let positive = |name: &str, default: usize| -> Result<usize, ConfigError> {
            let value: usize = env.parse_or(name, default)?;
            if value == 0 {
                return Err(ConfigError::new(name, "must be at least 1"));
            }
            Ok(value)
        };
        let per_minute = positive("MCP_TOOL_RATE_PER_MIN", 120)?;
        let burst = positive("MCP_TOOL_RATE_BURST", 30)?;
        let failures = positive("MCP_BREAKER_FAILURES", 3)?;
        let secret_prefix = env
            .optional("MCP_SECRET_PREFIX")
            .unwrap_or_else(|| "sophia/mcp-servers/".to_owned());
        if !secret_prefix.ends_with('/') || !secret_prefix.bytes().all(secret_name_byte) {
            return Err(ConfigError::new(
                "MCP_SECRET_PREFIX",
                "must be a Secrets Manager name prefix ending in '/'",
            ));
        }
        let max_upstream_timeout = env.millis_or("MCP_UPSTREAM_MAX_TIMEOUT_MS", 30_000, 900_000)?;
        let default_upstream_timeout = env.millis_or("MCP_UPSTREAM_TIMEOUT_MS", 5_000, 900_000)?;
        if default_upstream_timeout > max_upstream_timeout {
            return Err(ConfigError::new(
                "MCP_UPSTREAM_TIMEOUT_MS",
                "must not exceed MCP_UPSTREAM_MAX_TIMEOUT_MS",
            ));
        }
        Ok(Self {
            max_argument_bytes: positive("MCP_MAX_ARGUMENT_BYTES", 65_536)?,
            tool_rate: Rule {
                per_minute: u32::try_from(per_minute)
                    .map_err(|_| ConfigError::new("MCP_TOOL_RATE_PER_MIN", "is too large"))?,
                burst: u32::try_from(burst)
                    .map_err(|_| ConfigError::new("MCP_TOOL_RATE_BURST", "is too large"))?,
            },
            listing_ttl: env.millis_or("MCP_TOOLS_CACHE_MS", 30_000, 3_600_000)?,
            upstream_concurrency: positive("MCP_UPSTREAM_CONCURRENCY", 8)?,
            max_upstream_answer_bytes: positive("MCP_UPSTREAM_MAX_ANSWER_BYTES", 4 << 20)?,
            default_upstream_timeout,
            max_upstream_timeout,
            allow_private_upstreams: env.parse_or("MCP_ALLOW_PRIVATE_UPSTREAMS", false)?,
            secret_prefix,
            upstream_breaker: BreakerSettings {
                consecutive_failures: u32::try_from(failures)
                    .map_err(|_| ConfigError::new("MCP_BREAKER_FAILURES", "is too large"))?,
                cool_down: env.millis_or("MCP_BREAKER_COOL_DOWN_MS", 30_000, 3_600_000)?,
                half_open_probes: 1,
                ..BreakerSettings::default()
            },
            slow_call: env.millis_or("MCP_SLOW_TOOL_CALL_MS", 100, 900_000)?,
            max_servers: positive("MCP_MAX_SERVERS", 20)?,
        })
    }
}

fn secret_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b)
}

/// What a tool is, as `tools/list` shows it: the MCP `Tool` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedTool {
    pub name: String,
    /// The whole definition (`name`, `description`, `inputSchema`, ...).
    pub definition: Value,
}

/// A tool's answer: a result the model sees, failed or not. Failures while the
/// tool runs (an API failure, a refused value, an upstream outage) are results
/// with `is_error`, so the model can adapt; only a malformed call is a protocol
/// error ([`CallError`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// MCP content blocks (`{"type": "text", ...}`, ...).
    pub content: Vec<Value>,
    pub structured: Option<Value>,
    pub is_error: bool,
}

impl ToolResult {
    /// Structured content, with its JSON as text for clients that read only text.
    pub fn structured(value: Value) -> Self {
        Self {
            content: vec![json!({"type": "text", "text": value.to_string()})],
            structured: Some(value),
            is_error: false,
        }
    }

    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            content: vec![json!({"type": "text", "text": message.into()})],
            structured: None,
            is_error: true,
        }
    }

    /// The MCP `CallToolResult` object.
    pub fn to_json(&self) -> Value {
        let mut result = json!({"content": self.content, "isError": self.is_error});
        if let Some(structured) = &self.structured {
            result["structuredContent"] = structured.clone();
        }
        result
    }
}

/// A call that is not a valid call: JSON-RPC `-32602` (invalid params), as the
/// MCP tools specification says for unknown tools and malformed requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("unknown tool: {0}")]
    UnknownTool(String),
    #[error("the tool {tool} needs the scope {scope:?}, which this token does not carry")]
    MissingScope { tool: String, scope: &'static str },
    #[error("invalid arguments for {tool}: {reason}")]
    InvalidArguments { tool: String, reason: String },
    #[error(
        "the arguments of {tool} are {bytes} bytes; the limit is {limit} (MCP_MAX_ARGUMENT_BYTES)"
    )]
    ArgumentsTooLarge {
        tool: String,
        bytes: usize,
        limit: usize,
    },
    /// An upstream server refused the call's parameters itself.
    #[error("{server}: {message}")]
    UpstreamRefused { server: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let settings = McpSettings::from_env(&Env::new(&[("X", "1")])).unwrap();
        assert_eq!(settings.max_argument_bytes, 65_536);
        assert_eq!(settings.tool_rate.per_minute, 120);
        assert!(!settings.allow_private_upstreams);
        assert_eq!(settings.secret_prefix, "sophia/mcp-servers/");
        for bad in [
            ("MCP_MAX_ARGUMENT_BYTES", "0"),
            ("MCP_SECRET_PREFIX", "no-slash"),
            ("MCP_SECRET_PREFIX", "spaces are bad/"),
            ("MCP_UPSTREAM_TIMEOUT_MS", "60000"),
            ("MCP_ALLOW_PRIVATE_UPSTREAMS", "yes"),
        ] {
            assert!(McpSettings::from_env(&Env::new(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn results_carry_their_json_as_text() {
        let result = ToolResult::structured(json!({"a": 1})).to_json();
        assert_eq!(result["structuredContent"]["a"], 1);
        assert_eq!(result["content"][0]["text"], r#"{"a":1}"#);
        assert_eq!(result["isError"], false);
        assert_eq!(ToolResult::failure("no").to_json()["isError"], true);
    }
}
