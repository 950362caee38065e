"""The SchedulerService (port ``SCHEDULER_SERVICE_PORT``, 8004): the agents' schedules.

A schedule defined in an agent's YAML is named after the agent. The endpoints read and
write the schedules table through ``platform.scheduler``, so they answer the same whether
this process fires the schedules or another ``serve`` process does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agentrunner.interfaces import BusUnavailable
from agentrunner.orchestrator import AgentNotFound, ShuttingDown
from agentrunner.web.common import PLATFORM, REDACTOR, ApiError, make_app, not_found, read_json


def _scheduler(request: web.Request) -> Any:
    return request.app[PLATFORM].scheduler


def _shown(request: web.Request, schedule: dict[str, Any]) -> dict[str, Any]:
    # task_data may hold values that ${VAR} filled from secrets
    return {**schedule, "task_data": request.app[REDACTOR](schedule["task_data"])}


def _unknown(name: str) -> ApiError:
    return not_found(f"no schedule named {name!r}")


async def _no_body(request: web.Request) -> None:
    """The action endpoints take no fields: an empty body, or an empty JSON object."""
    if request.can_read_body and (await request.read()).strip():
        await read_json(request, {})


async def list_schedules(request: web.Request) -> web.Response:
    """``GET /schedules`` → ``{"schedules": [...]}``, by name."""
    schedules = await _scheduler(request).list_schedules()
    return web.json_response({"schedules": [_shown(request, schedule) for schedule in schedules]})


async def get_schedule(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    schedule = await _scheduler(request).get_schedule(name)
    if schedule is None:
        raise _unknown(name)
    return web.json_response(_shown(request, schedule))


async def run_schedule(request: web.Request) -> web.Response:
    """``POST /schedules/{name}/run``: submit the schedule's task now → 202 with the execution id."""
    name = request.match_info["name"]
    await _no_body(request)
    try:
        execution = await _scheduler(request).run_now(name)
    except AgentNotFound:
        raise _unknown(name) from None
    except (ShuttingDown, BusUnavailable) as exc:
        raise ApiError(503, "unavailable", str(exc), headers={"Retry-After": "5"}) from None
    if execution is None:
        raise _unknown(name)
    return web.json_response({"execution_id": execution.execution_id, "status": execution.status,
                              "schedule": name}, status=202)


def _set_enabled(enabled: bool):
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await _no_body(request)
        schedule = await _scheduler(request).set_enabled(name, enabled)
        if schedule is None:
            raise _unknown(name)
        return web.json_response(_shown(request, schedule))

    handler.__doc__ = f"``POST /schedules/{{name}}/{'enable' if enabled else 'disable'}`` → the schedule."
    return handler


def create_app(platform: Any) -> web.Application:
    """The SchedulerService application: ``/health`` and the schedule endpoints."""
    app = make_app(platform, "SchedulerService")
    router = app.router
    router.add_get("/schedules", list_schedules)
    router.add_get("/schedules/{name}", get_schedule)
    router.add_post("/schedules/{name}/run", run_schedule)
    router.add_post("/schedules/{name}/enable", _set_enabled(True))
    router.add_post("/schedules/{name}/disable", _set_enabled(False))
    return app
