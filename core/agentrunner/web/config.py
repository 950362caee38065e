"""The ConfigurationService (port ``CONFIG_SERVICE_PORT``, 8002): agent configurations, validation, reload."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agentrunner.agent_loader import AgentConfigError, LoaderOptions, load_agent_text
from agentrunner.web.common import PLATFORM, ApiError, make_app, not_found
from agentrunner.web.orchestrator import agent_json

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


def _problem(problem: Any) -> dict[str, str]:
    return {"file": problem.file, "field": problem.field, "message": str(problem)}


async def list_configs(request: web.Request) -> web.Response:
    config = request.app[PLATFORM].config
    agents = config.agents
    return web.json_response({"agents": [agent_json(agents[name]) for name in sorted(agents)],
                              "errors": [_problem(problem) for problem in config.errors]})


async def get_config(request: web.Request) -> web.Response:
    agent = request.app[PLATFORM].config.get(request.match_info["name"])
    if agent is None:
        raise not_found(f"no agent named {request.match_info['name']!r}")
    return web.json_response(agent_json(agent))


async def validate_config(request: web.Request) -> web.Response:
    """``POST /configs/validate``: a YAML agent file in the body → its errors and warnings."""
    if request.content_type not in YAML_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"send the agent file as application/yaml (got {request.content_type or 'none'})")
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "the agent file is not UTF-8 text") from None
    platform = request.app[PLATFORM]
    options = LoaderOptions.from_settings(platform.settings)
    filename = request.query.get("filename", "agent.yaml")
    try:
        _agent, warnings = load_agent_text(text, filename=filename, options=options, registry=platform.registry)
    except AgentConfigError as exc:
        return web.json_response({"valid": False, "errors": [_problem(p) for p in exc.errors],
                                  "warnings": [_problem(p) for p in exc.warnings]})
    return web.json_response({"valid": True, "errors": [], "warnings": [_problem(p) for p in warnings]})


async def reload_configs(request: web.Request) -> web.Response:
    change = await request.app[PLATFORM].config.reload()
    return web.json_response({"added": sorted(change.added), "updated": sorted(change.updated),
                              "removed": sorted(change.removed),
                              "errors": [_problem(problem) for problem in change.errors]})


def create_app(platform: Any) -> web.Application:
    app = make_app(platform, "ConfigurationService")
    app.router.add_get("/configs", list_configs)
    app.router.add_get("/configs/{name}", get_config)
    app.router.add_post("/configs/validate", validate_config)
    app.router.add_post("/configs/reload", reload_configs)
    return app
