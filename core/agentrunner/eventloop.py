"""The event loop of agentrunner's long-running processes (``EVENT_LOOP``).

``serve``, ``worker`` and ``run`` run on uvloop when it is installed (it is a dependency of the
core wherever it builds): the task path is mostly event-loop work — sockets, callbacks, futures —
and uvloop does that work in C. ``EVENT_LOOP=asyncio`` keeps the standard loop (for a debugger
or a platform without uvloop); ``EVENT_LOOP=uvloop`` insists on uvloop and fails to start without it.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import gc
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Allocations (net of those freed) between two collections of the youngest generation, once a process
#: serves (Python's default is 700).
GC_THRESHOLD = 20_000

CHOICES = ("auto", "uvloop", "asyncio")


class EventLoopUnavailable(RuntimeError):
    """``EVENT_LOOP`` names a loop that cannot be used here."""


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the loop ``choice`` asks for (None: the standard asyncio loop)."""
    if choice not in CHOICES:
        raise EventLoopUnavailable(f"EVENT_LOOP={choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise EventLoopUnavailable("EVENT_LOOP=uvloop, but uvloop is not installed (pip install uvloop), "
                                       "or set EVENT_LOOP=asyncio") from None
        return None
    return uvloop.new_event_loop


def loop_name(choice: str = "auto") -> str:
    """``uvloop`` or ``asyncio``: the loop ``run`` uses for ``choice``."""
    return "asyncio" if loop_factory(choice) is None else "uvloop"


def run(coroutine: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run`` on the loop ``choice`` asks for."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(coroutine)


def settle_gc() -> None:
    """Tune the garbage collector for a process that has started and now serves tasks.

    What start-up made — modules, settings, agents, connections — lives as long as the process:
    ``gc.freeze`` leaves it out of every later collection (each full one walked some 80,000 objects
    again, tens of milliseconds on a small machine). The youngest generation is collected every
    ``GC_THRESHOLD`` net allocations instead of 700: on the task path nearly every object is freed
    by reference counting, so a collection mostly walks the objects of tasks still in flight, and
    promotes them to older generations that then fill up and are walked too. Objects in reference
    cycles are still collected, a little later. (``serve`` under load: 0.7 % of its CPU time in the
    collector instead of 2 %.)
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def start_eagerly(coroutine: Coroutine[Any, Any, T]) -> tuple[bool, Any]:
    """Start ``coroutine`` as a task that runs its first step now, as Python 3.12's eager tasks do.

    ``(True, result)`` when it ended without waiting (its exception, if it raised one, is raised here),
    else ``(False, task)``, the task running the rest of it. Either way the first step runs as the
    task — ``asyncio.current_task()`` is the task, in a copy of the current context — so cancel scopes
    and context variables behave as in any task. The caller of a coroutine that ends at once (an
    execution whose model answers without I/O) waits for no turn of the event loop, before or after it.
    """
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        task = asyncio.Task(coroutine, loop=loop, eager_start=True)
        return (True, task.result()) if task.done() else (False, task)
    rest = _Rest(coroutine)
    context = contextvars.copy_context()
    task = loop.create_task(rest, context=context)  # scheduled: its first step hands on what the eager one awaits
    caller = asyncio.current_task(loop)
    if caller is not None:
        asyncio.tasks._leave_task(loop, caller)
    asyncio.tasks._enter_task(loop, task)
    try:
        rest.awaiting = context.run(coroutine.send, None)
    except StopIteration as stop:
        rest.ended = True
        return True, stop.value
    except BaseException:
        rest.ended = True
        raise
    finally:
        asyncio.tasks._leave_task(loop, task)
        if caller is not None:
            asyncio.tasks._enter_task(loop, caller)
    return False, task


class _Rest(collections.abc.Coroutine):
    """What the task of ``start_eagerly`` runs on Python 3.11: the rest of a coroutine whose first step
    ran already. Its first ``send`` hands the task what that step is waiting for; everything else goes
    to the coroutine itself, so a cancellation before the task's first step reaches the coroutine too."""

    __slots__ = ("awaiting", "coroutine", "ended", "handed")

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.coroutine = coroutine
        self.awaiting: Any = None
        self.handed = False
        self.ended = False  # in its first step: nothing is left for the task

    def send(self, value: Any) -> Any:
        if self.ended:
            raise StopIteration
        if not self.handed:
            self.handed = True
            return self.awaiting
        return self.coroutine.send(value)

    def throw(self, *exc: Any) -> Any:  # type: ignore[override]
        if self.ended:
            raise StopIteration
        self.handed = True
        return self.coroutine.throw(*exc)

    def close(self) -> None:
        if not self.ended:
            self.coroutine.close()

    def __await__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self.send(None)
