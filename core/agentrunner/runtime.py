"""The Platform: everything one process runs, wired from the settings.

``serve``, ``worker`` and ``run`` build a Platform, start it, and stop it; the
HTTP services and plugins reach every component through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentrunner.config_service import ConfigurationService
from agentrunner.logs import redact_records
from agentrunner.orchestrator import Orchestrator, RegistrationTimeout
from agentrunner.plugins import Registry, make_plugin_manager
from agentrunner.redaction import Redactor
from agentrunner.scheduler import Scheduler
from agentrunner.state_manager import StateManager

log = logging.getLogger("agentrunner.runtime")


class PlatformError(Exception):
    """The platform cannot start as configured (the message says what to change)."""


def build_backend(registry: Registry, kind: str, name: str, settings: Any, variable: str) -> Any:
    factory = registry.table(kind).get(name)
    if factory is None:
        raise PlatformError(f"{variable}: {registry.missing(kind, name)}")
    return factory(settings)


def _components(registry: Registry) -> list[tuple[str, Any]]:
    """The providers, tool types and gateways: the components that hold settings and connections."""
    return [*(("provider " + name, c) for name, c in registry.providers.items()),
            *(("tool type " + name, c) for name, c in registry.tool_types.items()),
            *(("gateway " + name, c) for name, c in registry.gateways.items())]


def configure_components(registry: Registry, settings: Any) -> None:
    """Give every provider and tool type that wants them the settings (keys, URLs) before any request."""
    for _, component in _components(registry):
        configure = getattr(component, "configure", None)
        if callable(configure):
            configure(settings)


async def close_components(registry: Registry) -> None:
    """Close the pooled connections of providers and tool types; one failing does not keep the others open."""
    for name, component in _components(registry):
        aclose = getattr(component, "aclose", None)
        if callable(aclose):
            try:
                await aclose()
            except Exception:  # closing is best effort at shutdown
                log.warning("%s did not close cleanly", name, exc_info=True)


class Platform:
    """Settings, plugins, configuration, backends and the orchestrator of one process."""

    def __init__(self, settings: Any, *, pm: Any = None, registry: Registry | None = None,
                 agents_dir: str | None = None, slots: int | None = None) -> None:
        self.settings = settings
        self.pm = pm or make_plugin_manager(settings.agentrunner_disabled_plugins)
        self.registry = registry or Registry.from_plugin_manager(self.pm)
        self.config = ConfigurationService.from_settings(settings, self.registry)
        if agents_dir is not None:
            self.config.agents_dir = agents_dir
        self.store = build_backend(self.registry, "state store", settings.state_backend, settings, "STATE_BACKEND")
        self.bus = build_backend(self.registry, "event bus", settings.event_bus_backend, settings, "EVENT_BUS_BACKEND")
        self.cache = build_backend(self.registry, "cache", settings.cache_backend, settings, "CACHE_BACKEND")
        self.state = StateManager(self.store, self.cache, settings)
        self.orchestrator = Orchestrator(settings=settings, registry=self.registry, config=self.config,
                                         store=self.store, bus=self.bus, state=self.state, slots=slots)
        self.metrics = self.orchestrator.metrics
        self.scheduler = Scheduler(settings=settings, config=self.config, store=self.store,
                                   orchestrator=self.orchestrator)
        configure_components(self.registry, settings)
        self.started = False

    async def start(self, *, consume: bool = True, watch: bool | None = None, recover: bool = True,
                    schedule: bool = False) -> None:
        """Load the agents, open the backends, start consuming tasks, then call ``startup`` hooks.

        ``recover`` re-queues executions a previous process left unfinished; ``schedule`` starts
        the scheduler (which fires the agents' schedules). Starting a started platform does nothing.
        """
        if self.started:
            return
        # every log line of this process hides the configured secrets, from the first (loading the agents)
        self._stop_redacting = redact_records(Redactor.from_settings(self.settings))
        try:
            await self._start(consume=consume, watch=watch, recover=recover, schedule=schedule)
        except BaseException:
            await self._abandon_start()
            raise
        self.started = True

    async def _start(self, *, consume: bool, watch: bool | None, recover: bool, schedule: bool) -> None:
        # Blocking work (sync function tools, file reads of hot reload) runs on this many threads.
        loop = asyncio.get_running_loop()
        # (asyncio.run and the test loops shut the default executor down with the loop)
        loop.set_default_executor(ThreadPoolExecutor(self.settings.orchestrator_worker_threads,
                                                     thread_name_prefix="agentrunner-worker"))
        self.config.load()
        await self.store.start()
        await self.bus.start()
        await self.cache.start()
        self.config.subscribe(self.orchestrator.on_config_change)
        try:
            await self.orchestrator.start(consume=consume, recover=recover)
        except RegistrationTimeout as exc:
            raise PlatformError(str(exc)) from None
        if schedule:
            await self.scheduler.start()
            await self.orchestrator.health.start_monitor()
        if watch if watch is not None else self.settings.config_hot_reload:
            await self.config.start()
        await self._call_hook("startup")

    async def _abandon_start(self) -> None:
        """Undo a start that failed half-way (a backend down, a registration timeout), so that the
        process reports the reason and exits without tasks and connections left behind."""
        steps = (lambda: self.orchestrator.stop(0), self.config.stop, self.scheduler.stop, self.bus.stop,
                 self.cache.stop, self.store.stop)
        for step in steps:
            with contextlib.suppress(Exception):
                await step()
        self._stop_redacting()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop intake, drain running executions within ``grace`` seconds, call ``shutdown`` hooks, close."""
        if not self.started:
            return
        self.started = False
        await self.scheduler.stop()
        await self.config.stop()
        await self.orchestrator.stop(grace)
        await self._call_hook("shutdown")
        await close_components(self.registry)
        await self.bus.stop()
        await self.cache.stop()
        await self.store.stop()
        self._stop_redacting()

    async def _call_hook(self, name: str) -> None:
        for result in getattr(self.pm.hook, name)(platform=self):
            if inspect.isawaitable(result):
                await result

    async def health(self) -> dict[str, Any]:
        """Each dependency's status; the platform is down when the store or the bus is."""
        report: dict[str, Any] = {}
        for name, backend in (("store", self.store), ("bus", self.bus), ("cache", self.cache)):
            try:
                await backend.health()
                report[name] = {"status": "ok", "backend": backend.name}
            except Exception as exc:  # any failure of a health probe means unavailable
                report[name] = {"status": "down", "backend": backend.name, "error": type(exc).__name__}
        down = [name for name in ("store", "bus") if report[name]["status"] != "ok"]
        status = "down" if down else "degraded" if report["cache"]["status"] != "ok" else "ok"
        return {"status": status, "dependencies": report}
