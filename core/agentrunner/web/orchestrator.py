"""The AgentOrchestrator service (port ``ORCHESTRATOR_PORT``, 8003): agents, tasks, executions, events, DLQ."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from agentrunner.interfaces import BusUnavailable
from agentrunner.orchestrator import (
    AgentNotFound,
    DeadLetterNotFound,
    ExecutionNotFound,
    InvalidTransition,
    ShuttingDown,
)
from agentrunner.records import STATUSES
from agentrunner.schema import as_dict
from agentrunner.topics import validate_pattern
from agentrunner.web.common import PLATFORM, REDACTOR, ApiError, make_app, not_found, read_json

#: Most executions one page of ``GET /executions`` returns.
MAX_PAGE = 500
#: Seconds between keep-alive comments of an idle event stream.
STREAM_KEEPALIVE = 15.0


def agent_json(agent: Any, redactor: Any = None) -> dict[str, Any]:
    """An agent's configuration as the API shows it: every secret redacted.

    Secret fields (tokens, keys, ``env`` and ``headers`` values) show ``***``; ``redactor``
    (the application's ``REDACTOR``) also hides secrets that ``${VAR}`` put elsewhere
    (a URL's query, a prompt, command arguments).
    """
    shown = as_dict(agent, redact=True)
    return redactor(shown) if redactor is not None else shown


def _platform(request: web.Request) -> Any:
    return request.app[PLATFORM]


def _unavailable(exc: Exception) -> ApiError:
    return ApiError(503, "unavailable", str(exc), headers={"Retry-After": "5"})


async def list_agents(request: web.Request) -> web.Response:
    platform = _platform(request)
    agents = platform.config.agents
    redactor = request.app[REDACTOR]
    health = platform.orchestrator.health.health_of
    return web.json_response({"agents": [{**agent_json(agents[name], redactor), "health": health(name)}
                                         for name in sorted(agents)]})


async def get_agent(request: web.Request) -> web.Response:
    platform = _platform(request)
    agent = platform.config.get(request.match_info["name"])
    if agent is None:
        raise not_found(f"no agent named {request.match_info['name']!r}")
    # `health`: healthy / unresponsive from the workers' heartbeats, as this process's monitor sees them
    return web.json_response({**agent_json(agent, request.app[REDACTOR]),
                              "health": platform.orchestrator.health.health_of(agent.name)})


async def submit_task(request: web.Request) -> web.Response:
    """``POST /agents/{name}/tasks``: 202 queued, or 200 with the execution if it finished within ``wait``."""
    platform = _platform(request)
    body = await read_json(request, {"input": "any", "data": "object", "idempotency_key": "string",
                                     "wait": "number", "stream": "boolean"})
    wait = float(body.get("wait", 0))
    stream = bool(body.get("stream", False))
    if stream and "wait" in body:
        raise ApiError(400, "bad_request", "fields 'stream' and 'wait' cannot be combined: a stream ends "
                                           "when the execution does")
    limit = float(platform.settings.request_timeout)
    if not 0 <= wait <= limit:
        raise ApiError(400, "bad_request", f"field 'wait' must be between 0 and {limit:g} seconds (REQUEST_TIMEOUT)")
    key = body.get("idempotency_key")
    if key is not None and not 0 < len(key) <= 255:
        raise ApiError(400, "bad_request", "field 'idempotency_key' must be 1 to 255 characters")
    try:
        # a caller that waits has no execution id until the answer: the execution is stored with its result
        execution, _ = await platform.orchestrator.submit(request.match_info["name"], body.get("input"),
                                                          data=body.get("data"), idempotency_key=key,
                                                          stream=stream, record_later=wait > 0)
    except AgentNotFound:
        raise not_found(f"no agent named {request.match_info['name']!r}") from None
    except (ShuttingDown, BusUnavailable) as exc:
        raise _unavailable(exc) from None
    if stream:
        return await _serve_stream(request, execution)
    if wait > 0 and not execution.terminal:
        execution = await platform.orchestrator.wait(execution.execution_id, wait) or execution
    if execution.terminal or execution.status == "awaiting_input":
        return web.json_response(execution.to_json(), status=200)
    return web.json_response({"execution_id": execution.execution_id, "status": execution.status}, status=202)


async def get_execution(request: web.Request) -> web.Response:
    execution = await _platform(request).store.get_execution(request.match_info["id"])
    if execution is None:
        raise not_found(f"no execution {request.match_info['id']!r}")
    return web.json_response(execution.to_json())


async def stream_execution(request: web.Request) -> web.StreamResponse:
    """``GET /executions/{id}/stream``: the execution's output as server-sent events."""
    execution = await _platform(request).store.get_execution(request.match_info["id"])
    if execution is None:
        raise not_found(f"no execution {request.match_info['id']!r}")
    return await _serve_stream(request, execution)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _result_text(result: Any) -> str:
    if result is None:
        return ""
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


async def _serve_stream(request: web.Request, execution: Any) -> web.StreamResponse:
    """Server-sent events: ``execution`` (id and status), ``delta`` ({"text"}) as the model writes,
    ``retry`` when a failed model call starts again (drop the partial text), then ``done`` (the execution).

    Deltas come from the process running the execution; an execution that runs
    elsewhere, or finished before anyone streamed it, sends its result as one delta.
    """
    platform = _platform(request)
    hub = platform.orchestrator.streams
    execution_id = execution.execution_id
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        await response.write(_sse("execution", {"execution_id": execution_id, "status": execution.status}))
        stream = hub.get(execution_id)
        if stream is None:
            if execution.terminal:
                await _write_whole(response, execution)
                return response
            stream = hub.open(execution_id)
            latest = await platform.store.get_execution(execution_id)  # it may have finished meanwhile
            if latest is not None and latest.terminal:
                hub.finish(latest)
        streamed = False
        async for event, data in stream.follow(idle=STREAM_KEEPALIVE):
            if event == "idle":  # the execution may be running in another process: ask the store
                latest = await platform.store.get_execution(execution_id)
                if latest is None or latest.terminal:
                    hub.finish(latest or execution)
                else:
                    await response.write(b": keep-alive\n\n")
                continue
            if event == "done":
                if not streamed:
                    await response.write(_sse("delta", {"text": _result_text(data.result)}))
                await response.write(_sse("done", data.to_json()))
                break
            streamed = streamed or event == "delta"
            await response.write(_sse(event, data))
        await response.write_eof()
    except ConnectionResetError:
        pass  # the reader went away; the execution goes on
    return response


async def _write_whole(response: web.StreamResponse, execution: Any) -> None:
    await response.write(_sse("delta", {"text": _result_text(execution.result)}))
    await response.write(_sse("done", execution.to_json()))
    await response.write_eof()


async def list_executions(request: web.Request) -> web.Response:
    query = request.query
    unknown = set(query) - {"agent_name", "status", "limit", "cursor"}
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown query parameter {sorted(unknown)[0]!r}")
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "bad_request", f"status must be one of {', '.join(STATUSES)} (got {status!r})")
    try:
        limit = int(query.get("limit", 50))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, "bad_request", f"limit must be an integer between 1 and {MAX_PAGE}")
    try:
        page, cursor = await _platform(request).store.list_executions(
            agent_name=query.get("agent_name"), status=status, limit=limit, cursor=query.get("cursor"))
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"cursor: {exc}") from None
    return web.json_response({"executions": [e.to_json() for e in page], "next_cursor": cursor})


