"""End to end: a running platform with this plugin, the reference agent, and the fake Messages API."""

from __future__ import annotations

import json
import logging

import agentrunner_anthropic
from anthropic_fake_server import answer, error, text_chunks
from anthropic_support import CANARY_KEY, MODEL, REFERENCE_AGENT

from agentrunner.testing.platform import http_client, running_platform

RETRYING_AGENT = REFERENCE_AGENT + "retry_config:\n  max_retries: 2\n  retry_delay_seconds: 0.01\n"


def platform(tmp_path, fake, agent: str = REFERENCE_AGENT):
    return running_platform(tmp_path, {"ANTHROPIC_API_KEY": CANARY_KEY, "ANTHROPIC_BASE_URL": fake.url},
                            files={"agent.yaml": agent}, plugins=[(agentrunner_anthropic, "anthropic")])


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for chunk in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in chunk.splitlines() if not line.startswith(":"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_a_task_on_the_reference_agent_completes_with_claudes_answer_and_usage(tmp_path, fake):
    fake.default = answer("Bonjour !", input_tokens=17, output_tokens=4)
    async with platform(tmp_path, fake) as running, http_client(running) as client:
        response = await client.post("/agents/claude-agent/tasks", json={"input": "Say hello in French", "wait": 10})
        execution = await response.json()

    assert response.status == 200
    assert (execution["status"], execution["result"], execution["error_message"]) == ("completed", "Bonjour !", None)
    assert execution["usage"] == {"input_tokens": 17, "output_tokens": 4, "model": MODEL}
    [received] = fake.requests
    assert received.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert received.body == {"model": MODEL, "max_tokens": 2000, "temperature": 0.7, "top_p": 1.0, "top_k": 40,
                             "system": "You are a helpful AI assistant.\n",
                             "messages": [{"role": "user", "content": "Say hello in French"}]}


async def test_a_streamed_task_sends_claudes_words_as_they_come(tmp_path, fake):
    text = "Bonjour, comment allez-vous ?"
    fake.default = answer(text, input_tokens=17, output_tokens=8)
    async with platform(tmp_path, fake) as running, http_client(running) as client:
        response = await client.post("/agents/claude-agent/tasks", json={"input": "Say hello", "stream": True})
        events = sse_events(await response.text())

    deltas = [data["text"] for event, data in events if event == "delta"]
    assert deltas == text_chunks(text)
    event, done = events[-1]
    assert (event, done["status"], done["result"]) == ("done", "completed", text)
    assert done["usage"] == {"input_tokens": 17, "output_tokens": 8, "model": MODEL}
    assert fake.requests[0].body["stream"] is True


async def test_a_rate_limited_call_is_retried_by_retry_config_and_completes(tmp_path, fake):
    fake.script(error(429, "slow down"), answer("Second time lucky."))
    async with platform(tmp_path, fake, RETRYING_AGENT) as running, http_client(running) as client:
        response = await client.post("/agents/claude-agent/tasks", json={"input": "Hi", "wait": 10})
        execution = await response.json()

    assert (execution["status"], execution["result"]) == ("completed", "Second time lucky.")
    assert len(fake.requests) == 2


async def test_a_rejected_key_fails_the_execution_at_once_and_the_key_is_nowhere(tmp_path, fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.script(error(401, f"invalid x-api-key: Bearer {CANARY_KEY}"))
    async with platform(tmp_path, fake, RETRYING_AGENT) as running, http_client(running) as client:
        response = await client.post("/agents/claude-agent/tasks", json={"input": "Hi", "wait": 10})
        execution = await response.json()
        stored = await (await client.get(f"/executions/{execution['execution_id']}")).text()
        dead_letters = await (await client.get("/dlq")).text()
        agent = await (await client.get("/agents/claude-agent")).text()

    assert execution["status"] == "failed"
    assert "authentication failed (401)" in execution["error_message"]
    assert len(fake.requests) == 1  # not retried, although retry_config allows two retries
    for text in (json.dumps(execution), stored, dead_letters, agent, caplog.text):
        assert CANARY_KEY not in text
