"""The event loop of agentrunner's long-running processes (``EVENT_LOOP``).

``serve``, ``worker`` and ``run`` run on uvloop when it is installed (it is a dependency of the
core wherever it builds): the task path is mostly event-loop work — sockets, callbacks, futures —
and uvloop does that work in C. ``EVENT_LOOP=asyncio`` keeps the standard loop (for a debugger
or a platform without uvloop); ``EVENT_LOOP=uvloop`` insists on uvloop and fails to start without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

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
