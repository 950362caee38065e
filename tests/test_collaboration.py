"""A hierarchical collaboration over HTTP: the coordinator asks a human, plans, delegates, combines."""

from __future__ import annotations

import json
import textwrap

import agentrunner
from agentrunner.interfaces import CompletionResponse, Usage
from agentrunner.testing.platform import http_client, running_platform


class Coordinator:
    """The coordinator's model: a question first, then a plan once answered, then the synthesis."""

    name = "coordinator-model"

    def __init__(self) -> None:
        self.requests = []

    async def complete(self, request):
        self.requests.append(request)
        prompt = request.messages[-1].content
        if prompt.startswith("Split this task"):
            if "The user answered" not in prompt:
                return CompletionResponse(json.dumps({"question": "For which region?"}), usage=Usage(5, 5))
            plan = {"steps": [{"agent": "researcher", "instruction": "collect EMEA figures"},
                              {"agent": "writer", "instruction": "write the EMEA summary"}]}
            return CompletionResponse(json.dumps(plan), usage=Usage(5, 5))
        return CompletionResponse("FINAL: " + prompt.split("Results of the plan's steps:\n", 1)[1][:200],
                                  usage=Usage(5, 5))


class Plugin:
    def __init__(self) -> None:
        self.model = Coordinator()

    @agentrunner.hookimpl
    def register_providers(self, register):
        register(self.model)


def agent(name: str, mode: str, extra: str = "", provider: str = "echo") -> str:
    return textwrap.dedent(f"""\
        name: {name}
        agent_type: assistant
        execution_mode: {mode}
        llm_config: {{provider: {provider}, model: m}}
        system_prompt: Work.
        """) + textwrap.dedent(extra)


FILES = {
    "lead.yaml": agent("lead", "collaborative", """\
        collaborative_config:
          preferred_collaborators: [researcher, writer]
          planning_strategy: hierarchical
          allow_human_clarification: true
        """, provider="coordinator-model"),
    "researcher.yaml": agent("researcher", "autonomous"),
    "writer.yaml": agent("writer", "autonomous"),
}


async def test_a_clarification_round_trip_then_the_plan_runs_on_the_collaborators(tmp_path):
    plugin = Plugin()
    async with running_platform(tmp_path, files=FILES, plugins=[(plugin, "coordinator")]) as platform:
        async with http_client(platform) as client:
            response = await client.post("/agents/lead/tasks", json={"input": "quarterly report", "wait": 5})
            waiting = await response.json()
            assert waiting["status"] == "awaiting_input"
            assert waiting["details"]["question"] == "For which region?"
            execution_id = waiting["execution_id"]
            response = await client.post(f"/executions/{execution_id}/input", json={"input": "EMEA"})
            assert response.status == 200 and (await response.json())["status"] == "running"

            await platform.orchestrator.wait(execution_id, 5)
            done = await (await client.get(f"/executions/{execution_id}")).json()
            assert done["status"] == "completed", done
    details = done["details"]
    assert details["clarifications"] == [{"question": "For which region?", "answer": "EMEA"}]
    assert details["plan"] == [{"agent": "researcher", "instruction": "collect EMEA figures"},
                               {"agent": "writer", "instruction": "write the EMEA summary"}]
    assert [(s["agent"], s["result"]) for s in details["steps"]] == [
        ("researcher", "collect EMEA figures"), ("writer", "write the EMEA summary")]  # echo collaborators
    assert done["result"].startswith("FINAL: [researcher: collect EMEA figures]")
    # the planning calls asked for JSON
    assert plugin.model.requests[0].llm_config.response_format == {"type": "json_object"}
