"""Live output of executions: the text deltas a streaming provider sends, for SSE and ``run --stream``.

An execution is streamed when somebody asked before or while it runs (``POST
/agents/{name}/tasks`` with ``"stream": true``, ``GET /executions/{id}/stream``,
``agentrunner run --stream``): its model calls then use the provider's
``stream`` and every delta is kept in the execution's ``ExecutionStream`` until
a while after it finishes, so a reader who connects late still gets all of it.
Executions nobody streams cost nothing here. Streams live in the process that
runs the execution.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

#: seconds a finished stream stays readable for late readers
LINGER = 60.0


class ExecutionStream:
    """The events of one execution: ``delta`` ({"text"}), ``retry`` ({"attempt", "error"}), then ``done``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.finished_at: float | None = None
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def push(self, event: str, data: Any) -> None:
        if self.done:
            return
        self.events.append((event, data))
        self._notify()

    def finish(self, execution: Any) -> None:
        if self.done:
            return
        self.events.append(("done", execution))
        self.finished_at = time.monotonic()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, idle: float | None = None) -> AsyncIterator[tuple[str, Any]]:
        """Every event from the first, then new ones as they come, until ``done``.

        With ``idle`` set, yields ``("idle", None)`` after that many seconds without
        an event, so the reader can send a keep-alive or check the execution elsewhere.
        """
        index = 0
        while True:
            while index < len(self.events):
                event, data = self.events[index]
                index += 1
                yield event, data
                if event == "done":
                    return
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), idle)
            except TimeoutError:
                yield "idle", None


class StreamHub:
    """The streams of the executions of this process, by execution id."""

    def __init__(self, linger: float = LINGER) -> None:
        self.linger = linger
        self._streams: dict[str, ExecutionStream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, execution_id: str) -> ExecutionStream:
        """The execution's stream, created when it has none yet (its model calls stream from now on)."""
        self._expire()
        stream = self._streams.get(execution_id)
        if stream is None:
            stream = self._streams[execution_id] = ExecutionStream()
        return stream

    def get(self, execution_id: str) -> ExecutionStream | None:
        return self._streams.get(execution_id) if self._streams else None

    def discard(self, execution_id: str) -> None:
        self._streams.pop(execution_id, None)

    def finish(self, execution: Any) -> None:
        """The execution reached a final status: readers get ``done`` with it."""
        stream = self._streams.get(execution.execution_id) if self._streams else None
        if stream is not None:
            stream.finish(execution)
            self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        for execution_id, stream in list(self._streams.items()):
            if stream.finished_at is not None and now - stream.finished_at > self.linger:
                del self._streams[execution_id]
