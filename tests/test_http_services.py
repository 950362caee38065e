"""StateManager (8001), ConfigurationService (8002), SchedulerService (8004), the SlackGateway port (8005),
API keys on every service, and ``start_services`` on real sockets."""

from __future__ import annotations

import json
import logging
import socket

import aiohttp
import pytest

import http_fixtures
from agentrunner.web import config as config_service
from agentrunner.web import gateway as gateway_service
from agentrunner.web import scheduler as scheduler_service
from agentrunner.web import state as state_service
from agentrunner.web.common import MAX_BODY_BYTES
from agentrunner.web.server import SERVICES, start_services
from http_fixtures import (
    API_KEY,
    ECHO,
    LEAKY,
    assert_error,
    assert_no_secret,
    get,
    post,
    running_platform,
)

# the shared fixtures, by assignment: importing them by name would shadow the test parameters
platform = http_fixtures.platform
modes = http_fixtures.modes

YAML = {"Content-Type": "application/yaml"}


# --- StateManager ----------------------------------------------------------------------------------------


@pytest.fixture
async def state_api(platform, aiohttp_client):
    return await aiohttp_client(state_service.create_app(platform))


async def put(client, path, body):
    response = await client.put(path, json=body)
    return response.status, await response.json()


async def test_state_is_created_read_replaced_and_deleted(state_api):
    status, body = await get(state_api, "/state/echo-agent")
    assert_error(status, body, 404, "not_found", "echo-agent")
    status, stored = await put(state_api, "/state/echo-agent", {
        "state_data": {"mood": "good"}, "conversation_history": [{"role": "user", "content": "hi"}],
        "metadata": {"owner": "ops"}})
    assert status == 200 and stored["version"] == 1 and stored["agent_name"] == "echo-agent"
    assert set(stored) == {"agent_name", "state_data", "conversation_history", "metadata", "version", "created_at",
                           "updated_at", "last_activity"}
    status, read = await get(state_api, "/state/echo-agent")
    assert status == 200 and read == {**stored, "loaded": False}  # no task of it ran in this process
    # fields left out keep their values
    status, replaced = await put(state_api, "/state/echo-agent", {"state_data": {"mood": "calm"}})
    assert status == 200 and replaced["version"] == 2 and replaced["state_data"] == {"mood": "calm"}
    assert replaced["conversation_history"] == stored["conversation_history"]
    assert replaced["metadata"] == {"owner": "ops"}
    response = await state_api.delete("/state/echo-agent")
    assert response.status == 204
    response = await state_api.delete("/state/echo-agent")
    assert_error(response.status, await response.json(), 404, "not_found")
    assert (await state_api.get("/state/echo-agent")).status == 404


async def test_a_stale_version_is_a_409_and_changes_nothing(state_api):
    await put(state_api, "/state/echo-agent", {"state_data": {"n": 1}})
    status, body = await put(state_api, "/state/echo-agent", {"state_data": {"n": 2}, "version": 1})
    assert status == 200 and body["version"] == 2
    status, body = await put(state_api, "/state/echo-agent", {"state_data": {"n": 3}, "version": 1})
    assert_error(status, body, 409, "conflict", "echo-agent")
    assert (await get(state_api, "/state/echo-agent"))[1]["state_data"] == {"n": 2}
    # version 0: create only if there is none yet
    assert (await put(state_api, "/state/gate-agent", {"state_data": {"first": True}, "version": 0}))[0] == 200
    status, body = await put(state_api, "/state/gate-agent", {"state_data": {"second": True}, "version": 0})
    assert_error(status, body, 409, "conflict")


@pytest.mark.parametrize(("body", "code", "word"), [
    ({}, "bad_request", "'state_data' is required"),
    ({"state_data": [1]}, "bad_request", "'state_data'"),
    ({"state_data": {}, "conversation_history": {}}, "bad_request", "'conversation_history'"),
    ({"state_data": {}, "metadata": "x"}, "bad_request", "'metadata'"),
    ({"state_data": {}, "version": "1"}, "bad_request", "'version'"),
    ({"state_data": {}, "version": 1.5}, "bad_request", "'version'"),
    ({"state_data": {}, "version": -1}, "bad_request", "'version'"),
    ({"state_data": {}, "version": True}, "bad_request", "'version'"),
    ({"state_data": {}, "stateData": {}}, "unknown_field", "unknown field 'stateData' in request body"),
])
async def test_a_bad_state_body_is_400(state_api, body, code, word):
    status, answer = await put(state_api, "/state/echo-agent", body)
    assert_error(status, answer, 400, code, word)


