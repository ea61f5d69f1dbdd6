"""An MCP server built with the official MCP Python SDK, for the agent tests.

    python3 mcp_server.py stdio
    python3 mcp_server.py sse PORT
    python3 mcp_server.py http PORT

Tools: echo (prefix from ECHO_PREFIX), fail (a tool error), slow (sleeps), picture (an
image), add (numbers).
"""
import asyncio
import base64
import os
import sys

from mcp.server.fastmcp import FastMCP, Image
from mcp.server.fastmcp.exceptions import ToolError

transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
m = FastMCP("agent-test", host="127.0.0.1", port=port)


@m.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return f"{os.environ.get('ECHO_PREFIX', 'echo')}: {text}"


@m.tool()
def fail(reason: str) -> str:
    """Always fails with the reason."""
    raise ToolError(f"failed on purpose: {reason}")


@m.tool()
async def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    await asyncio.sleep(seconds)
    return "slept"


@m.tool()
def picture() -> Image:
    """A tiny picture."""
    return Image(data=base64.b64decode("aGVsbG8="), format="png")


@m.tool()
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    return a + b


if transport == "http":
    m.run(transport="streamable-http")
else:
    m.run(transport=transport)
