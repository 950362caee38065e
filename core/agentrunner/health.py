"""Agent health across processes: heartbeats, and ``agent.health.changed`` when an agent goes quiet.

Every process that consumes tasks publishes a heartbeat every ``AGENT_HEALTH_CHECK_INTERVAL``
seconds, naming the agents it runs. A monitor — in each process that runs the scheduler, i.e.
``agentrunner serve`` — hears every heartbeat; an agent no process has vouched for during
``AGENT_UNRESPONSIVE_THRESHOLD`` seconds becomes ``unresponsive`` (``agent.health.changed``, and
``health`` in ``GET /agents/{name}``), and ``healthy`` again with the next heartbeat. Heartbeats
travel on the bus as plumbing (header ``internal``): agents subscribed to ``#`` never see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agentrunner.records import new_id

log = logging.getLogger("agentrunner.orchestrator")

HEARTBEAT_KEY = "agentrunner.heartbeat"


class HealthMonitor:
    def __init__(self, orchestrator: Any, settings: Any, clock: Callable[[], float] = time.time) -> None:
        self.orchestrator = orchestrator
        self.interval = float(settings.agent_health_check_interval)
        self.threshold = float(settings.agent_unresponsive_threshold)
        self.clock = clock
        self.last_seen: dict[str, float] = {}  # agent → time of the latest heartbeat naming it
        self.status: dict[str, str] = {}  # agent → "healthy" | "unresponsive"
        self._tasks: list[asyncio.Task] = []
        self._subscription: Any = None

    def health_of(self, agent_name: str) -> dict[str, Any]:
        seen = self.last_seen.get(agent_name)
        return {"status": self.status.get(agent_name, "unknown"),
                "last_heartbeat": datetime.fromtimestamp(seen, UTC).isoformat() if seen else None}

    async def start_heartbeats(self) -> None:
        """In a consuming process: say which agents it runs, now and every interval."""
        await self.beat()
        self._tasks.append(asyncio.ensure_future(self._every(self.beat)))

    async def start_monitor(self) -> None:
        """In a serve process: listen to every process's heartbeats and judge the agents."""
        self._subscription = await self.orchestrator.bus.subscribe(
            f"agentrunner.health.{new_id()}", [HEARTBEAT_KEY], self._on_heartbeat, exclusive=True,
            auto_ack=True)  # a lost beat is replaced by the next one
        self._tasks.append(asyncio.ensure_future(self._every(self.check)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._subscription is not None:
            await self._subscription.cancel()
            self._subscription = None

    async def beat(self) -> None:
        orchestrator = self.orchestrator
        try:
            await orchestrator.bus.publish(HEARTBEAT_KEY, {
                "process": orchestrator.process_id, "agents": sorted(orchestrator.config.agents),
                "at": self.clock()}, {"internal": True}, persistent=False)
        except Exception as exc:  # the bus is down: /health says so; the next beat tries again
            log.warning("heartbeat not sent: %s", exc)

    async def _on_heartbeat(self, event: Any) -> None:
        at = float(event.payload.get("at", self.clock()))
        for agent in event.payload.get("agents", ()):
            if at > self.last_seen.get(agent, 0.0):
                self.last_seen[agent] = at
        await self.check()

    async def check(self) -> None:
        """Publish ``agent.health.changed`` for every agent whose health changed."""
        now = self.clock()
        for agent in sorted(self.orchestrator.config.agents):
            seen = self.last_seen.get(agent)
            status = "healthy" if seen is not None and now - seen <= self.threshold else "unresponsive"
            if seen is None and agent not in self.status:
                continue  # no process has run it yet since this monitor started: nothing to judge
            if self.status.get(agent) != status:
                self.status[agent] = status
                log.log(logging.WARNING if status == "unresponsive" else logging.INFO,
                        "agent %s is %s (last heartbeat %s)", agent, status, self.health_of(agent)["last_heartbeat"])
                await self.orchestrator.bus.publish("agent.health.changed", {
                    "agent_name": agent, "status": status, **self.health_of(agent)})

    async def _every(self, action: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await action()
            except Exception:  # keep beating and checking whatever one round did
                log.exception("health round failed")
