#!/usr/bin/env python3
"""The official MCP Python SDK (`mcp`, pinned in tools/requirements.txt) as a
client of Sophia's MCP gateway, in both protocol eras: the 2025 handshake
(`mode="legacy"`: initialize, no session issued), the 2026-07-28 revision
pinned (`server/discover`, per-request `_meta`, no handshake) and the SDK's
default (`auto`: discover, fall back to initialize).

Usage: mcp_clients_check.py MCP_URL ACCESS_TOKEN FEDERATED_TOOL
The token needs the scopes tools and memory; FEDERATED_TOOL is a registered
upstream's echo tool (e.g. everything__echo). The SDK validates every
structured result against the tool's outputSchema, so a result that breaks its
schema fails here too. Exits non-zero with a message on any difference.
"""

import asyncio
import sys

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client


async def check(url: str, token: str, federated: str, mode: str) -> None:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=20)
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        expected = "2026-07-28" if mode != "legacy" else None
        if expected:
            assert client.protocol_version == expected, (mode, client.protocol_version)
        else:
            assert client.protocol_version.startswith("2025-"), client.protocol_version
        if mode != "2026-07-28":  # a pinned version skips server/discover: no serverInfo
            assert client.server_info is not None and client.server_info.name == "sophia", client.server_info

        names = [tool.name for tool in (await client.list_tools()).tools]
        for name in ("memory_store", "memory_recall", "memory_forget", federated):
            assert name in names, (mode, names)
        assert "job_submit" not in names, "the token has no jobs scope: its tools are not listed"

        fact = f"The {mode} client owns the release checklist"
        stored = await client.call_tool("memory_store", {"text": fact, "tags": ["sdk"]})
        assert not stored.is_error, stored
        assert stored.structured_content["created"] is True, stored.structured_content

        recalled = await client.call_tool(
            "memory_recall", {"query": f"who owns the release checklist ({mode})?", "tags": ["sdk"]})
        assert not recalled.is_error, recalled
        texts = [hit["memory"]["text"] for hit in recalled.structured_content["data"]]
        assert fact in texts, (mode, texts)

        echoed = await client.call_tool(federated, {"message": f"hello from {mode}"})
        assert not echoed.is_error, echoed
        assert echoed.content[0].text == f"Echo: hello from {mode}", echoed.content

        try:
            await client.call_tool("no_such_tool", {})
            raise AssertionError("an unknown tool was called")
        except MCPError as error:
            assert error.error.code == -32602, error.error

        refused = await client.call_tool("memory_recall", {"query": "x", "k": 1000})
        assert refused.is_error, "a value the library refuses is a tool error the model can read"
        print(f"mcp: {mode:<10} protocol {client.protocol_version}: "
              f"{len(names)} tools, store/recall/federated call ok")


async def main() -> None:
    url, token, federated = sys.argv[1:4]
    for mode in ("legacy", "2026-07-28", "auto"):
        await check(url, token, federated, mode)


if __name__ == "__main__":
    asyncio.run(main())
