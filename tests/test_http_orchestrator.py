"""The AgentOrchestrator service (8003), endpoint by endpoint and error by error, on a real Platform."""

from __future__ import annotations

import asyncio
import json

import pytest

import http_fixtures
from agentrunner.orchestrator import ShuttingDown
from agentrunner.records import DeadLetter, Execution, new_id
from agentrunner.web import orchestrator as orchestrator_service
from agentrunner.web.common import MAX_BODY_BYTES, MAX_JSON_DEPTH
from http_fixtures import (
    API_KEY,
    CANARY,
    OLD_API_KEY,
    assert_error,
    assert_no_secret,
    eventually,
    get,
    post,
)

# the shared fixtures, by assignment: importing them by name would shadow the test parameters
platform = http_fixtures.platform
modes = http_fixtures.modes

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def api(platform, aiohttp_client):
    return await aiohttp_client(orchestrator_service.create_app(platform))


async def executions_of(api, agent: str) -> list[dict]:
    _, page = await get(api, f"/executions?agent_name={agent}&limit=500")
    return page["executions"]


# --- GET /agents, GET /agents/{name} ---------------------------------------------------------------


async def test_agents_are_listed_by_name_with_their_configuration(api):
    status, body = await get(api, "/agents")
    assert status == 200 and set(body) == {"agents"}
    assert [agent["name"] for agent in body["agents"]] == ["echo-agent", "flaky-agent", "gate-agent", "leaky-agent"]
    echo = body["agents"][0]
    assert echo["execution_mode"] == "autonomous" and echo["llm_config"]["temperature"] == 0.7
    assert echo["event_subscriptions"] == ["customer.ticket.*"]
    assert echo["tools"][0]["auth"] == {**echo["tools"][0]["auth"], "type": "bearer_token", "token": "***"}
    status, single = await get(api, "/agents/echo-agent")
    assert status == 200 and single == echo


async def test_an_unknown_agent_is_404(api):
    status, body = await get(api, "/agents/nobody")
    assert_error(status, body, 404, "not_found", "nobody")


async def test_fields_marked_secret_and_header_and_env_values_are_redacted(api):
    _, agent = await get(api, "/agents/leaky-agent")
    lookup, dumps = agent["tools"]
    assert lookup["auth"]["key"] == "***" and lookup["auth"]["header"] == "X-Key"
    assert lookup["headers"] == {"X-Extra": "***"}
    assert dumps["env"] == {"TOKEN": "***"}


async def test_secrets_interpolated_into_other_fields_never_appear(api):
    for path in ("/agents", "/agents/leaky-agent"):
        response = await api.get(path)
        assert_no_secret(await response.text())
    _, agent = await get(api, "/agents/leaky-agent")
    assert agent["system_prompt"] == "You hold the key ***."
    assert agent["llm_config"]["base_url"] == "https://bot:***@llm.example.com/v1"
    assert agent["tools"][0]["url"] == "https://api.example.com/lookup?token=***"


# --- POST /agents/{name}/tasks ------------------------------------------------------------------------


async def test_a_task_is_accepted_with_202_and_runs(api, platform):
    status, body = await post(api, "/agents/echo-agent/tasks", {"input": {"q": 1}, "data": {"k": "v"}})
    assert status == 202 and body == {"execution_id": body["execution_id"], "status": "queued"}
    finished = await platform.orchestrator.wait(body["execution_id"], 5)
    assert finished.status == "completed" and finished.input == {"q": 1} and finished.data == {"k": "v"}


async def test_wait_returns_the_finished_execution_with_200(api):
    status, body = await post(api, "/agents/echo-agent/tasks", {"input": "hello", "wait": 5})
    assert status == 200 and body["status"] == "completed" and body["result"] == "hello"
    assert body["agent_name"] == "echo-agent" and body["task_type"] == "autonomous"
    assert body["duration_seconds"] is not None and body["completed_at"] is not None


