"""The SlackGateway port (``SLACK_GATEWAY_PORT``, 8005): where gateway plugins receive outside traffic."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agentrunner.web.common import make_app


def create_app(platform: Any) -> web.Application:
    """``GET /health``; an installed gateway plugin (agentrunner-slack) adds its webhook here."""
    return make_app(platform, "SlackGateway")
