"""``aclose`` stops every session: no child process, no task, no pooled session is left behind."""

from __future__ import annotations

import asyncio
import sys

import pytest
from agentrunner_mcp import MCPToolType
from mcp_harness import SILENT, Target, child_processes

from agentrunner.interfaces import ToolError
from agentrunner.schema import ToolConfig


def other_tasks() -> set[asyncio.Task]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()}


async def test_aclose_ends_every_session_task_and_stdio_child(tmp_path, served):
    before = other_tasks()
    tool_type = MCPToolType()
    stdio, streamable, sse = (Target(transport, tmp_path, served) for transport in ("stdio", "streamable-http", "sse"))
    pids = []
    for target in (stdio, streamable, sse):
        tools = {tool.definition.name: tool for tool in await tool_type.open(target.entry())}
        pids.append((await tools["pid"].call({}))["result"])
    assert pids[0] in child_processes()
    assert len(tool_type.sessions()) == 3
    assert len(other_tasks() - before) >= 3

    await tool_type.aclose()

    assert tool_type.sessions() == []
    assert child_processes() == []
    assert other_tasks() - before == set()
    # Opening again after aclose starts afresh (a platform restarted in the same process).
    tools = {tool.definition.name: tool for tool in await tool_type.open(streamable.entry())}
    assert await tools["add"].call({"a": 1, "b": 1}) == {"result": 2}
    await tool_type.aclose()
    assert other_tasks() - before == set()


async def test_aclose_while_a_session_is_still_connecting_stops_it():
    tool_type = MCPToolType()
    opening = asyncio.ensure_future(tool_type.open(
        ToolConfig(name="silent", type="mcp", command=sys.executable, args=SILENT, timeout=30)))
    for _ in range(100):  # until the child runs
        if child_processes():
            break
        await asyncio.sleep(0.02)
    assert child_processes()

    await tool_type.aclose()

    with pytest.raises(ToolError, match="is unreachable"):
        await asyncio.wait_for(opening, 5)
    assert child_processes() == []


async def test_a_call_in_flight_at_aclose_fails_without_opening_a_new_session(tool_type, target):
    tools = {tool.definition.name: tool for tool in await tool_type.open(target.entry(timeout=10))}
    call = asyncio.ensure_future(tools["sleep"].call({"seconds": 5}))
    await asyncio.sleep(0.2)

    await tool_type.aclose()

    with pytest.raises(ToolError, match="shutting down"):
        await asyncio.wait_for(call, 5)
    assert tool_type.sessions() == []
    assert child_processes() == []
