"""The example mode, run by a real platform: configured from YAML, validated, recorded."""

from __future__ import annotations

import textwrap

import agentrunner_review_mode
import pytest

import agentrunner
from agentrunner.agent_loader import AgentConfigError, LoaderOptions, load_agent_text
from agentrunner.interfaces import CompletionResponse
from agentrunner.plugins import Registry, make_plugin_manager
from agentrunner.testing.platform import http_client, running_platform

AGENT = textwrap.dedent("""\
    name: reviewer
    agent_type: specialist
    execution_mode: review
    llm_config: {provider: numbered, model: m}
    system_prompt: Answer carefully.
    review_config:
      rounds: 2
      criteria: accuracy
    """)


class Numbered:
    """A model that numbers its answers, to see which call produced what."""

    name = "numbered"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def complete(self, request):
        self.prompts.append(request.messages[-1].content)
        return CompletionResponse(text=f"answer {len(self.prompts)}")


class Models:
    def __init__(self) -> None:
        self.model = Numbered()

    @agentrunner.hookimpl
    def register_providers(self, register):
        register(self.model)


async def test_the_mode_drafts_critiques_and_revises(tmp_path):
    models = Models()
    plugins = [(agentrunner_review_mode, "review-mode"), (models, "numbered")]
    async with running_platform(tmp_path, files={"reviewer.yaml": AGENT}, plugins=plugins) as platform:
        async with http_client(platform) as client:
            response = await client.post("/agents/reviewer/tasks", json={"input": "Why is the sky blue?", "wait": 5})
            execution = await response.json()
    assert execution["status"] == "completed" and execution["result"] == "answer 5"
    assert execution["details"] == {"drafts": ["answer 1", "answer 3", "answer 5"],
                                    "critiques": ["answer 2", "answer 4"]}
    assert "for accuracy" in models.model.prompts[1]


def test_its_yaml_section_is_validated_like_the_built_in_ones():
    registry = Registry.from_plugin_manager(make_plugin_manager(load_entry_points=False, extra_plugins=[
        (agentrunner_review_mode, "review-mode")]))
    with pytest.raises(AgentConfigError) as caught:
        load_agent_text(AGENT.replace("rounds: 2", "rounds: -1").replace("provider: numbered, ", ""),
                        filename="reviewer.yaml", options=LoaderOptions(), registry=registry)
    assert "reviewer.yaml: review_config.rounds: must be at least 0 (got -1)" in str(caught.value)
