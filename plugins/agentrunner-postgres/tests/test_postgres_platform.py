"""End to end: a real platform on the postgres store (HTTP API → orchestrator → echo agent → PostgreSQL)."""

from __future__ import annotations

import asyncio
import textwrap

import agentrunner_postgres
from postgres_support import POOL, connect

from agentrunner.testing.platform import http_client, running_platform

PLUGINS = [(agentrunner_postgres, "postgres")]

ECHO = textwrap.dedent("""\
    name: echo-bot
    agent_type: assistant
    execution_mode: autonomous
    llm_config:
      temperature: 0.7
    system_prompt: Repeat what you are told.
    """)

CONTINUOUS = textwrap.dedent("""\
    name: chat-bot
    agent_type: assistant
    execution_mode: continuous
    llm_config:
      temperature: 0.7
    system_prompt: Remember the conversation.
    """)


def _environ(url: str) -> dict[str, str]:
    return {"STATE_BACKEND": "postgres", "DATABASE_URL": url, **POOL}


async def test_tasks_through_the_http_api_complete_and_are_stored_in_postgres(tmp_path, empty_database):
    async with running_platform(tmp_path, _environ(empty_database), files={"echo.yaml": ECHO},
                                plugins=PLUGINS) as platform:
        assert platform.store.name == "postgres"
        async with http_client(platform) as client:
            health = await client.get("/health")
            assert health.status == 200, await health.text()
            assert (await health.json())["dependencies"]["store"] == {"status": "ok", "backend": "postgres"}

            response = await client.post("/agents/echo-bot/tasks", json={"input": "héllo 🚀", "wait": 10})
            assert response.status == 200, await response.text()
            execution = await response.json()
            assert (execution["status"], execution["result"]) == ("completed", "héllo 🚀")
            stored = await client.get(f"/executions/{execution['execution_id']}")
            assert await stored.json() == execution

            answers = await asyncio.gather(*(
                client.post("/agents/echo-bot/tasks", json={"input": f"task {i}", "data": {"i": i}, "wait": 15})
                for i in range(20)))
            results = [await answer.json() for answer in answers]
            assert [answer.status for answer in answers] == [200] * 20, results
            assert sorted(r["result"] for r in results) == sorted(f"task {i}" for i in range(20))

            first = await client.post("/agents/echo-bot/tasks", json={"input": "once", "idempotency_key": "k-1",
                                                                      "wait": 10})
            again = await client.post("/agents/echo-bot/tasks", json={"input": "twice", "idempotency_key": "k-1",
                                                                      "wait": 10})
            assert (await again.json())["execution_id"] == (await first.json())["execution_id"]

    conn = await connect(empty_database)
    try:
        rows = await conn.fetch("SELECT execution_id, status, result, input, data, attempts, started_at, "
                                "completed_at, duration_seconds FROM execution_history WHERE agent_name = 'echo-bot'")
    finally:
        await conn.close()
    assert len(rows) == 22
    assert all(row["status"] == "completed" and row["attempts"] == 1 and row["duration_seconds"] is not None
               and row["completed_at"] >= row["started_at"] for row in rows)
    by_id = {row["execution_id"]: row for row in rows}
    assert by_id[execution["execution_id"]]["result"] == '"héllo 🚀"'  # JSONB, as PostgreSQL holds it
    assert sorted(row["data"] for row in rows if row["data"] != "{}") == sorted(
        f'{{"i": {i}}}' for i in range(20))


async def test_state_and_history_survive_a_restart_of_the_platform(tmp_path, empty_database):
    environ = _environ(empty_database)
    async with running_platform(tmp_path, environ, files={"chat.yaml": CONTINUOUS}, plugins=PLUGINS) as platform:
        async with http_client(platform) as client:
            for text in ("my name is Ada", "what is my name?"):
                response = await client.post("/agents/chat-bot/tasks", json={"input": text, "wait": 10})
                assert response.status == 200, await response.text()
                assert (await response.json())["status"] == "completed"
        async with http_client(platform, "state") as state_client:
            state = await (await state_client.get("/state/chat-bot")).json()
        assert state["version"] >= 1

    async with running_platform(tmp_path, environ, files={"chat.yaml": CONTINUOUS}, plugins=PLUGINS) as platform:
        async with http_client(platform) as client:
            listed = await (await client.get("/executions?agent_name=chat-bot")).json()
            assert [e["input"] for e in listed["executions"]] == ["what is my name?", "my name is Ada"]
        async with http_client(platform, "state") as state_client:
            assert await (await state_client.get("/state/chat-bot")).json() == state
