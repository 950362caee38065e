"""End to end: a real platform on the Redis cache, tasks through the HTTP API, state written through to Redis,
and tasks that keep running while Redis is unreachable."""

from __future__ import annotations

import asyncio
import json
import textwrap
import zlib

import agentrunner_redis
from agentrunner_redis import COMPRESSED
from redis_fault_proxy import FaultProxy

from agentrunner.testing.platform import http_client, running_platform

PLUGINS = [(agentrunner_redis, "redis")]
# No retries: a state conflict caused by a stale cached state would fail the task instead of hiding behind a retry.
CHATTY = textwrap.dedent("""\
    name: chatty
    agent_type: assistant
    execution_mode: continuous
    llm_config:
      provider: echo
      model: echo
    system_prompt: You remember the conversation.
    retry_config:
      max_retries: 0
    continuous_config:
      max_conversation_history: 100
    """)


async def ask(client, text: str) -> dict:
    response = await client.post("/agents/chatty/tasks", json={"input": text, "wait": 10})
    assert response.status == 200, await response.text()
    execution = await response.json()
    assert execution["status"] == "completed", execution["error_message"]
    assert execution["result"] == text
    stored = await client.get(f"/executions/{execution['execution_id']}")
    assert (await stored.json())["status"] == "completed"
    return execution


async def cached_state(raw, key_prefix: str) -> tuple[dict | None, bytes | None, int]:
    stored = await raw.get(f"{key_prefix}state:chatty")
    if stored is None:
        return None, None, -2
    payload = zlib.decompress(stored[1:]) if stored[:1] == COMPRESSED else stored
    return json.loads(payload), stored, await raw.ttl(f"{key_prefix}state:chatty")


async def test_a_continuous_agent_state_is_written_through_to_redis(tmp_path, redis_environ, raw, key_prefix):
    environ = {**redis_environ, "REDIS_STATE_TTL": "1234", "STATE_COMPRESSION_THRESHOLD": "600"}
    async with running_platform(tmp_path, environ, files={"chatty.yaml": CHATTY}, plugins=PLUGINS) as platform:
        assert isinstance(platform.cache, agentrunner_redis.RedisCache)
        async with http_client(platform) as client:
            await ask(client, "my name is Ada")
            state, stored, ttl = await cached_state(raw, key_prefix)
            assert state["version"] == 1 and stored[:1] != COMPRESSED, len(stored)  # small: plain JSON
            assert 1230 <= ttl <= 1234

            for text in ("I like tea", "what is my name?", "and what do I like?"):
                await ask(client, text)
            state, stored, ttl = await cached_state(raw, key_prefix)
            assert stored[:1] == COMPRESSED  # the history grew past STATE_COMPRESSION_THRESHOLD
            assert 1230 <= ttl <= 1234
            in_store = await platform.store.get_state("chatty")
            assert state == in_store.to_json()
            assert state["version"] == 4
            assert [turn["user"] for turn in state["state_data"]["conversation_history"]] == [
                "my name is Ada", "I like tea", "what is my name?", "and what do I like?"]

            health = await client.get("/health")
            assert health.status == 200
            assert (await health.json())["dependencies"]["cache"] == {"status": "ok", "backend": "redis"}


async def test_tasks_keep_running_while_redis_is_unreachable(tmp_path, redis_environ, redis_server, raw,
                                                             key_prefix):
    proxy = FaultProxy(*redis_server)
    await proxy.start()
    environ = {**redis_environ, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(proxy.port),
               "CACHE_OPERATION_TIMEOUT": "0.5", "REDIS_SOCKET_CONNECT_TIMEOUT": "0.5"}
    try:
        async with running_platform(tmp_path, environ, files={"chatty.yaml": CHATTY}, plugins=PLUGINS) as platform:
            platform.cache.retry_interval = 0.2
            async with http_client(platform) as client:
                await ask(client, "one")
                assert (await cached_state(raw, key_prefix))[0]["version"] == 1

                await proxy.cut()
                for text in ("two", "three"):
                    await ask(client, text)  # the StateManager falls back to the store
                health = await client.get("/health")
                assert health.status == 200
                report = await health.json()
                assert report["status"] == "degraded"
                assert report["dependencies"]["cache"]["status"] == "down"
                assert (await cached_state(raw, key_prefix))[0]["version"] == 1  # Redis missed two writes

                await proxy.restore()
                await asyncio.sleep(platform.cache.retry_interval)
                health = await client.get("/health")
                assert (await health.json())["status"] == "ok"
                await ask(client, "four")  # the stale version 1 is not served: no state conflict
                state = (await cached_state(raw, key_prefix))[0]
                assert state["version"] == 4
                assert [turn["user"] for turn in state["state_data"]["conversation_history"]] == [
                    "one", "two", "three", "four"]
    finally:
        await proxy.stop()
