"""The plugin inside a running platform (HTTP task → provider → fake Bedrock) and in agent validation."""

from __future__ import annotations

import json
import logging
import textwrap

import agentrunner_bedrock
import pytest
from bedrock_fake_server import Answer, Failure
from bedrock_helpers import KEY_ID, SECRET, SONNET

from agentrunner.agent_loader import AgentConfigError, LoaderOptions, load_agent_text
from agentrunner.plugins import Registry, make_plugin_manager
from agentrunner.testing.platform import http_client, running_platform

#: The reference's example agent for Bedrock (configuration-reference.md, "AWS Bedrock").
REFERENCE_AGENT = """\
name: bedrock-assistant
agent_type: assistant
execution_mode: autonomous
system_prompt: You are a helpful assistant.
llm_config:
  provider: bedrock
  model: anthropic.claude-3-sonnet-20240229-v1:0
  temperature: 0.7
  max_tokens: 2000
  top_p: 1.0

  # AWS-specific settings
  region: us-east-1              # AWS region
  endpoint_url: null             # Custom endpoint (optional)
"""

#: The same agent without ``endpoint_url: null``, which means the same: the core refuses an explicit null there
#: (``must be an http:// or https:// URL (got null)``), see test_the_reference_example_verbatim_loads.
LOADABLE_AGENT = REFERENCE_AGENT.replace("  endpoint_url: null             # Custom endpoint (optional)\n", "")

ENVIRON = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
PLUGINS = [(agentrunner_bedrock, "bedrock")]


def agent_at(url: str, extra: str = "") -> str:
    return REFERENCE_AGENT.replace("endpoint_url: null", f"endpoint_url: {url}") + textwrap.dedent(extra)


async def run_task(tmp_path, agent_yaml: str) -> tuple[dict, str]:
    """Start a platform with the agent, run one task over HTTP; the execution and its stored JSON."""
    async with running_platform(tmp_path, ENVIRON, files={"agent.yaml": agent_yaml}, plugins=PLUGINS) as platform:
        async with http_client(platform) as client:
            response = await client.post("/agents/bedrock-assistant/tasks", json={"input": "What is 2+2?", "wait": 10})
            assert response.status == 200, await response.text()
            execution = await response.json()
            stored = await client.get(f"/executions/{execution['execution_id']}")
            return execution, await stored.text()


# --- end to end ----------------------------------------------------------------------------------------------


async def test_a_task_runs_on_bedrock_and_records_usage_and_model(tmp_path, fake):
    execution, _ = await run_task(tmp_path, agent_at(fake.url))

    assert execution["status"] == "completed", execution["error_message"]
    assert execution["result"] == "Hello from Bedrock."
    assert execution["usage"] == {"input_tokens": 12, "output_tokens": 7, "model": SONNET}
    [seen] = fake.requests
    assert seen.model_id == SONNET
    assert seen.body["system"] == [{"text": "You are a helpful assistant."}]
    assert seen.body["inferenceConfig"] == {"maxTokens": 2000, "temperature": 0.7, "topP": 1.0}
    assert seen.body["messages"][-1] == {"role": "user", "content": [{"text": "What is 2+2?"}]}
    assert f"Credential={KEY_ID}/" in seen.headers["authorization"]


async def test_a_throttled_call_is_retried_by_retry_config_only(tmp_path, fake):
    fake.reply(Failure(429, "ThrottlingException", "Too many requests, please wait before trying again."),
               Answer(text=("4",)))
    retry = """\
    retry_config:
      max_retries: 2
      retry_delay_seconds: 0.01
    """
    execution, _ = await run_task(tmp_path, agent_at(fake.url, retry))

    assert execution["status"] == "completed", execution["error_message"]
    assert execution["result"] == "4"
    assert len(fake.requests) == 2


@pytest.mark.parametrize("failure", [
    Failure(403, "UnrecognizedClientException", "The security token included in the request is invalid."),
    Failure(401, "UnauthorizedException", "Invalid credentials"),
], ids=["bedrock-403", "gateway-401"])
async def test_bad_credentials_fail_the_execution_after_one_request_without_the_key(tmp_path, fake, caplog, failure):
    caplog.set_level(logging.DEBUG)
    fake.reply(failure)
    retry = """\
    retry_config:
      max_retries: 2
      retry_delay_seconds: 0.01
    """
    execution, stored = await run_task(tmp_path, agent_at(fake.url, retry))

    assert execution["status"] == "failed"
    assert "authentication failed" in execution["error_message"]
    assert len(fake.requests) == 1
    assert json.loads(stored)["status"] == "failed"
    for text in (json.dumps(execution), stored, caplog.text):
        assert SECRET not in text


# --- validation ----------------------------------------------------------------------------------------------


def load(text: str, *, strict: bool = False):
    registry = Registry.from_plugin_manager(make_plugin_manager(load_entry_points=False, extra_plugins=PLUGINS))
    return load_agent_text(text, filename="agent.yaml", options=LoaderOptions(strict=strict, environ={}),
                           registry=registry)


def problems_of(text: str) -> list[str]:
    with pytest.raises(AgentConfigError) as caught:
        load(text)
    return [str(problem) for problem in caught.value.problems]


def test_the_reference_example_loads_without_a_warning():
    agent, warnings = load(LOADABLE_AGENT)
    assert warnings == []
    assert agent.llm_config.provider == "bedrock"


def test_the_reference_example_verbatim_loads():
    _, warnings = load(REFERENCE_AGENT)
    assert warnings == []


def test_fields_bedrock_does_not_support_are_warned_about_only_when_set():
    unsupported = """\
      frequency_penalty: 0.5
      presence_penalty: 0.1
      seed: 42
      response_format: {type: json_object}
      num_ctx: 4096
      num_predict: 512
      repeat_penalty: 1.1
      top_k: 40
      timeout: 30
    """
    text = LOADABLE_AGENT.replace("  top_p: 1.0\n", "  top_p: 1.0\n" + textwrap.indent(textwrap.dedent(unsupported),
                                                                                       "  "))
    _, warnings = load(text)
    assert [str(w) for w in warnings] == [
        f"agent.yaml: llm_config.{field}: not supported by provider 'bedrock'"
        for field in ("frequency_penalty", "num_ctx", "num_predict", "presence_penalty", "repeat_penalty",
                      "response_format", "seed")
    ]


def test_top_k_on_a_model_that_is_not_anthropic_is_an_error():
    text = LOADABLE_AGENT.replace(SONNET, "meta.llama3-8b-instruct-v1:0").replace("  top_p: 1.0\n",
                                                                                  "  top_p: 1.0\n  top_k: 40\n")
    [problem] = problems_of(text)
    assert problem.startswith("agent.yaml: llm_config.top_k: only Anthropic models on Bedrock accept top_k")


def test_a_titan_text_model_refuses_a_system_prompt_and_tools():
    titan = LOADABLE_AGENT.replace(SONNET, "amazon.titan-text-express-v1")
    assert problems_of(titan) == [
        "agent.yaml: system_prompt: model amazon.titan-text-express-v1 does not accept a system prompt in the "
        "Bedrock Converse API; choose a model that does (e.g. anthropic.claude-3-haiku-20240307-v1:0)",
    ]
    with_tools = titan + "tools:\n  - {name: lookup, type: api, url: 'https://example.com/lookup'}\n"
    problems = problems_of(with_tools)
    assert [problem.split(":")[1].strip() for problem in problems] == ["system_prompt", "tools"]
    assert problems[1].startswith("agent.yaml: tools: model amazon.titan-text-express-v1 does not accept tools in the "
                                  "Bedrock Converse API")
