"""What ``agentrunner validate`` says about an anthropic agent: unsupported fields warn, bad values are errors."""

from __future__ import annotations

import pytest
from agentrunner_anthropic import AnthropicProvider
from anthropic_support import REFERENCE_AGENT, llm, load_agent, registry

from agentrunner.agent_loader import AgentConfigError

UNSUPPORTED = ["endpoint_url", "frequency_penalty", "num_ctx", "num_predict", "presence_penalty", "region",
               "repeat_penalty", "response_format", "seed"]
SETTINGS_OF_UNSUPPORTED = {
    "frequency_penalty": "0.5", "presence_penalty": "0.2", "seed": "42", "response_format": "{type: json_object}",
    "num_ctx": "4096", "num_predict": "512", "repeat_penalty": "1.1", "region": "us-east-1",
    "endpoint_url": "https://bedrock.example.com",
}


def with_fields(**fields: str) -> str:
    lines = "".join(f"  {name}: {value}\n" for name, value in fields.items())
    return REFERENCE_AGENT.replace("  timeout: 60\n", "  timeout: 60\n" + lines)


def test_the_plugin_registers_the_anthropic_provider():
    assert isinstance(registry().providers["anthropic"], AnthropicProvider)


def test_the_reference_agent_and_a_base_url_load_without_a_word():
    agent, warnings = load_agent(with_fields(base_url="https://gateway.example.com"))
    assert warnings == []
    assert agent.llm_config.top_k == 40 and agent.llm_config.base_url == "https://gateway.example.com"


def test_every_field_anthropic_does_not_have_is_reported_when_the_agent_sets_it():
    _, warnings = load_agent(with_fields(**SETTINGS_OF_UNSUPPORTED))
    assert warnings == [f"claude.yaml: llm_config.{name}: not supported by provider 'anthropic'"
                        for name in UNSUPPORTED]


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_one_unsupported_field_is_the_only_warning(name):
    _, warnings = load_agent(with_fields(**{name: SETTINGS_OF_UNSUPPORTED[name]}))
    assert warnings == [f"claude.yaml: llm_config.{name}: not supported by provider 'anthropic'"]


def test_a_temperature_above_one_is_an_error_for_anthropic():
    with pytest.raises(AgentConfigError) as caught:
        load_agent(REFERENCE_AGENT.replace("temperature: 0.7", "temperature: 1.5"))
    assert [str(problem) for problem in caught.value.problems] == [
        "claude.yaml: llm_config.temperature: must be between 0.0 and 1.0 for provider 'anthropic' (got 1.5)"]


@pytest.mark.parametrize(("temperature", "problems"), [
    (0.0, []), (1.0, []),
    (1.01, [("temperature", "must be between 0.0 and 1.0 for provider 'anthropic' (got 1.01)")]),
])
def test_validate(temperature, problems):
    assert AnthropicProvider().validate(llm(temperature=temperature)) == problems
