"""The SlackGateway port (``SLACK_GATEWAY_PORT``, 8005): where gateway plugins receive outside traffic.

Every registered gateway (``register_gateways``) may add routes to this application
(``routes(app)``) and name the paths that authenticate by their own means, not by API
key (``public_paths``: the Slack webhook checks Slack's signature). A gateway starts
with this application (``start(platform)``: Socket Mode connections, subscriptions to
results) and stops with it.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from agentrunner.web.common import AUTH_EXEMPT, make_app

log = logging.getLogger("agentrunner.gateway")


def create_app(platform: Any) -> web.Application:
    """``GET /health`` and the routes of every installed gateway (agentrunner-slack adds its webhook)."""
    app = make_app(platform, "SlackGateway")
    gateways = list(platform.registry.gateways.values())
    exempt: list[str] = []
    for gateway in gateways:
        add_routes = getattr(gateway, "routes", None)
        if callable(add_routes):
            add_routes(app)
        exempt.extend(getattr(gateway, "public_paths", ()))
    app[AUTH_EXEMPT] = tuple(exempt)

    async def start(_app: web.Application) -> None:
        for gateway in gateways:
            await gateway.start(platform)
            log.info("gateway %s started", gateway.name)

    async def stop(_app: web.Application) -> None:
        for gateway in reversed(gateways):
            try:
                await gateway.stop()
            except Exception:  # one gateway failing to stop must not keep the others running
                log.warning("gateway %s did not stop cleanly", gateway.name, exc_info=True)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app
