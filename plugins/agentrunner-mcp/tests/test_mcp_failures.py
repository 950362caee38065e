"""Servers that cannot be reached, went away, never start, or never answer: each is a ToolError
that names the server, arrives promptly, and leaves no session, task or process behind."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from agentrunner_mcp import MCPToolType
from mcp_harness import HTTP_TRANSPORTS, SILENT, child_processes
from mcp_servers import free_port

from agentrunner.interfaces import ToolError
from agentrunner.schema import ToolConfig


@pytest.mark.parametrize("path", ["/mcp", "/sse"])
async def test_a_server_nobody_listens_for_is_unreachable(tool_type, path):
    url = f"http://127.0.0.1:{free_port()}{path}"

    started = time.monotonic()
    with pytest.raises(ToolError) as caught:
        await tool_type.open(ToolConfig(name="gone", type="mcp", url=url))
    assert str(caught.value) == f"MCP server {url} is unreachable: ConnectError: All connection attempts failed"
    assert time.monotonic() - started < 5
    assert tool_type.sessions() == []


async def test_a_server_that_went_away_fails_the_call_after_one_reconnect(tool_type, http_target):
    tools = {tool.definition.name: tool for tool in await tool_type.open(http_target.entry())}
    http_target.app.stop()

    with pytest.raises(ToolError, match=rf"^MCP server {http_target.app.url} is unreachable: ConnectError"):
        await tools["add"].call({"a": 1, "b": 2})
    assert tool_type.sessions() == []


async def test_a_wrong_path_is_reported_with_its_http_status(tool_type, served):
    app = served("streamable-http")
    url = app.url.replace("/mcp", "/nothing-here")

    with pytest.raises(ToolError, match=r"is unreachable: HTTP 404"):
        await tool_type.open(ToolConfig(name="wrong", type="mcp", url=url))


async def test_a_command_that_does_not_exist_is_unreachable(tool_type):
    entry = ToolConfig(name="missing", type="mcp", command="/nonexistent/mcp-server", args=["--stdio"])

    with pytest.raises(ToolError, match=r"^MCP server /nonexistent/mcp-server \(stdio\) is unreachable: "
                                        r"FileNotFoundError"):
        await tool_type.open(entry)


async def test_a_server_that_never_initializes_gives_up_at_the_connect_timeout():
    tool_type = MCPToolType(connect_timeout=0.5)
    entry = ToolConfig(name="silent", type="mcp", command=sys.executable, args=SILENT, timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(ToolError, match=r"is unreachable: no answer within 0\.5 s"):
            await tool_type.open(entry)
        assert time.monotonic() - started < 2
    finally:
        await tool_type.aclose()
    assert child_processes() == []


async def test_an_execution_that_stops_waiting_leaves_the_connect_running_for_the_next(tool_type, target):
    """The tool-calling loop may cancel a call (its own timeout); the session being set up survives it."""
    entry = target.entry()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(tool_type.open(entry), 0.01)

    tools = {tool.definition.name: tool for tool in await tool_type.open(entry)}
    assert await tools["add"].call({"a": 1, "b": 1}) == {"result": 2}
    assert target.sessions() == 1


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
async def test_the_url_in_messages_has_no_credentials_or_query(tool_type, transport):
    path = "/sse" if transport == "sse" else "/mcp"
    port = free_port()
    url = f"http://user:pa55word@127.0.0.1:{port}{path}?api_key=s3cr3t-in-query"

    with pytest.raises(ToolError) as caught:
        await tool_type.open(ToolConfig(name="gone", type="mcp", url=url))
    message = str(caught.value)
    assert message.startswith(f"MCP server http://127.0.0.1:{port}{path} is unreachable: ")
    assert "pa55word" not in message and "user" not in message and "s3cr3t" not in message
