"""The ``mcp`` tool type against real MCP servers over stdio, streamable HTTP and SSE:
listing, calling, error results, timeouts, session reuse and reconnection after a restart."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from agentrunner.interfaces import ToolError

#: how late past its timeout a call may end (process scheduling, the SDK's courtesy cancel)
TIMEOUT_MARGIN = 1.0


def by_name(tools) -> dict:
    return {tool.definition.name: tool for tool in tools}


async def test_open_lists_the_servers_tools_with_their_json_schemas(tool_type, target):
    tools = by_name(await tool_type.open(target.entry(description="Test tools", timeout=7)))

    assert set(tools) == {"add", "echo_env", "fail", "sleep", "weather", "picture", "pid"}
    add = tools["add"].definition
    assert add.description == "Add two integers."
    assert add.parameters["type"] == "object"
    assert add.parameters["properties"] == {"a": {"title": "A", "type": "integer"},
                                            "b": {"title": "B", "type": "integer"}}
    assert add.parameters["required"] == ["a", "b"]
    assert tools["echo_env"].definition.description == (
        "Return the value of an environment variable of the server process.")
    assert tools["pid"].definition.description == "Test tools"  # the server gives none: the entry's stands in
    assert {tool.timeout for tool in tools.values()} == {7}


async def test_calls_return_the_structured_content_or_the_text_and_errors_raise(tool_type, target):
    tools = by_name(await tool_type.open(target.entry()))

    assert await tools["add"].call({"a": 2, "b": 3}) == {"result": 5}
    assert await tools["weather"].call({"city": "Oslo"}) == {"city": "Oslo", "temperature": 21}
    assert await tools["picture"].call({}) == "\n".join([
        "a picture",
        "[image image/png, 32 bytes]",
        "resource text",
        "[resource file:///data.bin application/octet-stream, 3 bytes]",
    ])
    with pytest.raises(ToolError, match="the tool failed on purpose"):
        await tools["fail"].call({})
    with pytest.raises(ToolError, match="validation error"):
        await tools["add"].call({"a": "two"})
    assert await tools["add"].call({"a": 1, "b": 1}) == {"result": 2}  # the session is still good


async def test_a_call_ends_at_its_timeout_and_the_session_goes_on(tool_type, target):
    tools = by_name(await tool_type.open(target.entry(timeout=1.0)))  # room for a busy machine to list and add

    started = time.monotonic()
    with pytest.raises(ToolError, match=r"did not answer within 1 s \(calling 'sleep'\)"):
        await tools["sleep"].call({"seconds": 10})
    assert time.monotonic() - started < 1.0 + TIMEOUT_MARGIN

    assert await tools["add"].call({"a": 2, "b": 2}) == {"result": 4}
    assert target.sessions() == 1


async def test_a_restarted_server_is_reconnected_and_the_call_succeeds(tool_type, target, caplog):
    caplog.set_level(logging.INFO, logger="agentrunner.tools.mcp")
    tools = by_name(await tool_type.open(target.entry()))
    assert await tools["add"].call({"a": 1, "b": 2}) == {"result": 3}

    target.restart()

    assert await tools["add"].call({"a": 2, "b": 3}) == {"result": 5}
    assert target.sessions() == 2
    assert "reconnecting" in caplog.text
    # The tool list is read again from the new session.
    assert set(by_name(await tool_type.open(target.entry()))) >= {"add", "pid"}
    assert len(tool_type.sessions()) == 1


async def test_every_open_of_the_same_server_shares_one_session_and_calls_run_concurrently(tool_type, target):
    # Another entry (another name, description and timeout) for the same server shares the session too.
    first, second = await asyncio.gather(  # one connect serves both
        tool_type.open(target.entry()), tool_type.open(target.entry(name="again", description="same", timeout=5)))
    slow, fast = by_name(first)["sleep"], by_name(second)["add"]

    started = time.monotonic()
    results = await asyncio.gather(slow.call({"seconds": 0.3}), *(fast.call({"a": n, "b": n}) for n in range(5)))

    assert results == [{"result": "slept"}, *({"result": 2 * n} for n in range(5))]
    assert time.monotonic() - started < 0.3 + TIMEOUT_MARGIN
    assert target.sessions() == 1
    assert len(tool_type.sessions()) == 1
