"""The plugin inside a running platform (HTTP API → orchestrator → provider → fake server),
and the validation warnings the loader gives for agents that use it."""

from __future__ import annotations

import json
import logging
import textwrap

import agentrunner_openai
import pytest
from openai_fake_server import Answer, Failure

from agentrunner.agent_loader import AgentConfigError, LoaderOptions, load_agent_text
from agentrunner.plugins import Registry, make_plugin_manager
from agentrunner.testing.platform import http_client, running_platform

CANARY = "sk-canary-e2e-1d2c3b4a59687f0e"
PLUGINS = [(agentrunner_openai, "openai")]


def reference_agent(base_url: str, **extra: str) -> str:
    """The reference's OpenAI example agent, pointed at an OpenAI-compatible server by ``base_url``."""
    text = textwrap.dedent(f"""\
        name: openai-assistant
        agent_type: assistant
        execution_mode: autonomous
        llm_config:
          provider: openai
          model: gpt-4                   # gpt-4, gpt-4-turbo-preview, gpt-3.5-turbo
          temperature: 0.7
          max_tokens: 2000
          top_p: 1.0
          frequency_penalty: 0.0
          presence_penalty: 0.0
          timeout: 60
          base_url: {base_url}

          # Optional: Model-specific settings
          response_format:               # For gpt-4-turbo-preview
            type: json_object            # Force JSON output

          seed: 42                       # Deterministic sampling (optional)
        system_prompt: You answer every question with a JSON object.
        """)
    return text + "".join(f"{key}:\n{textwrap.indent(value, '  ')}\n" for key, value in extra.items())


RETRY_FAST = "max_retries: 2\nretry_delay_seconds: 0.01\nexponential_backoff: false"


async def run_task(environ: dict[str, str], agent: str, tmp_path) -> dict:
    async with running_platform(tmp_path, environ, files={"agent.yaml": agent}, plugins=PLUGINS) as platform:
        async with http_client(platform) as client:
            response = await client.post("/agents/openai-assistant/tasks", json={"input": "Say hello.", "wait": 10})
            assert response.status == 200, await response.text()
            execution = await response.json()
            stored = await client.get(f"/executions/{execution['execution_id']}")
            assert stored.status == 200
            assert await stored.json() == execution
            return execution


async def test_an_agent_on_an_openai_compatible_server_completes(fake_openai, tmp_path):
    fake_openai.reply(Answer(text='{"greeting": "Hello!"}', model="gpt-4-0613", prompt_tokens=31,
                             completion_tokens=7))
    execution = await run_task({}, reference_agent(fake_openai.base_url), tmp_path)

    assert execution["status"] == "completed", execution["error_message"]
    assert execution["result"] == '{"greeting": "Hello!"}'
    assert execution["usage"] == {"input_tokens": 31, "output_tokens": 7, "model": "gpt-4-0613"}
    [seen] = fake_openai.requests
    assert seen.body["messages"] == [
        {"role": "system", "content": "You answer every question with a JSON object."},
        {"role": "user", "content": "Say hello."},
    ]
    assert {k: seen.body[k] for k in ("model", "temperature", "max_tokens", "top_p", "frequency_penalty",
                                      "presence_penalty", "response_format", "seed")} == {
        "model": "gpt-4", "temperature": 0.7, "max_tokens": 2000, "top_p": 1.0, "frequency_penalty": 0.0,
        "presence_penalty": 0.0, "response_format": {"type": "json_object"}, "seed": 42}
    assert seen.headers["authorization"].startswith("Bearer ")  # a placeholder: this server needs no key


async def test_a_rate_limit_is_retried_by_the_agents_retry_config(fake_openai, tmp_path):
    fake_openai.reply(Failure(429, "Rate limit reached for gpt-4."), Answer(text="Second time lucky."))
    agent = reference_agent(fake_openai.base_url, retry_config=RETRY_FAST)
    execution = await run_task({"OPENAI_API_KEY": CANARY}, agent, tmp_path)

    assert execution["status"] == "completed", execution["error_message"]
    assert execution["result"] == "Second time lucky."
    assert len(fake_openai.requests) == 2
    assert all(r.headers["authorization"] == f"Bearer {CANARY}" for r in fake_openai.requests)


async def test_a_wrong_key_fails_after_one_request_without_showing_the_key(fake_openai, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake_openai.reply(Failure(401, f"Incorrect API key provided: {CANARY}."))
    agent = reference_agent(fake_openai.base_url, retry_config=RETRY_FAST)
    execution = await run_task({"OPENAI_API_KEY": CANARY}, agent, tmp_path)

    assert execution["status"] == "failed"
    assert "authentication failed (401)" in execution["error_message"]
    assert len(fake_openai.requests) == 1
    assert CANARY not in json.dumps(execution)
    assert CANARY not in caplog.text
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("db.sqlite*"))  # with its WAL
    assert b"authentication failed (401)" in stored
    assert CANARY.encode() not in stored


# --- Validation ----------------------------------------------------------------------------------


def load(text: str, **options):
    registry = Registry.from_plugin_manager(make_plugin_manager(load_entry_points=False, extra_plugins=PLUGINS))
    return load_agent_text(text, filename="agent.yaml", options=LoaderOptions(environ={}, **options),
                           registry=registry)


def test_the_reference_agent_validates_without_a_warning():
    _, warnings = load(reference_agent("http://127.0.0.1:8000/v1"))
    assert warnings == []


@pytest.mark.parametrize(("line", "field"), [
    ("top_k: 40", "top_k"),
    ("num_ctx: 4096", "num_ctx"),
    ("num_predict: 512", "num_predict"),
    ("repeat_penalty: 1.1", "repeat_penalty"),
    ("region: us-east-1", "region"),
    ("endpoint_url: https://bedrock.example.com", "endpoint_url"),
])
def test_a_field_openai_does_not_support_is_a_warning(line, field):
    text = reference_agent("http://127.0.0.1:8000/v1").replace("  seed: 42", f"  seed: 42\n  {line}")
    _, warnings = load(text)
    assert [str(w) for w in warnings] == [f"agent.yaml: llm_config.{field}: not supported by provider 'openai'"]


def test_fields_left_out_give_no_warning():
    _, warnings = load("name: minimal\nagent_type: assistant\nexecution_mode: autonomous\n"
                       "llm_config: {provider: openai, model: gpt-3.5-turbo}\nsystem_prompt: Hi.\n")
    assert warnings == []


def test_the_providers_own_checks_are_errors():
    text = reference_agent("http://127.0.0.1:8000/v1").replace(
        "    type: json_object            # Force JSON output",
        "    type: json_schema\n    json_schema: {schema: {type: object}}")
    with pytest.raises(AgentConfigError) as caught:
        load(text)
    assert [str(p) for p in caught.value.problems] == [
        "agent.yaml: llm_config.response_format.json_schema.name: required by OpenAI: letters, digits, _ and -, "
        "at most 64 characters"]
