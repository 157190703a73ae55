#!/usr/bin/env python3
"""An upstream MCP server of the modern era (2026-07-28, stateless), built with
the official MCP Python SDK, for the gateway's federation tests: its one tool,
`whoami`, answers with the Authorization header it received, so a test can show
that the gateway sends the registration's credentials and never the caller's
token.

Usage: mcp_header_echo.py PORT   (listens on 127.0.0.1:PORT/mcp)
"""

import sys

from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("header-echo")


@app.tool()
def whoami(ctx: Context) -> str:
    """The Authorization header this server received ("<none>" without one)."""
    return (ctx.headers or {}).get("authorization", "<none>")


if __name__ == "__main__":
    app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]),
            stateless_http=True, json_response=True)