async def test_state_bodies_are_json_of_bounded_size(state_api):
    response = await state_api.put("/state/echo-agent", data="state_data=1", headers={"Content-Type": "text/plain"})
    assert_error(response.status, await response.json(), 415, "unsupported_media_type")
    response = await state_api.put("/state/echo-agent", data="{", headers={"Content-Type": "application/json"})
    assert_error(response.status, await response.json(), 400, "invalid_json")
    response = await state_api.put("/state/echo-agent", json={"state_data": {"blob": "x" * MAX_BODY_BYTES}})
    assert_error(response.status, await response.json(), 413, "payload_too_large")
    assert (await put(state_api, "/state/echo-agent", {"state_data": {}}))[0] == 200


async def test_state_health(state_api):
    status, body = await get(state_api, "/health")
    assert status == 200 and body["service"] == "StateManager"


# --- ConfigurationService ------------------------------------------------------------------------------------

BROKEN = ECHO.replace("name: echo-agent", "name: broken-agent").replace("temperature: 0.7", "temperature: 3.5")
#: A file whose error message would quote a secret that ${VAR} put in.
BROKEN_SECRET = ECHO.replace("name: echo-agent", "name: secret-broken").replace(
    "agent_type: assistant", "agent_type: ${CANARY_TOKEN}")


@pytest.fixture
async def config_platform(tmp_path):
    files = {"echo-agent.yaml": ECHO, "leaky-agent.yaml": LEAKY, "broken.yaml": BROKEN,
             "secret-broken.yaml": BROKEN_SECRET}
    async with running_platform(tmp_path, files=files) as platform:
        yield platform


@pytest.fixture
async def config_api(config_platform, aiohttp_client):
    return await aiohttp_client(config_service.create_app(config_platform))


async def test_configs_list_the_agents_and_the_files_that_did_not_load(config_api):
    status, body = await get(config_api, "/configs")
    assert status == 200 and set(body) == {"agents", "errors"}
    assert [agent["name"] for agent in body["agents"]] == ["echo-agent", "leaky-agent"]
    assert body["agents"][0]["tools"][0]["auth"]["token"] == "***"
    files = {error["file"] for error in body["errors"]}
    assert files == {"broken.yaml", "secret-broken.yaml"}
    [broken] = [error for error in body["errors"] if error["file"] == "broken.yaml"]
    assert broken["message"] == "broken.yaml: llm_config.temperature: must be between 0.0 and 2.0 (got 3.5)"
    status, agent = await get(config_api, "/configs/echo-agent")
    assert status == 200 and agent == body["agents"][0]
    status, answer = await get(config_api, "/configs/broken-agent")
    assert_error(status, answer, 404, "not_found", "broken-agent")


async def test_configs_and_their_errors_never_show_a_secret(config_api):
    for path in ("/configs", "/configs/leaky-agent"):
        response = await config_api.get(path)
        assert_no_secret(await response.text())
    response = await config_api.post("/configs/reload")
    assert_no_secret(await response.text())


async def test_validate_a_good_file(config_api):
    response = await config_api.post("/configs/validate", data=ECHO, headers=YAML)
    assert response.status == 200
    assert await response.json() == {"valid": True, "errors": [], "warnings": []}


@pytest.mark.parametrize("content_type", ["application/yaml", "application/x-yaml", "text/yaml"])
async def test_validate_reports_errors_with_the_file_and_field(config_api, content_type):
    response = await config_api.post("/configs/validate?filename=support.yaml", data=BROKEN,
                                     headers={"Content-Type": content_type})
    body = await response.json()
    assert response.status == 200 and body["valid"] is False and body["warnings"] == []
    assert body["errors"] == [{"file": "support.yaml", "field": "llm_config.temperature",
                               "message": "support.yaml: llm_config.temperature: must be between 0.0 and 2.0 "
                                          "(got 3.5)"}]


