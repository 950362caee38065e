"""``agentrunner worker``: processes that only consume tasks and run them.

The supervisor starts ``WORKER_PROCESSES`` child processes; each runs the
platform without its HTTP services and takes tasks from the shared event bus
(``WORKER_THREADS_PER_PROCESS`` executions at once). A child that has handled
``WORKER_MAX_REQUESTS`` tasks (± up to ``WORKER_MAX_REQUESTS_JITTER``, so they do
not all restart together) stops taking tasks, tells the supervisor, drains and
exits; the supervisor starts its replacement as soon as it is told, so the new
child connects while the old one finishes what it holds and the consumers never
run one short. A child that dies is replaced too. SIGTERM stops intake everywhere
and lets running executions finish within ``SHUTDOWN_GRACE_PERIOD``. A task in
flight when a child dies is delivered again by the bus, so replacing children
never loses a task.

Children are forked from a fork server that has imported, once, the modules a child needs (see
``preload_modules``), so a replacement starts in a fraction of a second instead of re-importing
aiohttp, aio-pika and the plugins; where there is no fork server, each child is a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
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


async def run_child(platform: Any, limit: int, announce: Callable[[str], Any],
                    retiring: Callable[[], Any] = lambda: None) -> int:
    """Consume until SIGTERM or ``limit`` tasks, then drain; the exit code.

    ``retiring`` is called when the limit is reached, before the drain: the supervisor starts the
    replacement then, not once this process has exited."""
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
            retiring()
            break
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass
    await platform.stop(platform.settings.shutdown_grace_period)
    return 0


def _child_main(config_dir: str | None, limit: int, supervisor: Any) -> None:
    """The body of one child process (forked from the fork server, or a fresh interpreter: ``spawn``).

    ``supervisor``: the sending end of a pipe; the child sends ``RETIRING`` on it when it has reached its
    limit and starts to drain."""
    from agentrunner import eventloop
    from agentrunner.cli import _Context, _platform, _setup_logging

    obj = _Context()
    platform = _platform(obj, config_dir, slots=obj.settings().worker_threads_per_process)
    _setup_logging(platform.settings)
    eventloop.settle_gc()  # what the fork server imported and the platform just built stay
    sys.exit(eventloop.run(run_child(platform, limit, lambda line: print(line, flush=True),
                                     lambda: _tell(supervisor, RETIRING)),
                           platform.settings.event_loop))


#: what a child sends the supervisor when it stops taking tasks to be replaced
RETIRING = "retiring"


def _tell(connection: Any, message: str) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone: nobody to start a replacement anyway
        connection.send(message)


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


class _Child:
    """A child process, when it started, and the reading end of the pipe it tells the supervisor on."""

    def __init__(self, process: Any, reader: Any) -> None:
        self.process = process
        self.started = time.monotonic()
        self.reader: Any = reader  # None once the child has closed its end (it exited)

    def message(self) -> str | None:
        """What the child sent, if anything is waiting to be read."""
        if self.reader is None or not self.reader.poll():
            return None
        try:
            return self.reader.recv()
        except (EOFError, OSError):  # it exited: its sentinel says so
            self.close()
            return None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


class Supervisor:
    """Keeps ``processes`` children taking tasks until SIGTERM, replacing those that retire or exit.

    ``target(config_dir, limit, connection)`` is the body of a child (``_child_main``)."""

    def __init__(self, settings: Any, config_dir: str | None, processes: int,
                 announce: Callable[[str], Any] = print, target: Callable[..., Any] = _child_main) -> None:
        self.settings = settings
        self.config_dir = config_dir
        self.processes = processes
        self.announce = announce
        self.stopping = False
        self.replaced = 0
        self._target = target
        self._context = _context()
        self._children: dict[int, _Child] = {}  # slot → the child taking its share of the tasks
        self._retiring: list[_Child] = []  # children draining after their limit, already replaced

    def _start(self, slot: int) -> None:
        limit = request_limit(self.settings.worker_max_requests, self.settings.worker_max_requests_jitter)
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=self._target, args=(self.config_dir, limit, writer),
                                        name=f"agentrunner-worker-{slot}", daemon=False)
        process.start()
        writer.close()  # the child has its own: the reader sees the end of the pipe when the child exits
        self._children[slot] = _Child(process, reader)

    def _stop(self, *_: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.announce(f"stopping: no new tasks; workers finish running executions "
                      f"(up to {self.settings.shutdown_grace_period:g} s)")
        for child in [*self._children.values(), *self._retiring]:
            # (one that has drained may exit between the check and the signal)
            with contextlib.suppress(ProcessLookupError):
                if child.process.is_alive():
                    os.kill(child.process.pid, signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in range(self.processes):
            self._start(slot)
        self.announce(f"supervisor {os.getpid()}: {self.processes} worker processes")
        deadline = None
        while self._children or self._retiring:
            children = [*self._children.values(), *self._retiring]
            # woken at once by a child that retires or exits (a signal wakes it within 0.1 s)
            multiprocessing.connection.wait([child.process.sentinel for child in children]
                                            + [child.reader for child in children if child.reader is not None],
                                            timeout=0.1)
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.settings.shutdown_grace_period + KILL_AFTER
            for slot, child in list(self._children.items()):
                if child.message() == RETIRING and not self.stopping:
                    # it takes no more tasks: its replacement connects while it finishes what it holds
                    del self._children[slot]
                    self._retiring.append(child)
                    self.replaced += 1
                    self._start(slot)
            for child in list(self._retiring):
                if self._ended(child, deadline):
                    self._retiring.remove(child)
            for slot, child in list(self._children.items()):
                if not self._ended(child, deadline):
                    continue
                del self._children[slot]
                if self.stopping:
                    continue
                if child.process.exitcode != 0:
                    self.announce(f"worker {child.process.pid} exited with code {child.process.exitcode}; "
                                  "starting another")
                    if time.monotonic() - child.started < QUICK_DEATH:
                        time.sleep(1.0)  # it died at once: do not spin
                self.replaced += 1
                self._start(slot)
        self.announce("stopped")
        return 0

    def _ended(self, child: _Child, deadline: float | None) -> bool:
        """Whether ``child`` has exited (then reaped); past the stop ``deadline`` it is killed."""
        process = child.process
        if process.is_alive():
            if deadline is not None and time.monotonic() > deadline:
                self.announce(f"worker {process.pid} did not stop in time; killed")
                process.kill()
            return False
        process.join()
        child.close()
        if process.exitcode != 0 and child in self._retiring:
            self.announce(f"worker {process.pid} exited with code {process.exitcode} while draining")
        return True
