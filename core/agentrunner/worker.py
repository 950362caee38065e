"""``agentrunner worker``: processes that only consume tasks and run them.

The supervisor starts ``WORKER_PROCESSES`` child processes; each runs the
platform without its HTTP services and takes tasks from the shared event bus
(``WORKER_THREADS_PER_PROCESS`` executions at once). A child that has handled
``WORKER_MAX_REQUESTS`` tasks (± up to ``WORKER_MAX_REQUESTS_JITTER``, so they do
not all restart together) drains and exits, and the supervisor starts a new one;
so does a child that dies. SIGTERM stops intake everywhere and lets running
executions finish within ``SHUTDOWN_GRACE_PERIOD``. A task in flight when a child
dies is delivered again by the bus, so replacing children never loses a task.

Children are forked from a fork server that has imported, once, the modules a child needs (see
``preload_modules``), so a replacement starts in a fraction of a second instead of re-importing
aiohttp, aio-pika and the plugins; where there is no fork server, each child is a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("agentrunner.worker")

#: a child that dies sooner than this after starting is replaced only after a pause (no crash loop)
QUICK_DEATH = 5.0
#: seconds the supervisor waits after the grace period before killing children that still run
KILL_AFTER = 10.0


def request_limit(max_requests: int, jitter: int, rng: random.Random | None = None) -> int:
    """Tasks one child handles before it is replaced (0: never)."""
    if max_requests <= 0:
        return 0
    return max_requests + (rng or random).randint(0, max(0, jitter))


async def run_child(platform: Any, limit: int, announce: Callable[[str], Any]) -> int:
    """Consume until SIGTERM or ``limit`` tasks, then drain; the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await platform.start(consume=True)
    orchestrator = platform.orchestrator
    announce(f"worker {os.getpid()} consuming ({orchestrator.slots} at once"
             + (f", replaced after {limit} tasks)" if limit else ")"))
    while not stop.is_set():
        if limit and orchestrator.tasks_handled >= limit:
            announce(f"worker {os.getpid()} handled {orchestrator.tasks_handled} tasks; draining to be replaced")
            break
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass
    await platform.stop(platform.settings.shutdown_grace_period)
    return 0


def _child_main(config_dir: str | None, limit: int) -> None:
    """The body of one child process (forked from the fork server, or a fresh interpreter: ``spawn``)."""
    from agentrunner import eventloop
    from agentrunner.cli import _Context, _platform, _setup_logging

    obj = _Context()
    platform = _platform(obj, config_dir, slots=obj.settings().worker_threads_per_process)
    _setup_logging(platform.settings)
    sys.exit(eventloop.run(run_child(platform, limit, lambda line: print(line, flush=True)),
                           platform.settings.event_loop))


def preload_modules() -> list[str]:
    """The modules a child needs that this process has already imported, in import order: those of
    agentrunner, of its plugins and of the libraries they require (the supervisor built the platform
    once to check the configuration, so its backends' client libraries are among them).

    The fork server imports them once and forks every child from there, so a child (and each
    replacement, every ``WORKER_MAX_REQUESTS`` tasks) starts without a second of imports.
    """
    from importlib import metadata

    wanted = {"agentrunner"} | {entry.dist.name for entry in metadata.entry_points(group="agentrunner")
                                 if entry.dist is not None}
    seen: set[str] = set()
    while wanted:  # the distributions and, recursively, what they require
        name = _normalise(wanted.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        wanted.update(re.split(r"[\s\[;<>=!~(]", requirement, maxsplit=1)[0] for requirement in requires
                      if "extra ==" not in requirement)
    tops = {top for top, dists in metadata.packages_distributions().items()
            if any(_normalise(dist) in seen for dist in dists)}
    return [name for name, module in list(sys.modules.items())
            if name.split(".", 1)[0] in tops and getattr(module, "__file__", None)
            and not any(part.startswith("_") for part in name.split("."))]


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _context() -> Any:
    """``forkserver`` with the modules preloaded where there is one (Linux, macOS), else ``spawn``."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload_modules())
    return context


class Supervisor:
    """Keeps ``processes`` children running until SIGTERM, replacing the ones that exit."""

    def __init__(self, settings: Any, config_dir: str | None, processes: int,
                 announce: Callable[[str], Any] = print) -> None:
        self.settings = settings
        self.config_dir = config_dir
        self.processes = processes
        self.announce = announce
        self.stopping = False
        self.replaced = 0
        self._context = _context()
        self._children: dict[int, tuple[Any, float]] = {}  # slot → (process, started at)

    def _start(self, slot: int) -> None:
        limit = request_limit(self.settings.worker_max_requests, self.settings.worker_max_requests_jitter)
        process = self._context.Process(target=_child_main, args=(self.config_dir, limit),
                                        name=f"agentrunner-worker-{slot}", daemon=False)
        process.start()
        self._children[slot] = (process, time.monotonic())

    def _stop(self, *_: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.announce(f"stopping: no new tasks; workers finish running executions "
                      f"(up to {self.settings.shutdown_grace_period:g} s)")
        for process, _started in self._children.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in range(self.processes):
            self._start(slot)
        self.announce(f"supervisor {os.getpid()}: {self.processes} worker processes")
        deadline = None
        while self._children:
            time.sleep(0.1)
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.settings.shutdown_grace_period + KILL_AFTER
            for slot, (process, started) in list(self._children.items()):
                if process.is_alive():
                    if deadline is not None and time.monotonic() > deadline:
                        self.announce(f"worker {process.pid} did not stop in time; killed")
                        process.kill()
                    continue
                process.join()
                del self._children[slot]
                if self.stopping:
                    continue
                if process.exitcode != 0:
                    self.announce(f"worker {process.pid} exited with code {process.exitcode}; starting another")
                    if time.monotonic() - started < QUICK_DEATH:
                        time.sleep(1.0)  # it died at once: do not spin
                self.replaced += 1
                self._start(slot)
        self.announce("stopped")
        return 0