async def test_validate_reports_warnings_and_uses_the_platform_plugins(config_api):
    text = ECHO + "colour: blue\n"
    body = await (await config_api.post("/configs/validate", data=text, headers=YAML)).json()
    assert body["valid"] is True and body["errors"] == []
    assert [warning["field"] for warning in body["warnings"]] == ["colour"]
    unknown = ECHO.replace("temperature: 0.7", "temperature: 0.7\n  provider: nowhere")
    body = await (await config_api.post("/configs/validate", data=unknown, headers=YAML)).json()
    assert body["valid"] is False and "installed: echo" in body["errors"][0]["message"]
    body = await (await config_api.post("/configs/validate", data="- a\n- b\n", headers=YAML)).json()
    assert body["valid"] is False and "mapping" in body["errors"][0]["message"]


async def test_validate_refuses_other_bodies(config_api):
    response = await config_api.post("/configs/validate", json={"name": "x"})
    assert_error(response.status, await response.json(), 415, "unsupported_media_type", "application/yaml")
    response = await config_api.post("/configs/validate", data=b"name: \xff\xfe", headers=YAML)
    assert_error(response.status, await response.json(), 400, "bad_request", "UTF-8")
    response = await config_api.post("/configs/validate", data="#" * (MAX_BODY_BYTES + 1), headers=YAML)
    assert_error(response.status, await response.json(), 413, "payload_too_large")
    response = await config_api.post("/configs/validate", data=ECHO, headers=YAML)
    assert response.status == 200  # still serving


async def test_validate_never_reveals_the_server_environment(config_api):
    probes = [ECHO.replace("agent_type: assistant", "agent_type: ${CANARY_TOKEN}"),
              ECHO.replace("temperature: 0.7", "temperature: '${DB_PASSWORD}'"),
              ECHO.replace("temperature: 0.7", "temperature: 0.7\n  provider: '${PROMPT_API_KEY}'")]
    for text in probes:
        response = await config_api.post("/configs/validate", data=text, headers=YAML)
        body = await response.text()
        assert response.status == 200 and json.loads(body)["valid"] is False
        assert_no_secret(body)


async def test_reload_summarises_what_changed(config_platform, config_api):
    agents = config_platform.config.agents_dir
    (agents / "second.yaml").write_text(ECHO.replace("echo-agent", "second-agent"))
    (agents / "echo-agent.yaml").write_text(ECHO.replace("system_prompt: Echo.", "system_prompt: Echo twice."))
    (agents / "leaky-agent.yaml").unlink()
    (agents / "broken.yaml").unlink()
    (agents / "secret-broken.yaml").unlink()
    status, body = await post(config_api, "/configs/reload")
    assert status == 200
    assert body == {"added": ["second-agent"], "updated": ["echo-agent"], "removed": ["leaky-agent"], "errors": []}
    assert config_platform.config.get("echo-agent").system_prompt == "Echo twice."
    # a broken edit keeps the last good version and is reported
    (agents / "echo-agent.yaml").write_text(BROKEN.replace("broken-agent", "echo-agent"))
    status, body = await post(config_api, "/configs/reload")
    assert status == 200 and body["added"] == body["updated"] == body["removed"] == []
    assert [error["file"] for error in body["errors"]] == ["echo-agent.yaml"]
    assert config_platform.config.get("echo-agent").system_prompt == "Echo twice."
    assert [a["name"] for a in (await get(config_api, "/configs"))[1]["agents"]] == ["echo-agent", "second-agent"]


async def test_config_health(config_api):
    status, body = await get(config_api, "/health")
    assert status == 200 and body["service"] == "ConfigurationService"


# --- SchedulerService and the SlackGateway port ---------------------------------------------------------------


@pytest.mark.parametrize(("factory", "name"), [(scheduler_service.create_app, "SchedulerService"),
                                               (gateway_service.create_app, "SlackGateway")])
async def test_scheduler_and_gateway_answer_health(platform, aiohttp_client, factory, name):
    client = await aiohttp_client(factory(platform))
    status, body = await get(client, "/health")
    assert status == 200 and body["service"] == name and body["status"] == "ok"
    status, body = await get(client, "/schedules/none")
    assert_error(status, body, 404, "not_found")


