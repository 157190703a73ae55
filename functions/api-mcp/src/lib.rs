//! api-mcp: the MCP gateway.
pub mod envelope;
pub mod handler;
pub mod server;
