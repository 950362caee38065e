"""Prometheus metrics of one platform (``PROMETHEUS_ENABLED``: served on ``METRICS_PORT`` at ``/metrics``).

Every name starts with ``agentrunner_``. Each platform has a registry of its own, so several
platforms in one process (tests) never mix their counts. Counters are updated where things happen;
the queue depths and the dead-letter count are read when Prometheus scrapes.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

log = logging.getLogger("agentrunner.metrics")

#: execution durations, seconds: from an echo answer to a long collaboration
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))


class _Counter:
    """A labelled counter kept as plain numbers and handed to prometheus_client when it is scraped.

    An update is one dictionary operation: prometheus_client's own children take a lock on every
    ``inc``, and a task makes half a dozen of them. Updates and scrapes both run on the event loop.
    """

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def collect(self) -> Iterator[Any]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        yield family


class _Histogram:
    """A labelled histogram kept as plain numbers (see ``_Counter``): a count per bucket and the sum."""

    def __init__(self, name: str, documentation: str, labels: list[str], buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = list(buckets)
        #: labels → [observations in each bucket (not cumulative)…, sum]
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = [0] * (len(self.bounds) + 1)
        counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        counts[-1] += value

    def collect(self) -> Iterator[Any]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, counts in list(self.values.items()):
            cumulative = list(itertools.accumulate(counts[:-1]))
            family.add_metric(list(labels), [(floatToGoString(bound), count)
                                             for bound, count in zip(self.bounds, cumulative, strict=True)],
                              sum_value=counts[-1])
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks_submitted = _Counter("agentrunner_tasks_submitted", "Tasks submitted", ["agent"])
        self.executions = _Counter("agentrunner_executions", "Executions that ended, by final status",
                                   ["agent", "status"])
        self.duration = _Histogram("agentrunner_execution_duration_seconds", "Execution duration, first start to end",
                                   ["agent"], DURATION_BUCKETS)
        self.tokens = _Counter("agentrunner_llm_tokens", "LLM tokens", ["provider", "model", "direction"])
        self.tool_calls = _Counter("agentrunner_tool_calls", "Tool calls, by outcome (ok or error)",
                                   ["tool", "outcome"])
        self.http_requests = _Counter("agentrunner_http_requests", "HTTP requests by service and status",
                                      ["service", "status"])
        for collector in (self.tasks_submitted, self.executions, self.duration, self.tokens, self.tool_calls,
                          self.http_requests):
            r.register(collector)
        self.queue_depth = Gauge("agentrunner_queue_depth", "Task messages waiting in each task queue", ["queue"],
                                 registry=r)
        self.dlq_size = Gauge("agentrunner_dlq_size", "Dead-lettered executions", registry=r)

    def task_submitted(self, agent: str) -> None:
        self.tasks_submitted.inc((agent,))

    def execution_ended(self, agent: str, status: str, seconds: float | None) -> None:
        self.executions.inc((agent, status))
        if seconds is not None:
            self.duration.observe((agent,), seconds)

    def tokens_used(self, provider: str, model: str, input_tokens: int, output_tokens: int) -> None:
        self.tokens.inc((provider, model, "input"), input_tokens)
        self.tokens.inc((provider, model, "output"), output_tokens)

    def tool_called(self, tool: str, ok: bool) -> None:
        self.tool_calls.inc((tool, "ok" if ok else "error"))

    def http_request(self, service: str, status: int) -> None:
        self.http_requests.inc((service, str(status)))

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
