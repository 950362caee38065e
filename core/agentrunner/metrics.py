"""Prometheus metrics of one platform (``PROMETHEUS_ENABLED``: served on ``METRICS_PORT`` at ``/metrics``).

Every name starts with ``agentrunner_``. Each platform has a registry of its own, so several
platforms in one process (tests) never mix their counts. Counters are updated where things happen;
the queue depths and the dead-letter count are read when Prometheus scrapes.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("agentrunner.metrics")

#: execution durations, seconds: from an echo answer to a long collaboration
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks_submitted = Counter("agentrunner_tasks_submitted", "Tasks submitted", ["agent"], registry=r)
        self.executions = Counter("agentrunner_executions", "Executions that ended, by final status",
                                  ["agent", "status"], registry=r)
        self.duration = Histogram("agentrunner_execution_duration_seconds", "Execution duration, first start to end",
                                  ["agent"], buckets=DURATION_BUCKETS, registry=r)
        self.tokens = Counter("agentrunner_llm_tokens", "LLM tokens", ["provider", "model", "direction"], registry=r)
        self.tool_calls = Counter("agentrunner_tool_calls", "Tool calls, by outcome (ok or error)",
                                  ["tool", "outcome"], registry=r)
        self.http_requests = Counter("agentrunner_http_requests", "HTTP requests by service and status",
                                     ["service", "status"], registry=r)
        self.queue_depth = Gauge("agentrunner_queue_depth", "Task messages waiting in each task queue", ["queue"],
                                 registry=r)
        self.dlq_size = Gauge("agentrunner_dlq_size", "Dead-lettered executions", registry=r)

        # labelled children by their labels: prometheus_client's labels() takes a lock on every call
        self._children: dict[tuple, Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def task_submitted(self, agent: str) -> None:
        self._child(self.tasks_submitted, agent).inc()

    def execution_ended(self, agent: str, status: str, seconds: float | None) -> None:
        self._child(self.executions, agent, status).inc()
        if seconds is not None:
            self._child(self.duration, agent).observe(seconds)

    def tokens_used(self, provider: str, model: str, input_tokens: int, output_tokens: int) -> None:
        self._child(self.tokens, provider, model, "input").inc(input_tokens)
        self._child(self.tokens, provider, model, "output").inc(output_tokens)

    def tool_called(self, tool: str, ok: bool) -> None:
        self._child(self.tool_calls, tool, "ok" if ok else "error").inc()

    def http_request(self, service: str, status: int) -> None:
        self._child(self.http_requests, service, str(status)).inc()

    async def refresh(self, platform: Any) -> None:
        """Read what is measured at scrape time: queue depths and the dead-letter count."""
        for mode in sorted(platform.registry.execution_modes):
            queue = f"agentrunner.tasks.{mode}"
            try:
                self.queue_depth.labels(queue).set(await platform.bus.queue_depth(queue))
            except Exception as exc:  # a bus outage: /health reports it; the scrape still answers
                log.debug("queue depth of %s unavailable: %s", queue, type(exc).__name__)
        try:
            self.dlq_size.set(len(await platform.store.list_dead_letters()))
        except Exception as exc:
            log.debug("dead-letter count unavailable: %s", type(exc).__name__)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def create_app(platform: Any) -> web.Application:
    """``GET /metrics`` in the Prometheus text format (on ``METRICS_PORT``)."""

    async def metrics(request: web.Request) -> web.Response:
        await platform.metrics.refresh(platform)
        # CONTENT_TYPE_LATEST carries a charset: aiohttp wants it as a header, not content_type=
        return web.Response(body=platform.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
