//! What `tools/list` and `tools/call` do, whatever the protocol revision.
//!
//! `tools/list` is Sophia's own tools the caller's scopes allow, then the
//! tenant's federated tools (`<server>__<tool>`, registered order by name),
//! merged per tenant and reused for `MCP_TOOLS_CACHE_MS`. An upstream that
//! cannot be listed keeps the tools it had, so an outage shows up as failing
//! calls (with a reason), not as tools that vanish.
//!
//! `tools/call` is guarded: arguments larger than `MCP_MAX_ARGUMENT_BYTES` are
//! refused, each principal has a rate per tool (the cross-instance limiter),
//! every call is audited (tool, principal, outcome, latency; never argument
//! values) and measured: `ToolCalls`, `ToolCallErrors`, `ToolCallLatency` by
//! `Tool` (Sophia's tools by name, federated ones as `federated`, so tenants
//! cannot grow the metric's cardinality), and `Requests`/`Errors`/
//! `SlowRequests` for route `tools/call`, which job-slo-check's tool SLOs read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::auth::Principal;
use crate::guard::ratelimit::Limiter;
use crate::mcp::builtin::{Builtin, Builtins};
use crate::mcp::registry::{Registry, UpstreamServer, split_exposed};
use crate::mcp::upstream::{UpstreamClient, UpstreamError};
use crate::mcp::{CallError, ListedTool, McpSettings, ToolResult};
use crate::observability::{MetricSet, RequestContext};
use crate::ops::audit::{AuditLog, Event};

const NAMESPACE: &str = "Sophia";
const RATE_LIMITED: &str = "rate-limited";

fn is_rate_limited(result: &ToolResult) -> bool {
    result
        .structured
        .as_ref()
        .and_then(|s| s.pointer("/error/type"))
        .and_then(Value::as_str)
        == Some(RATE_LIMITED)
}

/// Who calls, and within what time.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub principal: &'a Principal,
    pub ctx: &'a RequestContext,
}

#[derive(Debug, Clone)]
struct Federated {
    exposed: String,
    upstream_tool: String,
    server: Arc<UpstreamServer>,
    idempotent: bool,
    definition: Value,
}

#[derive(Debug)]
struct Listing {
    built: Instant,
    servers: Vec<Arc<UpstreamServer>>,
    tools: Vec<Federated>,
}

/// The gateway; one per cold start.
#[derive(Debug)]
pub struct Gateway {
    pub settings: McpSettings,
    pub builtins: Builtins,
    pub registry: Registry,
    pub upstream: UpstreamClient,
    limiter: Limiter,
    audit: AuditLog,
    service: &'static str,
    listings: Mutex<HashMap<String, Arc<Listing>>>,
}

/// How a call ended, for the audit log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// A result with `isError`.
    Error,
    /// Not a valid call (JSON-RPC error).
    Invalid,
    /// Over the principal's rate for this tool.
    Limited,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Invalid => "invalid",
            Self::Limited => "rate_limited",
        }
    }
}

impl Gateway {
    pub fn new(
        builtins: Builtins,
        registry: Registry,
        upstream: UpstreamClient,
        limiter: Limiter,
        audit: AuditLog,
        service: &'static str,
    ) -> Self {
        Self {
            settings: registry.settings.clone(),
            builtins,
            registry,
            upstream,
            limiter,
            audit,
            service,
            listings: Mutex::new(HashMap::new()),
        }
    }

    /// Every tool the caller may call, in a fixed order, and for how long the
    /// list may be reused.
    pub async fn list(&self, caller: Caller<'_>) -> (Vec<ListedTool>, std::time::Duration) {
        let mut tools = self.builtins.listed(&caller.principal.scopes);
        let listing = self.listing(caller, false).await;
        tools.extend(listing.tools.iter().map(|tool| ListedTool {
            name: tool.exposed.clone(),
            definition: tool.definition.clone(),
        }));
        let ttl = self
            .settings
            .listing_ttl
            .saturating_sub(listing.built.elapsed());
        (tools, ttl)
    }

