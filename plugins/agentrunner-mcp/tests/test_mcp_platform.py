"""End to end: an agent whose tools come from a stdio MCP server, run by the platform's tool-calling
loop (HTTP API → orchestrator → scripted provider → MCP server → provider → result)."""

from __future__ import annotations

import sys
import textwrap

import agentrunner_mcp
from mcp_harness import SERVER_SCRIPT, child_processes

import agentrunner
from agentrunner.interfaces import CompletionRequest, CompletionResponse, Message, ToolCall
from agentrunner.testing.platform import http_client, running_platform

AGENT = textwrap.dedent(f"""\
    name: calculator
    agent_type: assistant
    execution_mode: autonomous
    llm_config:
      provider: scripted
      model: scripted-1
    system_prompt: Use the calculator.
    tools:
      - name: calc
        type: mcp
        command: {sys.executable}
        args: [{SERVER_SCRIPT}]
    """)


class ScriptedProvider:
    """Asks for ``add(2, 3)``, then answers with the tool's result once the last message is its answer."""

    name = "scripted"

    def __init__(self) -> None:
        self.conversations: list[list[Message]] = []

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        self.conversations.append(list(request.messages))  # a copy: the loop goes on appending to its list
        offered = {tool.name: tool for tool in request.tools}
        assert {"add", "echo_env", "fail", "sleep", "weather", "picture", "pid"} <= set(offered), sorted(offered)
        assert offered["add"].description == "Add two integers."
        assert offered["add"].parameters["properties"] == {"a": {"title": "A", "type": "integer"},
                                                           "b": {"title": "B", "type": "integer"}}
        last = request.messages[-1]
        if last.role != "tool":
            return CompletionResponse(text="", tool_calls=(ToolCall(id="c1", name="add", arguments={"a": 2, "b": 3}),))
        return CompletionResponse(text=f"2 + 3 gives {last.content}", model="scripted-1")


class ScriptedPlugin:
    """Registers one provider instance, so the test can read the requests it saw."""

    def __init__(self, provider: ScriptedProvider) -> None:
        self.provider = provider

    @agentrunner.hookimpl
    def register_providers(self, register):
        register(self.provider)


async def test_an_agent_calls_an_mcp_tool_and_answers_with_its_result(tmp_path):
    provider = ScriptedProvider()
    plugins = [(agentrunner_mcp, "mcp"), (ScriptedPlugin(provider), "scripted")]
    async with running_platform(tmp_path, files={"calculator.yaml": AGENT}, plugins=plugins) as platform:
        async with http_client(platform) as client:
            response = await client.post("/agents/calculator/tasks", json={"input": "What is 2 + 3?", "wait": 20})
            assert response.status == 200, await response.text()
            execution = await response.json()

    assert execution["status"] == "completed", execution["error_message"]
    assert "5" in execution["result"]
    assert execution["result"] == '2 + 3 gives {"result": 5}'
    first, second = provider.conversations
    assert [message.role for message in first] == ["user"]
    assert [message.role for message in second] == ["user", "assistant", "tool"]
    tool_message = second[-1]
    assert (tool_message.role, tool_message.tool_call_id, tool_message.is_error) == ("tool", "c1", False)
    assert child_processes() == []  # the platform's stop closed the stdio server
