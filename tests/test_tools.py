"""The tool-calling loop and the built-in ``function`` tool type, with a scripted model."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import agentrunner
import tool_fixtures
from agentrunner.default_plugins.function_tool import signature_schema
from agentrunner.interfaces import CompletionRequest, CompletionResponse, ToolCall, Usage
from agentrunner.testing.platform import http_client, running_platform

REPO = Path(__file__).resolve().parents[1]


class Scripted:
    """A model driven by ``script(request, turn) -> CompletionResponse``; keeps every request."""

    name = "scripted"

    def __init__(self) -> None:
        self.requests: list[CompletionRequest] = []
        self.script: Callable[[CompletionRequest, int], CompletionResponse] = lambda request, turn: answer("done")

    async def complete(self, request):
        self.requests.append(request)
        return self.script(request, len(self.requests))


class ModelPlugin:
    def __init__(self) -> None:
        self.model = Scripted()

    @agentrunner.hookimpl
    def register_providers(self, register):
        register(self.model)


def answer(text: str) -> CompletionResponse:
    return CompletionResponse(text=text, usage=Usage(10, 2), model="scripted-1")


def ask(*calls: tuple[str, dict]) -> CompletionResponse:
    tool_calls = tuple(ToolCall(id=f"call-{i}-{name}", name=name, arguments=args) for i, (name, args) in
                       enumerate(calls))
    return CompletionResponse(text="", tool_calls=tool_calls, usage=Usage(10, 1), model="scripted-1",
                              finish_reason="tool_calls")


def tool_results(request: CompletionRequest) -> list:
    """The tool messages at the end of a request (the results of the previous turn)."""
    results = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        results.insert(0, message)
    return results


AGENT = textwrap.dedent("""\
    name: toolbox
    agent_type: assistant
    execution_mode: autonomous
    llm_config: {provider: scripted, model: m}
    system_prompt: Use your tools.
    retry_config: {max_retries: 2, retry_delay_seconds: 0.01}
    tools:
      - {name: add, type: function, function: "tool_fixtures:add"}
      - {name: weather, type: function, function: "tool_fixtures:weather", description: The weather.}
      - {name: meet, type: function, function: "tool_fixtures:meet"}
      - {name: explode, type: function, function: "tool_fixtures:explode"}
      - {name: hang, type: function, function: "tool_fixtures:hang", timeout: 0.2}
    """)


@pytest.fixture
def plugin():
    return ModelPlugin()


@pytest.fixture
async def platform(tmp_path, plugin, request):
    environ = getattr(request, "param", {})
    async with running_platform(tmp_path, environ, files={"toolbox.yaml": AGENT},
                                plugins=[(plugin, "scripted")]) as platform:
        yield platform


async def run(platform, text: str = "go") -> dict:
    async with http_client(platform) as client:
        response = await client.post("/agents/toolbox/tasks", json={"input": text, "wait": 10})
        return await response.json()


async def test_a_tool_call_runs_and_its_result_goes_back_until_the_model_answers(platform, plugin):
    def script(request, turn):
        if turn == 1:
            return ask(("add", {"a": 2, "b": 3}))
        (result,) = tool_results(request)
        return answer(f"the sum is {result.content}")

    plugin.model.script = script
    execution = await run(platform)
    assert execution["status"] == "completed" and execution["result"] == "the sum is 5"
    first, second = plugin.model.requests
    offered = {tool.name: tool for tool in first.tools}
    assert set(offered) == {"add", "weather", "meet", "explode", "hang"}
    assert offered["add"].description == "Add two integers."
    assert offered["add"].parameters == {"type": "object", "additionalProperties": False, "required": ["a"],
                                         "properties": {"a": {"type": "integer"},
                                                        "b": {"type": "integer", "default": 0}}}
    assistant, result = second.messages[-2:]
    assert assistant.role == "assistant" and assistant.tool_calls == (ToolCall("call-0-add", "add", {"a": 2, "b": 3}),)
    assert (result.role, result.tool_call_id, result.content, result.is_error) == ("tool", "call-0-add", "5", False)
    # usage adds up over the turns; every call is on the record
    assert execution["usage"] == {"input_tokens": 20, "output_tokens": 3, "model": "scripted-1"}
    (record,) = execution["details"]["tool_calls"]
    assert record["name"] == "add" and record["arguments"] == {"a": 2, "b": 3}
    assert record["result_chars"] == 1 and record["error"] is None and record["duration_ms"] >= 0
    assert tool_fixtures.THREADS[-1].startswith("agentrunner-worker")  # a sync tool never blocks the loop


async def test_calls_of_one_turn_run_concurrently(platform, plugin):
    tool_fixtures.BARRIER["barrier"] = asyncio.Barrier(3)  # only passes when all three run at once

    def script(request, turn):
        if turn == 1:
            return ask(("meet", {"name": "ann"}), ("meet", {"name": "bob"}), ("meet", {"name": "cy"}))
        return answer(" / ".join(message.content for message in tool_results(request)))

    plugin.model.script = script
    execution = await run(platform)
    assert execution["result"] == "met ann / met bob / met cy"


async def test_failing_tools_are_reported_to_the_model_and_the_execution_goes_on(platform, plugin):
    def script(request, turn):
        if turn == 1:
            return ask(("explode", {"reason": "boom"}), ("hang", {}), ("nope", {}), ("add", {"a": "two"}),
                       ("weather", {"city": "Oslo", "mode": "medium"}))
        return answer(json.dumps([[m.content, m.is_error] for m in tool_results(request)]))

    plugin.model.script = script
    execution = await run(platform)
    assert execution["status"] == "completed"
    results = json.loads(execution["result"])
    assert results[0] == ["RuntimeError: exploded: boom", True]
    assert results[1] == ["tool 'hang' did not answer within 0.2 s", True]
    assert results[2][0].startswith("there is no tool named 'nope' (tools: add, explode, hang, meet, weather)")
    assert results[3] == ["invalid arguments: arguments.a: 'two' is not of type 'integer'", True]
    assert results[4][1] is True and results[4][0].startswith("invalid arguments: arguments.mode: 'medium' is not")
    errors = [record["error"] for record in execution["details"]["tool_calls"]]
    assert all(errors) and len(errors) == 5


@pytest.mark.parametrize("platform", [{"AGENT_MAX_TOOL_STEPS": "4"}], indirect=True)
async def test_a_model_that_never_stops_asking_fails_at_the_step_limit(platform, plugin):
    plugin.model.script = lambda request, turn: ask(("add", {"a": turn}))
    execution = await run(platform)
    assert execution["status"] == "failed"
    assert execution["error_message"] == ("ToolLoopError: the model was still asking for tools after 4 turns; "
                                          "stopped (AGENT_MAX_TOOL_STEPS=4)")
    assert len(plugin.model.requests) == 4 and execution["attempts"] == 1  # not retried as a task
    assert len(execution["details"]["tool_calls"]) == 4


async def test_the_same_call_again_and_again_stops_the_loop(platform, plugin):
    plugin.model.script = lambda request, turn: ask(("add", {"a": 1, "b": 1}))
    execution = await run(platform)
    assert execution["status"] == "failed"
    assert "called tool 'add' with the same arguments 4 times in a row" in execution["error_message"]
    assert "AGENT_TOOL_REPEAT_LIMIT=3" in execution["error_message"]
    assert len(execution["details"]["tool_calls"]) == 3  # the fourth identical call never ran


async def test_different_arguments_never_trip_the_repeat_limit(platform, plugin):
    def script(request, turn):
        return ask(("add", {"a": turn})) if turn <= 6 else answer("counted")

    plugin.model.script = script
    execution = await run(platform)
    assert execution["status"] == "completed" and len(execution["details"]["tool_calls"]) == 6


def test_the_schema_of_a_function_comes_from_its_signature():
    schema = signature_schema(tool_fixtures.weather)
    assert schema == {
        "type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {
            "city": {"type": "string"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}], "default": None},
            "mode": {"enum": ["short", "long"], "default": "short"},
            "extra": {"anyOf": [{"type": "object", "additionalProperties": {"type": "number"}}, {"type": "null"}],
                      "default": None},
        },
    }


async def test_the_echo_provider_shows_the_loop_with_the_example_tool_agent(tmp_path):
    example = (REPO / "config" / "agents" / "tool-agent.yaml").read_text()
    async with running_platform(tmp_path, {"STATUS_PAGE_TOKEN": "t"}, files={"tool-agent.yaml": example}) as platform:
        async with http_client(platform) as client:
            response = await client.post("/agents/tool-agent/tasks", json={
                "input": '/call word_count {"text": "one two three"}', "wait": 10})
            execution = await response.json()
            assert execution["status"] == "completed" and execution["result"] == "3"
            assert execution["details"]["tool_calls"][0]["arguments"] == {"text": "one two three"}
            response = await client.post("/agents/tool-agent/tasks", json={"input": "/call nothing {}", "wait": 10})
            assert (await response.json())["result"] == "/call nothing {}"  # not a tool it has: plain echo


@pytest.mark.parametrize("platform", [{"EXECUTION_MAX_TOOL_CALLS": "3"}], indirect=True)
async def test_a_tool_call_budget_stops_a_runaway_execution(platform, plugin):
    plugin.model.script = lambda request, turn: ask(("add", {"a": turn}), ("add", {"a": -turn}))
    execution = await run(platform)
    assert execution["status"] == "failed" and execution["attempts"] == 1
    assert execution["error_message"] == ("BudgetExceeded: the model asked for 2 more tool call(s) after 2, beyond "
                                          "the execution's budget of 3 (EXECUTION_MAX_TOOL_CALLS)")
    assert len(execution["details"]["tool_calls"]) == 2  # the turn that would overspend never ran


@pytest.mark.parametrize("platform", [{"EXECUTION_MAX_TOKENS": "50"}], indirect=True)
async def test_a_token_budget_stops_a_runaway_execution(platform, plugin):
    plugin.model.script = lambda request, turn: ask(("add", {"a": turn}))  # 11 tokens a turn
    execution = await run(platform)
    assert execution["status"] == "failed"
    assert "more than its budget of 50 (EXECUTION_MAX_TOKENS)" in execution["error_message"]
    assert len(plugin.model.requests) == 5  # 55 tokens after the fifth call