    /// Calls tool `name`. A protocol error only for a call that is not valid;
    /// every failure while running is a result with `is_error`.
    pub async fn call(
        &self,
        caller: Caller<'_>,
        name: &str,
        arguments: Option<Map<String, Value>>,
    ) -> Result<ToolResult, CallError> {
        let started = Instant::now();
        let (result, server) = self.checked_call(caller, name, arguments).await;
        let outcome = match &result {
            Ok(result) if result.is_error && is_rate_limited(result) => Outcome::Limited,
            Ok(result) if result.is_error => Outcome::Error,
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Invalid,
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.record(caller, name, outcome, server.as_deref(), latency_ms)
            .await;
        result
    }

    /// The call and, for a federated tool, its server's name.
    async fn checked_call(
        &self,
        caller: Caller<'_>,
        name: &str,
        arguments: Option<Map<String, Value>>,
    ) -> (Result<ToolResult, CallError>, Option<String>) {
        let arguments = Value::Object(arguments.unwrap_or_default());
        let bytes = arguments.to_string().len();
        if bytes > self.settings.max_argument_bytes {
            let error = CallError::ArgumentsTooLarge {
                tool: name.to_owned(),
                bytes,
                limit: self.settings.max_argument_bytes,
            };
            return (Err(error), None);
        }
        let target = match Builtin::from_name(name) {
            Some(tool) => Target::Builtin(tool),
            None => match self.federated(caller, name).await {
                Some(target) => target,
                None => return (Err(CallError::UnknownTool(name.to_owned())), None),
            },
        };
        let principal = caller.principal;
        let key = format!("tool:{}:{}:{name}", principal.tenant, principal.subject);
        let decision = self.limiter.check(&key, self.settings.tool_rate).await;
        if !decision.allowed {
            let retry_after = decision.retry_after_secs.max(1);
            let mut result = ToolResult::failure(format!(
                "{name} is rate limited for this caller ({} calls a minute); retry after {retry_after} s",
                self.settings.tool_rate.per_minute,
            ));
            result.structured = Some(serde_json::json!({
                "error": {"type": RATE_LIMITED, "retry_after_secs": retry_after}
            }));
            return (Ok(result), None);
        }
        match target {
            Target::Builtin(tool) => (
                self.builtins
                    .call(tool, arguments, principal, caller.ctx)
                    .await,
                None,
            ),
            Target::Federated(tool) => {
                let server = tool.server.name.clone();
                (
                    self.call_upstream(caller, &tool, arguments).await,
                    Some(server),
                )
            }
        }
    }

    async fn call_upstream(
        &self,
        caller: Caller<'_>,
        tool: &Federated,
        arguments: Value,
    ) -> Result<ToolResult, CallError> {
        let server = &tool.server;
        let credentials = match self.registry.credentials(server).await {
            Ok(credentials) => credentials,
            Err(error) => {
                tracing::warn!(%error, server = %server.name, "upstream credentials");
                return Ok(ToolResult::failure(format!(
                    "MCP server {:?} could not be called: its credentials could not be read; retry later",
                    server.name
                )));
            }
        };
        let answer = self
            .upstream
            .call_tool(
                server,
                credentials.as_ref(),
                &tool.upstream_tool,
                arguments,
                tool.idempotent,
                caller.ctx,
            )
            .await;
        match answer {
            Ok(result) => Ok(ToolResult {
                content: result
                    .get("content")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                structured: result.get("structuredContent").cloned(),
                is_error: result.get("isError").and_then(Value::as_bool) == Some(true),
            }),
            // The server refused the parameters: the caller's call is invalid.
            Err(UpstreamError::Rpc {
                code: -32602,
                message,
            }) => Err(CallError::UpstreamRefused {
                server: server.name.clone(),
                message,
            }),
            Err(error) => {
                tracing::warn!(
                    server = %server.name,
                    tool = %tool.upstream_tool,
                    kind = error.kind(),
                    %error,
                    "upstream MCP call failed"
                );
                Ok(ToolResult::failure(format!(
                    "MCP server {:?} failed on {}: {error}",
                    server.name, tool.upstream_tool
                )))
            }
        }
    }

    /// The federated tool `name`, from the tenant's listing (refreshed once
    /// when it is unknown and the listing is not brand new). A registered
    /// server whose allow-list names the tool is called even when it could not
    /// be listed, so an outage is reported as such.
    async fn federated(&self, caller: Caller<'_>, name: &str) -> Option<Target> {
        let (server_name, upstream_tool) = split_exposed(name)?;
        for refresh in [false, true] {
            let listing = self.listing(caller, refresh).await;
            if let Some(tool) = listing.tools.iter().find(|t| t.exposed == name) {
                return Some(Target::Federated(tool.clone()));
            }
            let named = listing.servers.iter().find(|s| {
                s.name == server_name && s.allowed_tools.iter().any(|t| t == upstream_tool)
            });
            if let Some(server) = named {
                return Some(Target::Federated(Federated {
                    exposed: name.to_owned(),
                    upstream_tool: upstream_tool.to_owned(),
                    server: server.clone(),
                    idempotent: false,
                    definition: Value::Null,
                }));
            }
            if listing.built.elapsed() < std::time::Duration::from_secs(1) {
                break;
            }
        }
        None
    }

    /// The tenant's federated listing: cached, or built now.
    async fn listing(&self, caller: Caller<'_>, refresh: bool) -> Arc<Listing> {
        let tenant = &caller.principal.tenant;
        let cached = self
            .listings
            .lock()
            .ok()
            .and_then(|listings| listings.get(tenant).cloned());
        if let Some(listing) = &cached
            && !refresh
            && listing.built.elapsed() < self.settings.listing_ttl
        {
            return listing.clone();
        }
        let servers = match self.registry.list(tenant).await {
            Ok(servers) => servers,
            Err(error) => {
                tracing::warn!(%error, "the MCP server registry could not be read; using the last listing");
                return cached.unwrap_or_else(|| {
                    Arc::new(Listing {
                        built: Instant::now(),
                        servers: Vec::new(),
                        tools: Vec::new(),
                    })
                });
            }
        };
        let servers: Vec<Arc<UpstreamServer>> = servers.into_iter().map(Arc::new).collect();
        let lists = futures_util::future::join_all(
            servers
                .iter()
                .map(|server| self.list_server(server.clone(), caller.ctx)),
        )
        .await;
        let mut tools = Vec::new();
        for (server, listed) in servers.iter().zip(lists) {
            match listed {
                Ok(listed) => tools.extend(listed),
                Err(error) => {
                    tracing::warn!(server = %server.name, %error, "an upstream MCP server could not be listed; keeping its last tools");
                    let previous = cached.iter().flat_map(|l| l.tools.iter()).filter(|t| {
                        t.server.name == server.name && t.server.updated_at == server.updated_at
                    });
                    tools.extend(previous.cloned());
                }
            }
        }
        let listing = Arc::new(Listing {
            built: Instant::now(),
            servers,
            tools,
        });
        if let Ok(mut listings) = self.listings.lock() {
            listings.insert(tenant.clone(), listing.clone());
        }
        listing
    }

    async fn list_server(
        &self,
        server: Arc<UpstreamServer>,
        ctx: &RequestContext,
    ) -> Result<Vec<Federated>, String> {
        let credentials = self
            .registry
            .credentials(&server)
            .await
            .map_err(|e| e.to_string())?;
        let listed = self
            .upstream
            .list_tools(&server, credentials.as_ref(), ctx)
            .await
            .map_err(|e| e.to_string())?;
        Ok(listed
            .into_iter()
            .filter_map(|mut definition| {
                let upstream_tool = definition.get("name")?.as_str()?.to_owned();
                let valid = (1..=128).contains(&upstream_tool.len())
                    && upstream_tool
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !valid || !server.allows(&upstream_tool) {
                    return None;
                }
                let exposed = server.exposed(&upstream_tool);
                definition["name"] = Value::String(exposed.clone());
                let idempotent = definition
                    .pointer("/annotations/idempotentHint")
                    .and_then(Value::as_bool)
                    == Some(true);
                Some(Federated {
                    exposed,
                    upstream_tool,
                    server: server.clone(),
                    idempotent,
                    definition,
                })
            })
            .collect())
    }

    async fn record(
        &self,
        caller: Caller<'_>,
        name: &str,
        outcome: Outcome,
        server: Option<&str>,
        latency_ms: f64,
    ) {
        let failed = outcome == Outcome::Error;
        let metric_tool = if Builtin::from_name(name).is_some() {
            name
        } else {
            "federated"
        };
        MetricSet::new(NAMESPACE)
            .dimension("Service", self.service)
            .dimension("Tool", metric_tool)
            .count("ToolCalls", 1.0)
            .count("ToolCallErrors", f64::from(u8::from(failed)))
            .millis("ToolCallLatency", latency_ms)
            .property("tool", name)
            .property("outcome", outcome.as_str())
            .property("correlation_id", caller.ctx.correlation_id.as_str())
            .emit();
        MetricSet::new(NAMESPACE)
            .dimension("Service", self.service)
            .dimension("Route", "tools/call")
            .count("Requests", 1.0)
            .count("Errors", f64::from(u8::from(failed)))
            .count(
                "SlowRequests",
                f64::from(u8::from(
                    latency_ms > self.settings.slow_call.as_secs_f64() * 1000.0,
                )),
            )
            .emit();
        let mut details = serde_json::json!({
            "outcome": outcome.as_str(),
            "latency_ms": (latency_ms * 10.0).round() / 10.0,
        });
        if let Some(server) = server {
            details["server"] = Value::String(server.to_owned());
        }
        let event = Event {
            actor: &caller.principal.subject,
            action: "tool.call",
            target: &format!("tool:{name}"),
            correlation_id: &caller.ctx.correlation_id,
            details,
        };
        // The call happened either way; a lost audit entry is logged in full
        // (logs are kept) rather than turned into a failed call.
        if let Err(error) = self.audit.append(&caller.principal.tenant, &event).await {
            tracing::error!(%error, tool = name, outcome = outcome.as_str(), actor = %caller.principal.subject, "the tool call could not be audited");
        }
    }
}

#[derive(Debug)]
enum Target {
    Builtin(Builtin),
    Federated(Federated),
}
