"""Drives homelab-llm MCP servers with the official MCP Python SDK (`pip install mcp`).

Reads a JSON plan on stdin:
  {"servers": [{"name": "...", "http": "http://.../mcp", "headers": {...}} | {"name": "...", "stdio":
     {"command": "...", "args": [...], "env": {...}}}],
   "calls": [{"tool": "...", "arguments": {...}}]}
and prints one JSON object: for each server, the tools it lists (name, inputSchema) and
the result of each call (isError, text), as the SDK decoded them, or the protocol error it
raised ({"error": message}).
"""

import asyncio
import json
import os
import sys

import mcp
from mcp import StdioServerParameters


def text_of(result):
    parts = []
    for block in result.content or []:
        t = getattr(block, "text", None)
        if t is not None:
            parts.append(t)
    return "\n".join(parts)


def field(obj, *names):
    """A field by its name in this SDK version (snake_case in 2.x, camelCase in 1.x)."""
    for n in names:
        if hasattr(obj, n):
            return getattr(obj, n)
    raise AttributeError(names)


async def exercise(session, calls):
    tools = await session.list_tools()
    out = {
        "tools": [
            {"name": t.name, "inputSchema": field(t, "input_schema", "inputSchema")}
            for t in tools.tools
        ],
        "calls": [],
    }
    for c in calls:
        try:
            r = await session.call_tool(c["tool"], c.get("arguments", {}))
        except Exception as e:  # a protocol error (an unknown tool): its message
            out["calls"].append({"error": str(e)})
            continue
        out["calls"].append({"isError": bool(field(r, "is_error", "isError")), "text": text_of(r)})
    return out


async def run(server, calls):
    if "http" in server:
        target = server["http"]
    else:
        s = server["stdio"]
        env = dict(os.environ)
        env.update(s.get("env", {}))
        target = StdioServerParameters(command=s["command"], args=s.get("args", []), env=env)
    headers = server.get("headers")
    if hasattr(mcp, "Client") and not headers:
        async with mcp.Client(target) as client:
            return await exercise(client, calls)
    # Older SDKs: a transport and a ClientSession.
    from mcp import ClientSession

    if isinstance(target, str):
        from mcp.client.streamable_http import streamablehttp_client as transport
        ctx = transport(target, headers=headers)
    else:
        from mcp.client.stdio import stdio_client
        ctx = stdio_client(target)
    async with ctx as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            return await exercise(session, calls)


async def main():
    plan = json.load(sys.stdin)
    results = {}
    for server in plan["servers"]:
        results[server["name"]] = await run(server, server.get("calls", plan.get("calls", [])))
    json.dump(results, sys.stdout)


asyncio.run(main())
