"""Python functions the tool tests give agents as ``function`` tools."""

from __future__ import annotations

import asyncio
import enum
import threading
from typing import Literal

#: names of the threads sync tools ran on
THREADS: list[str] = []
#: set by the test: async tools wait for it (to show that calls of one turn run concurrently)
BARRIER: dict[str, asyncio.Barrier] = {}


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


def add(a: int, b: int = 0) -> int:
    """Add two integers.

    Longer text that is not part of the description.
    """
    THREADS.append(threading.current_thread().name)
    return a + b


def weather(city: str, unit: Unit = Unit.CELSIUS, days: list[int] | None = None,
            mode: Literal["short", "long"] = "short", extra: dict[str, float] | None = None) -> dict:
    return {"city": city, "unit": unit, "days": days, "mode": mode}


async def meet(name: str) -> str:
    await BARRIER["barrier"].wait()
    return f"met {name}"


def explode(reason: str) -> str:
    raise RuntimeError(f"exploded: {reason}")


async def hang() -> str:
    await asyncio.sleep(3600)
    return "never"


def nap(seconds: float, label: str) -> str:
    """Sleep a little (a task worth killing a worker in the middle of), then say so."""
    import time

    time.sleep(seconds)
    return f"napped {label}"