async def test_health_is_503_when_the_store_is_down(platform, aiohttp_client):
    client = await aiohttp_client(scheduler_service.create_app(platform))
    await platform.store.stop()
    try:
        status, body = await get(client, "/health")
        assert status == 503 and body["status"] == "down" and body["dependencies"]["store"]["status"] == "down"
    finally:
        await platform.store.start()


# --- API keys on every service ---------------------------------------------------------------------------------

AUTH = {"API_AUTH_ENABLED": "true", "API_KEY": API_KEY, "API_KEY_HEADER": "X-Team-Key"}
GUARDED = {"state": "/state/echo-agent", "config": "/configs", "orchestrator": "/agents",
           "scheduler": "/schedules", "gateway": "/anything"}


@pytest.mark.parametrize("platform", [AUTH], indirect=True)
@pytest.mark.parametrize("service", list(SERVICES))
async def test_every_service_needs_the_key_except_for_health(platform, aiohttp_client, service):
    client = await aiohttp_client(SERVICES[service][2](platform))
    assert (await client.get("/health")).status == 200
    status, body = await get(client, GUARDED[service])
    assert_error(status, body, 401, "unauthorized", "X-Team-Key")
    response = await client.get(GUARDED[service], headers={"X-Team-Key": API_KEY})
    assert response.status != 401


@pytest.mark.parametrize("service", list(SERVICES))
async def test_without_auth_no_key_is_needed(platform, aiohttp_client, service):
    client = await aiohttp_client(SERVICES[service][2](platform))
    response = await client.get(GUARDED[service])
    assert response.status != 401


# --- start_services ----------------------------------------------------------------------------------------------


async def test_all_five_services_serve_health_on_real_ports(platform, caplog):
    caplog.set_level(logging.DEBUG, logger="aiohttp.access")
    runner = await start_services(platform, ports={name: 0 for name in SERVICES})
    try:
        assert [name for name, _ in runner.urls] == ["StateManager", "ConfigurationService", "AgentOrchestrator",
                                                     "SchedulerService", "SlackGateway"]
        ports = {url.rsplit(":", 1)[1] for _, url in runner.urls}
        assert len(ports) == 5 and "0" not in ports
        async with aiohttp.ClientSession() as session:
            for name, url in runner.urls:
                assert url.startswith("http://127.0.0.1:")
                async with session.get(f"{url}/health") as response:
                    body = await response.json()
                    assert response.status == 200 and body["service"] == name
    finally:
        await runner.close()
    assert not [record for record in caplog.records if record.name == "aiohttp.access"]  # access log off


async def test_start_only_the_named_services(platform):
    runner = await start_services(platform, ["orchestrator", "state"], ports={"orchestrator": 0, "state": 0})
    try:
        assert [name for name, _ in runner.urls] == ["AgentOrchestrator", "StateManager"]
    finally:
        await runner.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_an_orchestrator_run_apart_reports_the_services_it_was_told_about(tmp_path):
    state_port, config_port = _free_port(), _free_port()  # the ConfigurationService never starts
    environ = {"STATE_MANAGER_HOST": "127.0.0.1", "STATE_MANAGER_PORT": str(state_port),
               "CONFIG_SERVICE_HOST": "127.0.0.1", "CONFIG_SERVICE_PORT": str(config_port)}
    async with running_platform(tmp_path, environ) as platform:
        state = await start_services(platform, ["state"])  # "another process", on STATE_MANAGER_PORT
        orchestrator = await start_services(platform, ["orchestrator"], ports={"orchestrator": 0})
        try:
            url = orchestrator.urls[0][1]
            async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as response:
                body = await response.json()
            assert response.status == 200 and body["status"] == "degraded"
            assert body["services"]["StateManager"] == {"status": "ok", "url": f"http://127.0.0.1:{state_port}"}
            assert body["services"]["ConfigurationService"]["status"] == "down"
        finally:
            await orchestrator.close()
            await state.close()


async def test_a_port_in_use_fails_and_leaves_nothing_listening(platform):
    with socket.socket() as taken, socket.socket() as probe:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
        probe.close()
        with pytest.raises(OSError):
            await start_services(platform, ["state", "config"],
                                 ports={"state": free, "config": taken.getsockname()[1]})
    with socket.socket() as again:  # the service started first was closed again
        again.bind(("127.0.0.1", free))