async def cancel_execution(request: web.Request) -> web.Response:
    try:
        execution = await _platform(request).orchestrator.cancel(request.match_info["id"])
    except ExecutionNotFound:
        raise not_found(f"no execution {request.match_info['id']!r}") from None
    except InvalidTransition as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.json_response(execution.to_json())


async def provide_input(request: web.Request) -> web.Response:
    """``POST /executions/{id}/input``: answer a human clarification of an ``awaiting_input`` execution."""
    platform = _platform(request)
    body = await read_json(request, {"input": "any"}, required=("input",))
    execution = await platform.store.get_execution(request.match_info["id"])
    if execution is None:
        raise not_found(f"no execution {request.match_info['id']!r}")
    if execution.status != "awaiting_input":
        raise ApiError(409, "conflict", f"execution {execution.execution_id} is {execution.status}, "
                                        "not awaiting input")
    try:
        execution = await platform.orchestrator.provide_input(execution.execution_id, body["input"])
    except InvalidTransition as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.json_response(execution.to_json())


async def publish_event(request: web.Request) -> web.Response:
    """``POST /events``: every agent whose ``event_subscriptions`` match gets a task."""
    body = await read_json(request, {"routing_key": "string", "payload": "any"}, required=("routing_key",))
    key = body["routing_key"]
    if not key:
        raise ApiError(400, "bad_request", "field 'routing_key' must not be empty")
    problem = validate_pattern(key)
    if problem or "*" in key.split(".") or "#" in key.split("."):
        raise ApiError(400, "bad_request", problem or "routing_key must be a key, not a pattern (no * or # words)")
    try:
        await _platform(request).orchestrator.publish_event(key, body.get("payload", {}))
    except (ShuttingDown, BusUnavailable) as exc:
        raise _unavailable(exc) from None
    return web.json_response({"published": True, "routing_key": key}, status=202)


async def list_dlq(request: web.Request) -> web.Response:
    items = await _platform(request).store.list_dead_letters()
    return web.json_response({"items": [item.to_json() for item in items]})


async def retry_dlq(request: web.Request) -> web.Response:
    try:
        execution = await _platform(request).orchestrator.retry_dead_letter(request.match_info["id"])
    except DeadLetterNotFound:
        raise not_found(f"no dead letter {request.match_info['id']!r}") from None
    except AgentNotFound as exc:
        raise ApiError(409, "conflict", f"agent {exc.args[0]!r} is no longer loaded") from None
    except InvalidTransition as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.json_response({"execution_id": execution.execution_id, "status": execution.status}, status=202)


async def delete_dlq(request: web.Request) -> web.Response:
    if not await _platform(request).store.delete_dead_letter(request.match_info["id"]):
        raise not_found(f"no dead letter {request.match_info['id']!r}")
    return web.Response(status=204)


def create_app(platform: Any) -> web.Application:
    """The AgentOrchestrator application; plugins add routes through ``register_routes``."""
    app = make_app(platform, "AgentOrchestrator")
    router = app.router
    # the task path first: the router tries the routes under one prefix in the order they were added
    router.add_post("/agents/{name}/tasks", submit_task)
    router.add_get("/agents", list_agents)
    router.add_get("/agents/{name}", get_agent)
    router.add_get("/executions", list_executions)
    router.add_get("/executions/{id}", get_execution)
    router.add_get("/executions/{id}/stream", stream_execution)
    router.add_post("/executions/{id}/cancel", cancel_execution)
    router.add_post("/executions/{id}/input", provide_input)
    router.add_post("/events", publish_event)
    router.add_get("/dlq", list_dlq)
    router.add_post("/dlq/{id}/retry", retry_dlq)
    router.add_delete("/dlq/{id}", delete_dlq)
    platform.pm.hook.register_routes(app=app)
    return app
