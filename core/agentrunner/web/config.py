"""The ConfigurationService (port ``CONFIG_SERVICE_PORT``, 8002): agent configurations, validation, reload."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs
from aiohttp import web

from agentrunner.agent_loader import AgentConfigError, LoaderOptions, load_agent_text
from agentrunner.redaction import Redactor
from agentrunner.web.common import PLATFORM, REDACTOR, ApiError, make_app, not_found
from agentrunner.web.orchestrator import agent_json

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


def _problem(problem: Any, redactor: Redactor) -> dict[str, str]:
    # a message may quote a value that ${VAR} filled in ("got '...'")
    return redactor({"file": problem.file, "field": problem.field, "message": str(problem)})


class _ReadVariables(Mapping[str, str]):
    """The environment, remembering which variables a file read (their values are hidden in the answer)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.used: set[str] = set()  # the values read

    def __getitem__(self, name: str) -> str:
        value = self._environ[name]
        self.used.add(value)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


async def list_configs(request: web.Request) -> web.Response:
    config = request.app[PLATFORM].config
    agents = config.agents
    redactor = request.app[REDACTOR]
    return web.json_response({"agents": [agent_json(agents[name], redactor) for name in sorted(agents)],
                              "errors": [_problem(problem, redactor) for problem in config.errors]})


async def get_config(request: web.Request) -> web.Response:
    agent = request.app[PLATFORM].config.get(request.match_info["name"])
    if agent is None:
        raise not_found(f"no agent named {request.match_info['name']!r}")
    return web.json_response(agent_json(agent, request.app[REDACTOR]))


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
    # The caller wrote the YAML: whatever ${VAR} it reads from the server's environment stays hidden.
    environ = _ReadVariables(options.environ)
    options = attrs.evolve(options, environ=environ)
    filename = request.query.get("filename", "agent.yaml")
    try:
        _agent, warnings = load_agent_text(text, filename=filename, options=options, registry=platform.registry)
        errors: list[Any] = []
    except AgentConfigError as exc:
        errors, warnings = exc.errors, exc.warnings
    redactor = Redactor.from_settings(platform.settings, also=environ.used)
    return web.json_response({"valid": not errors, "errors": [_problem(p, redactor) for p in errors],
                              "warnings": [_problem(p, redactor) for p in warnings]})


async def reload_configs(request: web.Request) -> web.Response:
    change = await request.app[PLATFORM].config.reload()
    redactor = request.app[REDACTOR]
    return web.json_response(redactor({"added": sorted(change.added), "updated": sorted(change.updated),
                                       "removed": sorted(change.removed),
                                       "errors": [_problem(problem, redactor) for problem in change.errors]}))


def create_app(platform: Any) -> web.Application:
    app = make_app(platform, "ConfigurationService")
    app.router.add_get("/configs", list_configs)
    app.router.add_get("/configs/{name}", get_config)
    app.router.add_post("/configs/validate", validate_config)
    app.router.add_post("/configs/reload", reload_configs)
    return app
