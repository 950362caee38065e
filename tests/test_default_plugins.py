"""The built-in components: echo provider, function/api tool validation, the four modes."""

from __future__ import annotations

import json

import attrs
import pytest

from agentrunner.default_plugins.api_tool import ApiToolType
from agentrunner.default_plugins.echo import EchoProvider
from agentrunner.default_plugins.function_tool import FunctionToolType
from agentrunner.default_plugins.modes import (
    AutonomousMode,
    CollaborativeMode,
    ContinuousMode,
    ScheduledMode,
)
from agentrunner.interfaces import CompletionRequest, CompletionResponse, Message, Usage
from agentrunner.schema import CollaborativeConfig, ContinuousConfig, LLMConfig


async def test_echo_answers_with_the_last_user_message_and_counts_usage():
    request = CompletionRequest(
        llm_config=LLMConfig(provider="echo", model="echo"),
        system_prompt="Be brief.",
        messages=[Message("user", "first"), Message("assistant", "ok"), Message("user", "hello there")],
    )
    response = await EchoProvider().complete(request)
    assert response.text == "hello there"
    assert response.usage == Usage(input_tokens=2 + 1 + 1 + 2, output_tokens=2)
    streamed = [item async for item in EchoProvider().stream(request)]
    assert streamed[:-1] == ["hello ", "there"]  # text deltas, then the whole answer with its usage
    assert streamed[-1] == response


@attrs.define
class Tool:
    function: str | None = None
    url: str | None = None
    method: str = "POST"
    parameters: dict | None = None


@pytest.mark.parametrize(("target", "problem"), [
    ("json:dumps", None),
    ("os.path:join", None),
    ("json.dumps", "must look like package.module:callable"),
    ("json:", "must look like package.module:callable"),
    ("no_such_module_xyz:run", "module 'no_such_module_xyz' cannot be found"),
])
def test_function_tool_targets(target, problem):
    problems = FunctionToolType().validate(Tool(function=target))
    assert problems == [] if problem is None else (problems[0][0] == "function" and problem in problems[0][1])


@pytest.mark.parametrize(("tool", "field"), [
    (Tool(url="https://api.example.com/v1/search"), None),
    (Tool(url="ftp://example.com/x"), "url"),
    (Tool(url="/relative"), "url"),
    (Tool(url="https://x.example", method="FETCH"), "method"),
    (Tool(url="https://x.example", parameters={"type": "array"}), "parameters.type"),
])
def test_api_tool_validation(tool, field):
    problems = ApiToolType().validate(tool)
    assert [f for f, _ in problems] == ([] if field is None else [field])


@attrs.define
class FakeAgent:
    name: str = "agent"
    continuous_config: ContinuousConfig | None = None
    collaborative_config: CollaborativeConfig | None = None


@attrs.define
class FakeTask:
    input: object
    data: dict = attrs.Factory(dict)


@attrs.define
class FakeContext:
    """A scripted ctx: answers come from `answers` (or echo the prompt); submit returns '<agent>(<input>)'."""

    agent: FakeAgent
    task: FakeTask
    state: dict = attrs.Factory(dict)
    answers: list = attrs.Factory(list)
    prompts: list = attrs.Factory(list)
    submitted: list = attrs.Factory(list)
    loaded: list = attrs.Factory(list)  # the other agents ctx.agents() names
    replies: list = attrs.Factory(list)  # a human's answers to ctx.ask
    questions: list = attrs.Factory(list)
    overrides: list = attrs.Factory(list)
    details: dict = attrs.Factory(dict)

    def agents(self):
        return sorted(self.loaded)

    async def ask(self, question):
        self.questions.append(question)
        return self.replies.pop(0)

    async def complete(self, messages, **overrides):
        self.prompts.append(list(messages))
        self.overrides.append(overrides)
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return CompletionResponse(text=answer)
        return CompletionResponse(text=messages[-1].content)

    async def submit(self, agent_name, input):
        self.submitted.append((agent_name, input))
        return f"{agent_name}({input})"


async def test_autonomous_and_scheduled_answer_the_task_input():
    for mode in (AutonomousMode(), ScheduledMode()):
        assert await mode.execute(FakeContext(FakeAgent(), FakeTask("hi"))) == "hi"
        structured = await mode.execute(FakeContext(FakeAgent(), FakeTask({"b": 1, "a": 2})))
        assert json.loads(structured) == {"a": 2, "b": 1}


async def test_continuous_keeps_the_conversation_in_state_and_slides_the_window():
    agent = FakeAgent(continuous_config=ContinuousConfig(max_conversation_history=2))
    state: dict = {}
    for text in ("one", "two", "three"):
        ctx = FakeContext(agent, FakeTask(text), state=state)
        assert await ContinuousMode().execute(ctx) == text
    assert state["conversation_history"] == [{"user": "two", "assistant": "two"},
                                             {"user": "three", "assistant": "three"}]
    # the last call saw the history before it
    assert [m.content for m in ctx.prompts[0]] == ["one", "one", "two", "two", "three"]


