"""The HTTP services on the embedded defaults, through a real HTTP client."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import aiohttp
import pytest

import agentrunner
from agentrunner.plugins import make_plugin_manager
from agentrunner.runtime import Platform
from agentrunner.settings import load_settings
from agentrunner.web import config as config_service
from agentrunner.web import orchestrator as orchestrator_service
from agentrunner.web import state as state_service
from agentrunner.web.common import MAX_BODY_BYTES
from agentrunner.web.server import SERVICES, start_services

CANARY = "canary-secret-7f3a9c1e"
API_KEY = "k" * 40

ECHO = textwrap.dedent("""\
    name: echo-agent
    agent_type: assistant
    execution_mode: autonomous
    llm_config:
      temperature: 0.7
    system_prompt: Echo.
    event_subscriptions: ["customer.ticket.*"]
    tools:
      - name: lookup
        type: api
        url: https://api.example.com/lookup
        auth:
          type: bearer_token
          token: "${SECRET_TOKEN}"
    """)


@pytest.fixture
async def platform(tmp_path: Path, request):
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "echo-agent.yaml").write_text(ECHO)
    environ = {"SQLITE_PATH": str(tmp_path / "db.sqlite"), "CONFIG_AGENTS_DIR": str(agents),
               "CONFIG_HOT_RELOAD": "false", "SECRET_TOKEN": CANARY,
               **getattr(request, "param", {})}
    platform = Platform(load_settings(environ=environ, env_file=None))
    await platform.start()
    yield platform
    await platform.stop(grace=1)


@pytest.fixture
async def api(platform, aiohttp_client):
    return await aiohttp_client(orchestrator_service.create_app(platform))


async def post(client, path, body, **kwargs):
    response = await client.post(path, json=body, **kwargs)
    return response.status, await response.json()


async def test_a_task_with_wait_returns_the_finished_execution(api):
    status, body = await post(api, "/agents/echo-agent/tasks", {"input": "hi there", "wait": 5})
    assert status == 200
    assert body["status"] == "completed" and body["result"] == "hi there"
    assert set(body) >= {"execution_id", "agent_name", "task_type", "status", "started_at", "completed_at",
                         "duration_seconds", "input", "data", "result", "error_message", "trace_id", "usage",
                         "parent_execution_id"}
    response = await api.get(f"/executions/{body['execution_id']}")
    assert (await response.json())["result"] == "hi there"


async def test_a_task_without_wait_is_accepted_and_can_be_listed(api):
    status, body = await post(api, "/agents/echo-agent/tasks", {"input": {"n": 1}, "data": {"k": "v"}})
    assert status == 202 and set(body) == {"execution_id", "status"} and body["status"] == "queued"
    for _ in range(100):
        page = await (await api.get("/executions?agent_name=echo-agent&status=completed")).json()
        if page["executions"]:
            break
        await asyncio.sleep(0.02)
    assert page["executions"][0]["data"] == {"k": "v"}
    assert page["next_cursor"] is None


async def test_pagination(api):
    for number in range(5):
        await post(api, "/agents/echo-agent/tasks", {"input": number, "wait": 5})
    first = await (await api.get("/executions?limit=2")).json()
    second = await (await api.get(f"/executions?limit=2&cursor={first['next_cursor']}")).json()
    assert len(first["executions"]) == len(second["executions"]) == 2
    assert not {e["execution_id"] for e in first["executions"]} & {e["execution_id"] for e in second["executions"]}


async def test_the_same_idempotency_key_returns_the_first_execution(api):
    _, first = await post(api, "/agents/echo-agent/tasks", {"input": "a", "idempotency_key": "k1", "wait": 5})
    status, again = await post(api, "/agents/echo-agent/tasks", {"input": "b", "idempotency_key": "k1"})
    assert status == 200 and again["execution_id"] == first["execution_id"] and again["result"] == "a"


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/agents/nobody/tasks", {"input": "x"}, 404, "not_found"),
    ("/agents/echo-agent/tasks", {"inptu": "x"}, 400, "unknown_field"),
    ("/agents/echo-agent/tasks", {"input": "x", "wait": "soon"}, 400, "bad_request"),
    ("/agents/echo-agent/tasks", {"input": "x", "wait": 10_000}, 400, "bad_request"),
    ("/agents/echo-agent/tasks", {"input": "x", "data": [1]}, 400, "bad_request"),
    ("/agents/echo-agent/tasks", [1, 2], 400, "bad_request"),
    ("/events", {"routing_key": "a.*.b", "payload": {}}, 400, "bad_request"),
    ("/events", {"payload": {}}, 400, "bad_request"),
    ("/executions/nope/cancel", None, 404, "not_found"),
    ("/dlq/nope/retry", None, 404, "not_found"),
])
async def test_bad_requests_get_clear_json_errors(api, path, body, status, code):
    response = await api.post(path, json=body) if body is not None else await api.post(path)
    assert response.status == status
    assert (await response.json())["error"]["code"] == code


async def test_malformed_json_wrong_type_deep_nesting_and_oversized_bodies(api):
    response = await api.post("/agents/echo-agent/tasks", data="{not json", headers={"Content-Type":
                                                                                    "application/json"})
    assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_json"
    response = await api.post("/agents/echo-agent/tasks", data="input=x", headers={"Content-Type": "text/plain"})
    assert response.status == 415
    deep = {"input": json.loads("[" * 40 + "]" * 40)}
    status, body = await post(api, "/agents/echo-agent/tasks", deep)
    assert status == 400 and "nested deeper" in body["error"]["message"]
    huge = json.dumps({"input": "x" * (MAX_BODY_BYTES + 10)})
    response = await api.post("/agents/echo-agent/tasks", data=huge, headers={"Content-Type": "application/json"})
    assert response.status == 413 and (await response.json())["error"]["code"] == "payload_too_large"
    status, body = await post(api, "/agents/echo-agent/tasks", {"input": "still serving", "wait": 5})
    assert status == 200 and body["result"] == "still serving"


async def test_agents_are_listed_with_secrets_redacted(api):
    response = await api.get("/agents")
    text = await response.text()
    assert CANARY not in text
    [agent] = json.loads(text)["agents"]
    assert agent["name"] == "echo-agent" and agent["tools"][0]["auth"]["token"] == "***"
    single = await api.get("/agents/echo-agent")
    assert CANARY not in await single.text()
    assert (await api.get("/agents/nobody")).status == 404


async def test_events_reach_subscribed_agents(api, platform):
    status, body = await post(api, "/events", {"routing_key": "customer.ticket.created", "payload": {"id": 3}})
    assert status == 202 and body["published"] is True
    for _ in range(100):
        page, _ = await platform.store.list_executions(agent_name="echo-agent")
        if page and page[0].terminal:
            break
        await asyncio.sleep(0.02)
    assert page[0].input == {"id": 3}
    assert page[0].data["routing_key"] == "customer.ticket.created" and page[0].data["event"] == {"id": 3}


async def test_cancel_a_finished_execution_is_a_conflict_and_input_needs_a_waiting_execution(api):
    _, done = await post(api, "/agents/echo-agent/tasks", {"input": "x", "wait": 5})
    status, body = await post(api, f"/executions/{done['execution_id']}/cancel", {})
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body = await post(api, f"/executions/{done['execution_id']}/input", {"input": "yes"})
    assert status == 409 and "not awaiting input" in body["error"]["message"]


async def test_dlq_list_and_delete(api, platform):
    from agentrunner.records import DeadLetter

    await platform.store.add_dead_letter(DeadLetter(id="d1", execution_id="e1", agent_name="echo-agent",
                                                    routing_key="autonomous.task.submitted", payload={},
                                                    error_message="boom", attempts=4))
    items = (await (await api.get("/dlq")).json())["items"]
    assert [item["id"] for item in items] == ["d1"]
    assert (await api.delete("/dlq/d1")).status == 204
    assert (await api.delete("/dlq/d1")).status == 404


async def test_state_manager(platform, aiohttp_client):
    client = await aiohttp_client(state_service.create_app(platform))
    assert (await client.get("/state/echo-agent")).status == 404
    response = await client.put("/state/echo-agent", json={"state_data": {"mood": "good"}})
    stored = await response.json()
    assert response.status == 200 and stored["state_data"] == {"mood": "good"} and stored["version"] == 1
    response = await client.put("/state/echo-agent", json={"state_data": {"mood": "bad"}, "version": 0})
    assert response.status == 409
    assert (await (await client.get("/state/echo-agent")).json())["state_data"] == {"mood": "good"}
    assert (await client.delete("/state/echo-agent")).status == 204
    assert (await client.get("/state/echo-agent")).status == 404


async def test_configuration_service(platform, aiohttp_client, tmp_path):
    client = await aiohttp_client(config_service.create_app(platform))
    body = await (await client.get("/configs")).json()
    assert [a["name"] for a in body["agents"]] == ["echo-agent"] and body["errors"] == []
    assert CANARY not in json.dumps(body)
    assert (await client.get("/configs/echo-agent")).status == 200
    broken = ECHO.replace("temperature: 0.7", "temperature: 3.5")
    response = await client.post("/configs/validate?filename=support.yaml", data=broken,
                                 headers={"Content-Type": "application/yaml"})
    result = await response.json()
    assert result["valid"] is False
    assert result["errors"][0]["message"] == (
        "support.yaml: llm_config.temperature: must be between 0.0 and 2.0 (got 3.5)")
    response = await client.post("/configs/validate", data=ECHO, headers={"Content-Type": "application/yaml"})
    assert (await response.json())["valid"] is True
    (Path(platform.config.agents_dir) / "second.yaml").write_text(ECHO.replace("echo-agent", "second"))
    reloaded = await (await client.post("/configs/reload")).json()
    assert reloaded["added"] == ["second"]
    assert platform.config.get("second") is not None


@pytest.mark.parametrize("platform", [{"API_AUTH_ENABLED": "true", "API_KEY": f"old-{API_KEY},{API_KEY}",
                                       "API_KEY_HEADER": "X-Team-Key"}], indirect=True)
async def test_api_keys(api):
    assert (await api.get("/health")).status == 200
    response = await api.get("/agents")
    assert response.status == 401 and "X-Team-Key" in (await response.json())["error"]["message"]
    assert (await api.get("/agents", headers={"X-Team-Key": "wrong"})).status == 401
    assert (await api.get("/agents", headers={"X-API-Key": API_KEY})).status == 401
    assert (await api.get("/agents", headers={"X-Team-Key": API_KEY})).status == 200
    assert (await api.get("/agents", headers={"X-Team-Key": f"old-{API_KEY}"})).status == 200  # rotation


async def test_health_is_503_when_the_store_is_down(api, platform):
    assert (await api.get("/health")).status == 200
    await platform.store.stop()
    response = await api.get("/health")
    body = await response.json()
    assert response.status == 503 and body["status"] == "down" and body["dependencies"]["store"]["status"] == "down"
    await platform.store.start()


async def test_health_is_degraded_but_200_when_the_cache_is_down(api, platform):
    async def broken():
        raise ConnectionError("cache down")

    platform.cache.health = broken
    response = await api.get("/health")
    assert response.status == 200 and (await response.json())["status"] == "degraded"


async def test_all_five_services_listen_on_loopback(platform):
    runner = await start_services(platform, ports={name: 0 for name in SERVICES})
    try:
        assert [name for name, _ in runner.urls] == ["StateManager", "ConfigurationService", "AgentOrchestrator",
                                                     "SchedulerService", "SlackGateway"]
        async with aiohttp.ClientSession() as session:
            for name, url in runner.urls:
                assert url.startswith("http://127.0.0.1:")
                async with session.get(f"{url}/health") as response:
                    assert response.status == 200 and (await response.json())["service"] == name
    finally:
        await runner.close()


class AskerPlugin:
    """A mode that asks a human before answering."""

    @agentrunner.hookimpl
    def register_execution_modes(self, register):
        class Asker:
            name = "asker"

            async def execute(self, ctx):
                return f"{ctx.task.input}: {await ctx.ask('really?')}"

        register(Asker())


async def test_a_human_answers_over_http(tmp_path, aiohttp_client):
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "asker.yaml").write_text(textwrap.dedent("""\
        name: asker
        agent_type: assistant
        execution_mode: asker
        llm_config: {temperature: 0.7}
        system_prompt: Ask first.
        """))
    settings = load_settings(environ={"SQLITE_PATH": str(tmp_path / "db.sqlite"), "CONFIG_AGENTS_DIR": str(agents),
                                      "CONFIG_HOT_RELOAD": "false"}, env_file=None)
    platform = Platform(settings, pm=make_plugin_manager(load_entry_points=False,
                                                         extra_plugins=[(AskerPlugin(), "asker")]))
    await platform.start()
    try:
        api = await aiohttp_client(orchestrator_service.create_app(platform))
        status, waiting = await post(api, "/agents/asker/tasks", {"input": "ship it", "wait": 5})
        assert status == 200 and waiting["status"] == "awaiting_input"
        assert waiting["details"]["question"] == "really?"
        status, body = await post(api, f"/executions/{waiting['execution_id']}/input", {"input": "yes"})
        assert status == 200 and body["status"] == "running"
        finished = await platform.orchestrator.wait(waiting["execution_id"], 5)
        assert finished.result == "ship it: yes"
    finally:
        await platform.stop(grace=1)
