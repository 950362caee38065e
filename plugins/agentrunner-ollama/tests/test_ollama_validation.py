"""What ``agentrunner validate`` says about an Ollama agent, and how the plugin is found."""

from __future__ import annotations

import importlib.metadata

import agentrunner_ollama
import attrs
import pytest
from agentrunner_ollama import OllamaProvider
from ollama_agents import REFERENCE_AGENT, agent_yaml, load_agent, registry

from agentrunner.agent_loader import AgentConfigError
from agentrunner.schema import LLMConfig


def problems_of(text: str, **kwargs) -> list[str]:
    with pytest.raises(AgentConfigError) as caught:
        load_agent(text, **kwargs)
    return [str(problem) for problem in caught.value.problems]


def test_the_entry_point_registers_the_provider():
    [entry_point] = [ep for ep in importlib.metadata.entry_points(group="agentrunner") if ep.name == "ollama"]
    assert entry_point.load() is agentrunner_ollama
    assert isinstance(registry().providers["ollama"], OllamaProvider)


def test_every_field_but_bedrocks_is_supported():
    every_field = {field.name for field in attrs.fields(LLMConfig)} - {"explicit_fields"}
    assert OllamaProvider.supported_options == every_field - {"region", "endpoint_url"}


def test_the_reference_agent_has_nothing_to_report():
    agent, warnings = load_agent(REFERENCE_AGENT)
    assert warnings == []
    assert agent.llm_config.provider == "ollama"


def test_every_supported_field_set_at_once_has_nothing_to_report():
    _, warnings = load_agent(agent_yaml(
        temperature=0.3, max_tokens=100, top_p=0.9, frequency_penalty=0.1, presence_penalty=0.1, timeout=30,
        response_format={"type": "json_object"}, seed=1, top_k=20, base_url="http://ollama.internal:11434",
        num_ctx=2048, num_predict=64, repeat_penalty=1.2))
    assert warnings == []


@pytest.mark.parametrize(("field", "value"), [("region", "us-east-1"), ("endpoint_url", "https://bedrock.example")])
def test_a_field_ollama_ignores_is_a_warning_when_the_agent_sets_it(field, value):
    _, warnings = load_agent(agent_yaml(**{field: value}))
    assert warnings == [f"agent.yaml: llm_config.{field}: not supported by provider 'ollama'"]

    assert problems_of(agent_yaml(**{field: value}), strict=True) == [
        f"agent.yaml: llm_config.{field}: not supported by provider 'ollama'"]


def test_a_json_schema_without_its_schema_cannot_be_sent():
    text = agent_yaml(response_format={"type": "json_schema", "json_schema": {"name": "reply"}})
    assert problems_of(text) == ["agent.yaml: llm_config.response_format.json_schema.schema: required by provider "
                                 "'ollama': the JSON Schema the answer must follow"]


@pytest.mark.parametrize(("base_url", "says"), [
    ("http://localhost:11434/v1", "ends with /v1, Ollama's OpenAI-compatible API"),
    ("http://localhost:11434/api/chat", "adds /api/chat itself"),
    ("http://gpu-box:11434/api/", "adds /api/chat itself"),
])
def test_a_base_url_that_is_not_the_servers_root_is_an_error(base_url, says):
    [problem] = problems_of(agent_yaml(base_url=base_url))
    assert problem.startswith("agent.yaml: llm_config.base_url: ")
    assert says in problem


def test_a_base_url_behind_a_proxy_path_is_fine():
    _, warnings = load_agent(agent_yaml(base_url="https://user:secret@proxy.example/ollama"))
    assert warnings == []
