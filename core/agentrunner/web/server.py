"""Binding the HTTP services to their ports (one process runs every service)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
from aiohttp import web

from agentrunner.web import config, gateway, orchestrator, scheduler, state
from agentrunner.web.security import add_cors, tls_context

#: service name → (human name, settings attribute of its port, application factory)
SERVICES: dict[str, tuple[str, str, Callable[[Any], web.Application]]] = {
    "state": ("StateManager", "state_manager_port", state.create_app),
    "config": ("ConfigurationService", "config_service_port", config.create_app),
    "orchestrator": ("AgentOrchestrator", "orchestrator_port", orchestrator.create_app),
    "scheduler": ("SchedulerService", "scheduler_service_port", scheduler.create_app),
    "gateway": ("SlackGateway", "slack_gateway_port", gateway.create_app),
}


def build_app(platform: Any, name: str) -> web.Application:
    """The application of one service, with CORS when ``CORS_ENABLED``."""
    app = SERVICES[name][2](platform)
    if platform.settings.cors_enabled:
        add_cors(app, platform.settings)
    return app


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@attrs.define
class ServiceRunner:
    """The running services: where each listens, and how to stop them."""

    runners: list[web.AppRunner]
    urls: list[tuple[str, str]]

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


async def start_services(platform: Any, names: Iterable[str] | None = None, *,
                         ports: dict[str, int] | None = None) -> ServiceRunner:
    """Serve each named service (all by default) on ``BIND_HOST`` and its port.

    ``ports`` overrides ports by service name (0 picks a free one, for tests).
    """
    settings = platform.settings
    host = settings.bind_host
    running = list(names or SERVICES)
    # services run elsewhere (serve --service): where this process's /health looks for them
    platform.peer_services = {
        human: f"http://{_url_host(getattr(settings, host_attribute))}:{getattr(settings, port_attribute)}"
        for name, (human, port_attribute, _factory), host_attribute in (
            ("state", SERVICES["state"], "state_manager_host"), ("config", SERVICES["config"], "config_service_host"))
        if name not in running and "orchestrator" in running}
    runners: list[web.AppRunner] = []
    urls: list[tuple[str, str]] = []

    async def serve(app: web.Application, port: int, context: Any, label: str, path: str = "") -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=context).start()
        bound = runner.addresses[-1][1] if runner.addresses else port
        urls.append((label, f"{'https' if context else 'http'}://{_url_host(host)}:{bound}{path}"))

    try:
        for name in names or SERVICES:
            human, port_attribute, _factory = SERVICES[name]
            # the Slack webhook is protected by Slack's signature: no client certificate asked there
            await serve(build_app(platform, name), (ports or {}).get(name, getattr(settings, port_attribute)),
                        tls_context(settings, client_certificates=name != "gateway"), human)
        if settings.prometheus_enabled:
            from agentrunner import metrics

            await serve(metrics.create_app(platform), (ports or {}).get("metrics", settings.metrics_port),
                        tls_context(settings, client_certificates=False), "Metrics", "/metrics")
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return ServiceRunner(runners, urls)
