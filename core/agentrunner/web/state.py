"""The StateManager service (port ``STATE_MANAGER_PORT``, 8001): ``GET|PUT|DELETE /state/{agent_name}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agentrunner.interfaces import StateConflict
from agentrunner.records import AgentState, utcnow
from agentrunner.web.common import PLATFORM, ApiError, make_app, not_found, read_json


async def get_state(request: web.Request) -> web.Response:
    manager = request.app[PLATFORM].state
    name = request.match_info["agent_name"]
    loaded = name in manager.loaded  # before the read below, which would load it
    state = await manager.get(name)
    if state is None:
        raise not_found(f"no state stored for agent {name!r}")
    # `loaded`: this process holds the agent ready; an idle agent is unloaded and its next task restores it
    return web.json_response({**state.to_json(), "loaded": loaded})


async def put_state(request: web.Request) -> web.Response:
    """Replace an agent's state; with ``version`` the write is refused (409) if it changed meanwhile."""
    body = await read_json(request, {"state_data": "object", "conversation_history": "array",
                                     "metadata": "object", "version": "number"}, required=("state_data",))
    if "version" in body and (not isinstance(body["version"], int) or body["version"] < 0):
        raise ApiError(400, "bad_request", "field 'version' must be a non-negative integer")
    manager = request.app[PLATFORM].state
    name = request.match_info["agent_name"]
    current = await manager.get(name)
    state = AgentState(agent_name=name, state_data=body["state_data"],
                       conversation_history=body.get("conversation_history",
                                                     current.conversation_history if current else []),
                       metadata=body.get("metadata", current.metadata if current else {}),
                       version=current.version if current else 0, last_activity=utcnow())
    try:
        stored = await manager.put(state, expect_version=body.get("version"))
    except StateConflict as exc:
        raise ApiError(409, "conflict", f"the state of {name!r} changed meanwhile: {exc}") from None
    return web.json_response(stored.to_json())


async def delete_state(request: web.Request) -> web.Response:
    if not await request.app[PLATFORM].state.delete(request.match_info["agent_name"]):
        raise not_found(f"no state stored for agent {request.match_info['agent_name']!r}")
    return web.Response(status=204)


def create_app(platform: Any) -> web.Application:
    app = make_app(platform, "StateManager")
    app.router.add_get("/state/{agent_name}", get_state)
    app.router.add_put("/state/{agent_name}", put_state)
    app.router.add_delete("/state/{agent_name}", delete_state)
    return app