async def test_every_field_is_optional_and_wait_zero_does_not_wait(api):
    status, body = await post(api, "/agents/echo-agent/tasks", {})
    assert status == 202
    status, body = await post(api, "/agents/echo-agent/tasks", {"input": None, "wait": 0})
    assert status == 202 and body["status"] == "queued"


async def test_wait_that_runs_out_answers_202(api, modes):
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await post(api, "/agents/gate-agent/tasks", {"input": "x", "wait": 0.2})
    assert status == 202 and body["status"] in ("queued", "running")
    assert loop.time() - started >= 0.19


async def test_an_idempotent_repeat_returns_the_first_execution(api, platform, modes):
    status, first = await post(api, "/agents/gate-agent/tasks", {"input": "first", "idempotency_key": "order-1"})
    assert status == 202
    status, again = await post(api, "/agents/gate-agent/tasks", {"input": "second", "idempotency_key": "order-1"})
    assert status == 202 and again["execution_id"] == first["execution_id"]  # not finished yet: 202
    modes.release.set()
    await platform.orchestrator.wait(first["execution_id"], 5)
    status, done = await post(api, "/agents/gate-agent/tasks", {"input": "third", "idempotency_key": "order-1"})
    assert status == 200 and done["execution_id"] == first["execution_id"] and done["result"] == "first"
    assert len(await executions_of(api, "gate-agent")) == 1
    # the key is per agent
    status, other = await post(api, "/agents/echo-agent/tasks", {"input": "x", "idempotency_key": "order-1"})
    assert status == 202 and other["execution_id"] != first["execution_id"]


async def test_a_task_for_an_unknown_agent_is_404(api):
    status, body = await post(api, "/agents/nobody/tasks", {"input": "x"})
    assert_error(status, body, 404, "not_found", "nobody")


@pytest.mark.parametrize(("body", "code", "words"), [
    ({"inptu": "x"}, "unknown_field", ["unknown field 'inptu' in request body"]),
    ({"input": "x", "data": [1]}, "bad_request", ["'data'", "object"]),
    ({"input": "x", "data": "text"}, "bad_request", ["'data'"]),
    ({"input": "x", "wait": "soon"}, "bad_request", ["'wait'", "number"]),
    ({"input": "x", "wait": True}, "bad_request", ["'wait'"]),
    ({"input": "x", "wait": -1}, "bad_request", ["'wait'", "REQUEST_TIMEOUT"]),
    ({"input": "x", "wait": 31}, "bad_request", ["'wait'", "REQUEST_TIMEOUT"]),
    ({"input": "x", "idempotency_key": 7}, "bad_request", ["'idempotency_key'", "string"]),
    ({"input": "x", "idempotency_key": ""}, "bad_request", ["'idempotency_key'"]),
    ({"input": "x", "idempotency_key": "k" * 256}, "bad_request", ["'idempotency_key'"]),
    ([1, 2], "bad_request", ["JSON object"]),
    ("text", "bad_request", ["JSON object"]),
])
async def test_a_bad_task_body_is_400_naming_the_problem(api, body, code, words):
    status, answer = await post(api, "/agents/echo-agent/tasks", body)
    assert_error(status, answer, 400, code, *words)


async def test_malformed_json_and_an_empty_body_are_400(api):
    for data, code in (("{not json", "invalid_json"), ('{"input": "x",}', "invalid_json"), ("", "bad_request")):
        response = await api.post("/agents/echo-agent/tasks", data=data, headers=JSON)
        assert_error(response.status, await response.json(), 400, code)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/yaml"])
async def test_a_body_that_is_not_json_is_415(api, content_type):
    response = await api.post("/agents/echo-agent/tasks", data='{"input": "x"}', headers={"Content-Type": content_type})
    assert_error(response.status, await response.json(), 415, "unsupported_media_type", "application/json")


