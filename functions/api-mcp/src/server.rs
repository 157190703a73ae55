//! The MCP protocol, served by the official SDK (`rmcp`) in its stateless
//! Streamable HTTP mode, with the gateway behind `tools/list` and `tools/call`.
//!
//! rmcp fits Lambda here: with `legacy_session_mode: false` and
//! `json_response: true` it makes a fresh handler per request, keeps nothing
//! between requests, answers `server/discover` and the 2026-07-28 rules
//! (`_meta`, `resultType`, `ttlMs`/`cacheScope`, the `Mcp-Method`/`Mcp-Name`
//! header checks, `-32020`/`-32022`) and still answers `initialize` from
//! 2025-era clients without issuing a session. Its default `allowed_hosts`
//! (loopback only) is cleared: API Gateway fixes the Host, the route is
//! authenticated, and the pipeline checks `Origin`. What rmcp answers outside
//! JSON-RPC (malformed bodies) is caught before it, in [`crate::envelope`].

use std::sync::Arc;

use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ErrorData, Implementation,
    ListToolsResult, PaginatedRequestParams, ProtocolVersion, ResultType, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler};
use sophia_shared::auth::Principal;
use sophia_shared::mcp::gateway::{Caller, Gateway};

/// The revisions served, newest first (what `server/discover` lists and
/// `-32022` names).
pub const SUPPORTED_VERSIONS: [&str; 3] = ["2026-07-28", "2025-11-25", "2025-06-18"];

/// What the pipeline learned about the request, handed to the handler through
/// the HTTP request's extensions.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub principal: Principal,
    pub ctx: sophia_shared::observability::RequestContext,
}

/// One per request (rmcp's factory), sharing the gateway.
#[derive(Debug, Clone)]
pub struct McpServer {
    gateway: Arc<Gateway>,
}

pub type McpService = StreamableHttpService<McpServer, NeverSessionManager>;

/// The protocol service, built once per cold start.
pub fn service(gateway: Arc<Gateway>) -> McpService {
    let mut config = StreamableHttpServerConfig::default();
    config.legacy_session_mode = false;
    config.json_response = true;
    config.allowed_hosts = Vec::new();
    StreamableHttpService::new(
        move || {
            Ok(McpServer {
                gateway: gateway.clone(),
            })
        },
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

fn invocation(context: &RequestContext<RoleServer>) -> Result<Invocation, ErrorData> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Invocation>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request was not authenticated", None))
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("sophia", env!("CARGO_PKG_VERSION")).with_title("Sophia"),
            )
            .with_instructions(
                "Sophia's tools: memory_store/memory_recall/memory_forget (the caller's memory), \
                 job_submit/job_status (background completions), chat_complete, and the tenant's \
                 registered MCP servers' tools as <server>__<tool>. A failing tool answers with \
                 isError and a reason.",
            )
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Owned(vec![
            ProtocolVersion::V_2026_07_28,
            ProtocolVersion::V_2025_11_25,
            ProtocolVersion::V_2025_06_18,
        ])
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let invocation = invocation(&context)?;
        let caller = Caller {
            principal: &invocation.principal,
            ctx: &invocation.ctx,
        };
        let (listed, ttl) = self.gateway.list(caller).await;
        let tools: Vec<Tool> = listed
            .into_iter()
            .filter_map(|tool| match serde_json::from_value::<Tool>(tool.definition) {
                Ok(parsed) => Some(parsed),
                Err(error) => {
                    tracing::warn!(tool = %tool.name, %error, "a tool definition is not MCP; left out");
                    None
                }
            })
            .collect();
        let mut result = ListToolsResult::with_all_items(tools);
        result.ttl_ms = Some(ttl.as_millis() as u64);
        // The list depends on the caller's scopes and tenant.
        result.cache_scope = Some(CacheScope::Private);
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let invocation = invocation(&context)?;
        let caller = Caller {
            principal: &invocation.principal,
            ctx: &invocation.ctx,
        };
        match self
            .gateway
            .call(caller, &request.name, request.arguments)
            .await
        {
            Ok(result) => serde_json::from_value::<CallToolResult>(result.to_json())
                .map(|mut result| {
                    // Required by 2026-07-28; rmcp drops it for older peers.
                    result.result_type = Some(ResultType::COMPLETE);
                    CallToolResponse::from(result)
                })
                .map_err(|error| {
                    tracing::warn!(tool = %request.name, %error, "a tool result is not MCP");
                    ErrorData::internal_error("the tool's result is not a valid MCP result", None)
                }),
            Err(error) => Err(ErrorData::invalid_params(error.to_string(), None)),
        }
    }
}