async def test_continuous_summarises_dropped_turns_and_trims_when_summarising_fails():
    config = ContinuousConfig(max_conversation_history=1, conversation_pruning_strategy="summarize")
    agent = FakeAgent(continuous_config=config)
    state = {"conversation_history": [{"user": "my name is Ann", "assistant": "hi Ann"}]}
    ctx = FakeContext(agent, FakeTask("what is my name?"), state=state, answers=["Ann", "User is Ann."])
    assert await ContinuousMode().execute(ctx) == "Ann"
    assert state["conversation_summary"] == "User is Ann."
    assert len(state["conversation_history"]) == 1
    assert "my name is Ann" in ctx.prompts[1][0].content
    failing = FakeContext(agent, FakeTask("again"), state=state, answers=["ok", RuntimeError("model down")])
    await ContinuousMode().execute(failing)
    assert len(state["conversation_history"]) == 1 and state["conversation_summary"] == "User is Ann."
    assert failing.prompts[0][0].content.startswith("Summary of the earlier conversation:")


async def test_collaborative_sequential_chains_the_collaborators():
    config = CollaborativeConfig(preferred_collaborators=["a", "b", "c"], max_collaborators=2,
                                 planning_strategy="sequential")
    ctx = FakeContext(FakeAgent(collaborative_config=config), FakeTask("task"))
    assert await CollaborativeMode().execute(ctx) == "b(a(task))"
    assert ctx.prompts == []


async def test_collaborative_consensus_asks_everyone_and_reconciles():
    config = CollaborativeConfig(preferred_collaborators=["a", "b"], planning_strategy="consensus")
    ctx = FakeContext(FakeAgent(collaborative_config=config), FakeTask("q"), answers=["final"])
    assert await CollaborativeMode().execute(ctx) == "final"
    assert sorted(ctx.submitted) == [("a", "q"), ("b", "q")]
    assert "[a]\na(q)" in ctx.prompts[0][0].content and "[b]\nb(q)" in ctx.prompts[0][0].content


async def test_collaborative_hierarchical_follows_the_models_plan_and_synthesises():
    config = CollaborativeConfig(preferred_collaborators=["a", "b"], planning_strategy="hierarchical")
    plan = json.dumps({"steps": [{"agent": "b", "instruction": "research"}, {"agent": "x", "instruction": "?"},
                                 {"agent": "a", "instruction": "write"}]})
    ctx = FakeContext(FakeAgent(collaborative_config=config), FakeTask("report"), answers=[plan, "done"])
    assert await CollaborativeMode().execute(ctx) == "done"
    assert ctx.submitted == [("b", "research"), ("a", "write")]  # the unknown agent 'x' is dropped
    assert "b(research)" in ctx.prompts[1][0].content


async def test_collaborative_hierarchical_falls_back_when_the_plan_is_not_json():
    config = CollaborativeConfig(preferred_collaborators=["a", "b"], planning_strategy="hierarchical")
    ctx = FakeContext(FakeAgent(collaborative_config=config), FakeTask("t"), answers=["no plan", "done"])
    assert await CollaborativeMode().execute(ctx) == "done"
    assert ctx.submitted == [("a", "t"), ("b", "t")]


async def test_collaborative_offers_the_preferred_collaborators_first_then_the_others():
    config = CollaborativeConfig(preferred_collaborators=["b"], max_collaborators=3, planning_strategy="sequential")
    agent = FakeAgent(collaborative_config=config)
    ctx = FakeContext(agent, FakeTask("t"), loaded=["z", "a", "b", agent.name, "c"])
    assert await CollaborativeMode().execute(ctx) == "c(a(b(t)))"
    assert ctx.details["collaborators"] == ["b", "a", "c"]  # never itself, at most max_collaborators
    assert [step["result"] for step in ctx.details["steps"]] == ["b(t)", "a(b(t))", "c(a(b(t)))"]


async def test_collaborative_hierarchical_keeps_its_plan_and_asks_structured_output():
    config = CollaborativeConfig(preferred_collaborators=["a", "b"], planning_strategy="hierarchical")
    plan = json.dumps({"steps": [{"agent": "a", "instruction": "research"}]})
    ctx = FakeContext(FakeAgent(collaborative_config=config), FakeTask("report"), answers=[plan, "done"])
    assert await CollaborativeMode().execute(ctx) == "done"
    assert ctx.overrides[0] == {"response_format": {"type": "json_object"}}
    assert ctx.details["plan"] == [{"agent": "a", "instruction": "research"}]
    assert ctx.details["steps"] == [{"agent": "a", "instruction": "research", "result": "a(research)"}]


async def test_collaborative_coordinator_may_ask_a_human_before_planning():
    config = CollaborativeConfig(preferred_collaborators=["a", "b"], planning_strategy="hierarchical")
    question = json.dumps({"question": "Which quarter?"})
    plan = json.dumps({"steps": [{"agent": "b", "instruction": "Q3 numbers"}]})
    ctx = FakeContext(FakeAgent(collaborative_config=config), FakeTask("sales report"),
                      answers=[question, plan, "done"], replies=["Q3"])
    assert await CollaborativeMode().execute(ctx) == "done"
    assert ctx.questions == ["Which quarter?"]
    assert "You asked: Which quarter?\nThe user answered: Q3" in ctx.prompts[1][0].content
    assert ctx.details["clarifications"] == [{"question": "Which quarter?", "answer": "Q3"}]
    # without allow_human_clarification a question is not a plan: one step per collaborator
    quiet = CollaborativeConfig(preferred_collaborators=["a", "b"], allow_human_clarification=False)
    ctx = FakeContext(FakeAgent(collaborative_config=quiet), FakeTask("t"), answers=[question, "done"])
    assert await CollaborativeMode().execute(ctx) == "done"
    assert ctx.questions == [] and ctx.submitted == [("a", "t"), ("b", "t")]