async def test_json_with_a_charset_parameter_is_accepted(api):
    response = await api.post("/agents/echo-agent/tasks", data='{"input": "x"}',
                              headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status == 202


async def test_an_oversized_body_is_413_and_the_server_keeps_serving(api):
    huge = json.dumps({"input": "x" * (MAX_BODY_BYTES + 1)})
    response = await api.post("/agents/echo-agent/tasks", data=huge, headers=JSON)
    assert_error(response.status, await response.json(), 413, "payload_too_large", str(MAX_BODY_BYTES))
    status, body = await post(api, "/agents/echo-agent/tasks", {"input": "still serving", "wait": 5})
    assert status == 200 and body["result"] == "still serving"


async def test_nesting_is_capped(api):
    nested = json.loads("[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2))
    status, _ = await post(api, "/agents/echo-agent/tasks", {"input": nested})
    assert status == 202
    too_deep = json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    status, body = await post(api, "/agents/echo-agent/tasks", {"input": too_deep})
    assert_error(status, body, 400, "bad_request", f"deeper than {MAX_JSON_DEPTH}")


async def test_nesting_too_deep_for_the_json_decoder_is_400_not_500(api):
    for data in ("[" * 100_000, '{"input": ' + "[" * 50_000 + "]" * 50_000 + "}"):
        response = await api.post("/agents/echo-agent/tasks", data=data, headers=JSON)
        assert_error(response.status, await response.json(), 400, "bad_request", "deeper")


async def test_a_body_that_is_not_utf8_is_400_not_500(api):
    response = await api.post("/agents/echo-agent/tasks", data=b'{"input": "\xff\xfe"}', headers=JSON)
    assert_error(response.status, await response.json(), 400, "invalid_json")


async def test_nan_and_infinity_are_not_json(api):
    for constant in ("NaN", "Infinity", "-Infinity"):
        response = await api.post("/agents/echo-agent/tasks", data=f'{{"input": {constant}}}', headers=JSON)
        assert_error(response.status, await response.json(), 400, "invalid_json", constant)


async def test_shutting_down_is_503_with_retry_after(api, platform, monkeypatch):
    async def refuse(*args, **kwargs):
        raise ShuttingDown("the orchestrator is not taking new tasks")

    monkeypatch.setattr(platform.orchestrator, "submit", refuse)
    response = await api.post("/agents/echo-agent/tasks", json={"input": "x"})
    assert_error(response.status, await response.json(), 503, "unavailable")
    assert int(response.headers["Retry-After"]) > 0


async def test_a_store_outage_is_503_with_retry_after(api, platform):
    await platform.store.stop()
    try:
        for response in (await api.post("/agents/echo-agent/tasks", json={"input": "x"}),
                         await api.get("/executions"), await api.get("/dlq")):
            assert_error(response.status, await response.json(), 503, "unavailable")
            assert "Retry-After" in response.headers
    finally:
        await platform.store.start()


# --- GET /executions/{id}, GET /executions --------------------------------------------------------------


async def test_an_execution_has_every_documented_field(api):
    _, done = await post(api, "/agents/echo-agent/tasks", {"input": "x", "data": {"a": 1}, "wait": 5})
    status, body = await get(api, f"/executions/{done['execution_id']}")
    assert status == 200 and body == done
    assert set(body) >= {"execution_id", "agent_name", "task_type", "status", "started_at", "completed_at",
                         "duration_seconds", "input", "data", "result", "error_message", "trace_id", "usage",
                         "parent_execution_id"}
    status, body = await get(api, "/executions/no-such-id")
    assert_error(status, body, 404, "not_found", "no-such-id")


async def test_executions_are_filtered_by_agent_and_status(api, platform):
    for number in range(3):
        await post(api, "/agents/echo-agent/tasks", {"input": number, "wait": 5})
    _, gated = await post(api, "/agents/gate-agent/tasks", {"input": "waiting"})
    status, page = await get(api, "/executions?agent_name=echo-agent&status=completed")
    assert status == 200 and set(page) == {"executions", "next_cursor"}
    assert len(page["executions"]) == 3 and page["next_cursor"] is None
    assert {e["agent_name"] for e in page["executions"]} == {"echo-agent"}
    _, page = await get(api, "/executions?status=completed&agent_name=gate-agent")
    assert page["executions"] == []
    _, page = await get(api, "/executions?limit=2")
    assert len(page["executions"]) == 2 and page["next_cursor"]
    _, rest = await get(api, f"/executions?limit=500&cursor={page['next_cursor']}")
    seen = [e["execution_id"] for e in page["executions"] + rest["executions"]]
    assert len(seen) == len(set(seen)) == 4 and gated["execution_id"] in seen


@pytest.mark.parametrize(("query", "code", "word"), [
    ("status=done", "bad_request", "status must be one of queued, running, awaiting_input"),
    ("limit=0", "bad_request", "limit"),
    ("limit=501", "bad_request", "500"),
    ("limit=ten", "bad_request", "limit"),
    ("limit=1.5", "bad_request", "limit"),
    ("cursor=not-a-cursor", "bad_request", "cursor"),
    ("agent=echo-agent", "unknown_field", "'agent'"),
])
async def test_bad_execution_queries_are_400(api, query, code, word):
    status, body = await get(api, f"/executions?{query}")
    assert_error(status, body, 400, code, word)


# --- POST /executions/{id}/cancel, POST /executions/{id}/input ------------------------------------------


async def test_a_running_execution_is_cancelled_once(api, platform):
    _, accepted = await post(api, "/agents/gate-agent/tasks", {"input": "x"})
    execution_id = accepted["execution_id"]

    async def running():
        return (await platform.store.get_execution(execution_id)).status == "running"

    assert await eventually(running)
    status, body = await post(api, f"/executions/{execution_id}/cancel")
    assert status == 200 and body["status"] == "cancelled" and body["execution_id"] == execution_id
    status, body = await post(api, f"/executions/{execution_id}/cancel")
    assert_error(status, body, 409, "conflict", "cancelled")


async def test_cancelling_a_finished_or_unknown_execution(api):
    _, done = await post(api, "/agents/echo-agent/tasks", {"input": "x", "wait": 5})
    status, body = await post(api, f"/executions/{done['execution_id']}/cancel")
    assert_error(status, body, 409, "conflict", "completed")
    status, body = await post(api, "/executions/no-such-id/cancel")
    assert_error(status, body, 404, "not_found")


async def test_input_needs_an_execution_awaiting_input(api):
    _, done = await post(api, "/agents/echo-agent/tasks", {"input": "x", "wait": 5})
    status, body = await post(api, f"/executions/{done['execution_id']}/input", {"input": "yes"})
    assert_error(status, body, 409, "conflict", "not awaiting input")
    status, body = await post(api, "/executions/no-such-id/input", {"input": "yes"})
    assert_error(status, body, 404, "not_found")
    status, body = await post(api, f"/executions/{done['execution_id']}/input", {})
    assert_error(status, body, 400, "bad_request", "'input' is required")
    status, body = await post(api, f"/executions/{done['execution_id']}/input", {"answer": "yes"})
    assert_error(status, body, 400, "unknown_field", "'answer'")


# --- POST /events -----------------------------------------------------------------------------------------


async def test_an_event_reaches_the_subscribed_agent_only(api, platform):
    status, body = await post(api, "/events", {"routing_key": "customer.ticket.created",
                                               "payload": {"ticket": 42}})
    assert status == 202 and body["published"] is True

    async def triggered():
        page = await executions_of(api, "echo-agent")
        return page if page and page[0]["status"] == "completed" else None

    [execution] = await eventually(triggered)
    assert execution["input"] == {"ticket": 42}
    assert execution["data"]["routing_key"] == "customer.ticket.created"
    assert execution["data"]["event"] == {"ticket": 42}
    # a key no agent subscribes to is published and triggers nobody
    status, _ = await post(api, "/events", {"routing_key": "customer.order.created", "payload": {}})
    assert status == 202
    await asyncio.sleep(0.1)
    assert len(await executions_of(api, "echo-agent")) == 1
    for other in ("flaky-agent", "gate-agent", "leaky-agent"):
        assert await executions_of(api, other) == []


async def test_star_and_hash_inside_a_word_are_literal_characters(api):
    status, _ = await post(api, "/events", {"routing_key": "a*b.c#d", "payload": {}})
    assert status == 202


@pytest.mark.parametrize(("body", "code", "word"), [
    ({"routing_key": "customer.*.created", "payload": {}}, "bad_request", "not a pattern"),
    ({"routing_key": "customer.#", "payload": {}}, "bad_request", "not a pattern"),
    ({"routing_key": "#", "payload": {}}, "bad_request", "not a pattern"),
    ({"routing_key": "k" * 256, "payload": {}}, "bad_request", "255"),
    ({"routing_key": "é" * 128, "payload": {}}, "bad_request", "255"),
    ({"payload": {}}, "bad_request", "'routing_key' is required"),
    ({"routing_key": 5, "payload": {}}, "bad_request", "'routing_key'"),
    ({"routing_key": "a.b", "body": {}}, "unknown_field", "'body'"),
])
async def test_a_bad_event_is_400(api, body, code, word):
    status, answer = await post(api, "/events", body)
    assert_error(status, answer, 400, code, word)


async def test_an_empty_routing_key_is_400(api):
    status, answer = await post(api, "/events", {"routing_key": "", "payload": {}})
    assert_error(status, answer, 400, "bad_request", "routing_key")


async def test_events_while_shutting_down_are_503(api, platform, monkeypatch):
    async def refuse(*args, **kwargs):
        raise ShuttingDown("stopping")

    monkeypatch.setattr(platform.orchestrator, "publish_event", refuse)
    response = await api.post("/events", json={"routing_key": "a.b", "payload": {}})
    assert_error(response.status, await response.json(), 503, "unavailable")
    assert "Retry-After" in response.headers


# --- GET /dlq, POST /dlq/{id}/retry, DELETE /dlq/{id} --------------------------------------------------------


async def test_a_dead_letter_is_listed_retried_and_runs_again(api, platform, modes):
    modes.failures_left = 1
    status, failed = await post(api, "/agents/flaky-agent/tasks", {"input": "x", "wait": 5})
    assert status == 200 and failed["status"] == "failed" and "flaky failure" in failed["error_message"]
    status, body = await get(api, "/dlq")
    assert status == 200 and set(body) == {"items"}
    [item] = body["items"]
    assert item["execution_id"] == failed["execution_id"] and item["agent_name"] == "flaky-agent"
    assert set(item) == {"id", "execution_id", "agent_name", "routing_key", "payload", "error_message", "attempts",
                         "failed_at"}
    status, retried = await post(api, f"/dlq/{item['id']}/retry")
    assert status == 202 and retried == {"execution_id": failed["execution_id"], "status": "queued"}
    finished = await platform.orchestrator.wait(failed["execution_id"], 5)
    assert finished.status == "completed" and finished.result == "ok: x"
    assert (await get(api, "/dlq"))[1] == {"items": []}
    status, body = await post(api, f"/dlq/{item['id']}/retry")
    assert_error(status, body, 404, "not_found")


async def test_retrying_a_dead_letter_whose_execution_is_not_failed_is_409(api, platform):
    _, done = await post(api, "/agents/echo-agent/tasks", {"input": "x", "wait": 5})
    await platform.store.add_dead_letter(DeadLetter(
        id="stale", execution_id=done["execution_id"], agent_name="echo-agent",
        routing_key="autonomous.task.submitted", payload={}, error_message="boom", attempts=1))
    status, body = await post(api, "/dlq/stale/retry")
    assert_error(status, body, 409, "conflict")


async def test_retrying_a_dead_letter_of_a_removed_agent_is_409(api, platform):
    execution = Execution(execution_id=new_id(), agent_name="gone-agent", task_type="autonomous", status="failed")
    await platform.store.create_execution(execution)
    await platform.store.add_dead_letter(DeadLetter(
        id="orphan", execution_id=execution.execution_id, agent_name="gone-agent",
        routing_key="autonomous.task.submitted", payload={}, error_message="boom", attempts=4))
    status, body = await post(api, "/dlq/orphan/retry")
    assert_error(status, body, 409, "conflict", "gone-agent")


async def test_deleting_a_dead_letter(api, platform):
    await platform.store.add_dead_letter(DeadLetter(
        id="d1", execution_id="e1", agent_name="echo-agent", routing_key="autonomous.task.submitted",
        payload={}, error_message="boom", attempts=4))
    response = await api.delete("/dlq/d1")
    assert response.status == 204
    response = await api.delete("/dlq/d1")
    assert_error(response.status, await response.json(), 404, "not_found", "d1")


# --- /health, unknown routes, plugin routes, unexpected failures --------------------------------------------


async def test_health(api):
    status, body = await get(api, "/health")
    assert status == 200 and body["status"] == "ok" and body["service"] == "AgentOrchestrator"
    assert set(body["dependencies"]) == {"store", "bus", "cache"}


async def test_an_unknown_path_is_a_json_404_and_a_wrong_method_a_json_405(api):
    status, body = await get(api, "/nowhere")
    assert_error(status, body, 404, "not_found")
    response = await api.delete("/agents")
    assert_error(response.status, await response.json(), 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


async def test_plugins_add_routes_and_a_failure_is_a_generic_500(api):
    status, body = await get(api, "/plugin/ping")
    assert status == 200 and body == {"pong": True}
    response = await api.get("/plugin/boom")
    text = await response.text()
    assert CANARY not in text and "Traceback" not in text and "RuntimeError" not in text
    assert_error(response.status, json.loads(text), 500, "internal_error")


# --- API keys ------------------------------------------------------------------------------------------------

AUTH = {"API_AUTH_ENABLED": "true", "API_KEY": f"{OLD_API_KEY},{API_KEY}", "API_KEY_HEADER": "X-Team-Key"}


@pytest.mark.parametrize("platform", [AUTH], indirect=True)
async def test_api_keys_guard_everything_but_health(api):
    assert (await api.get("/health")).status == 200
    for headers in ({}, {"X-Team-Key": ""}, {"X-Team-Key": "wrong"}, {"X-API-Key": API_KEY},
                    {"X-Team-Key": API_KEY[:-1]}, {"X-Team-Key": f"{OLD_API_KEY},{API_KEY}"}):
        response = await api.post("/agents/echo-agent/tasks", json={"input": "x"}, headers=headers)
        text = await response.text()
        assert API_KEY not in text and OLD_API_KEY not in text
        assert_error(response.status, json.loads(text), 401, "unauthorized", "X-Team-Key")
    for key in (API_KEY, OLD_API_KEY):  # both keys of a rotation
        response = await api.post("/agents/echo-agent/tasks", json={"input": "x"}, headers={"X-Team-Key": key})
        assert response.status == 202


@pytest.mark.parametrize("platform", [AUTH], indirect=True)
async def test_unknown_routes_need_a_key_too(api):
    status, body = await get(api, "/nowhere")
    assert_error(status, body, 401, "unauthorized")


@pytest.mark.parametrize("platform", [AUTH], indirect=True)
async def test_a_key_that_is_not_utf8_is_401_not_500(api):
    reader, writer = await asyncio.open_connection(api.host, api.port)
    writer.write(b"GET /agents HTTP/1.1\r\nHost: test\r\nX-Team-Key: \xff\xfe\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 401")
