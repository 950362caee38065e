"""The SchedulerService (port ``SCHEDULER_SERVICE_PORT``, 8004)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agentrunner.web.common import make_app


def create_app(platform: Any) -> web.Application:
    """``GET /health``; the schedule endpoints join it with the scheduler."""
    return make_app(platform, "SchedulerService")
