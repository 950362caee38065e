"""End to end: the reference's Ollama agent on a running platform, over the orchestrator's HTTP API."""

from __future__ import annotations

import json
import logging

import agentrunner_ollama
from ollama_agents import REFERENCE_AGENT
from ollama_fake_server import answer, error

from agentrunner.testing.platform import http_client, running_platform

CANARY = "canary-pw-0b5e27d4"
FAST_RETRIES = "retry_config: {max_retries: 2, retry_delay_seconds: 0.01}\n"


def environment(url: str) -> dict[str, str]:
    return {"OLLAMA_BASE_URL": url}


async def run_task(tmp_path, url: str, agent_yaml: str) -> dict:
    async with running_platform(tmp_path, environment(url), files={"agent.yaml": agent_yaml},
                                plugins=[(agentrunner_ollama, "ollama")]) as platform:
        async with http_client(platform) as client:
            response = await client.post("/agents/local-assistant/tasks", json={"input": "Hello?", "wait": 10})
            assert response.status == 200, await response.text()
            execution = await response.json()
            stored = await client.get(f"/executions/{execution['execution_id']}")
            assert stored.status == 200
            return {"execution": execution, "stored": await stored.text()}


async def test_a_task_completes_with_ollamas_answer_and_usage(tmp_path, fake_ollama):
    fake_ollama.push(answer("Hello ", "from llama2", prompt_eval_count=40, eval_count=9))

    execution = (await run_task(tmp_path, fake_ollama.url, REFERENCE_AGENT))["execution"]

    assert execution["status"] == "completed", execution
    assert execution["result"] == "Hello from llama2"
    assert execution["usage"] == {"input_tokens": 40, "output_tokens": 9, "model": "llama2"}
    [seen] = fake_ollama.requests
    assert seen.body["model"] == "llama2"
    assert seen.body["options"] == {"temperature": 0.7, "num_predict": 512, "num_ctx": 4096, "repeat_penalty": 1.1}
    assert seen.body["messages"][-1] == {"role": "user", "content": "Hello?"}


async def test_a_rate_limit_is_retried_by_the_agents_retry_config(tmp_path, fake_ollama):
    fake_ollama.push(error(429, "too many requests"), answer("after the wait"))

    execution = (await run_task(tmp_path, fake_ollama.url, REFERENCE_AGENT + FAST_RETRIES))["execution"]

    assert execution["status"] == "completed", execution
    assert execution["result"] == "after the wait"
    assert len(fake_ollama.requests) == 2


async def test_an_authentication_failure_fails_at_once_without_showing_the_password(tmp_path, fake_ollama, caplog):
    caplog.set_level(logging.DEBUG)
    fake_ollama.push(error(401, f"unauthorized ({CANARY})"))
    url = fake_ollama.url.replace("http://", f"http://ollama-user:{CANARY}@")

    outcome = await run_task(tmp_path, url, REFERENCE_AGENT + FAST_RETRIES)

    execution = outcome["execution"]
    assert execution["status"] == "failed", execution
    assert "authentication failed (401)" in execution["error_message"]
    assert len(fake_ollama.requests) == 1
    assert CANARY not in json.dumps(execution)
    assert CANARY not in outcome["stored"]
    assert CANARY not in caplog.text
