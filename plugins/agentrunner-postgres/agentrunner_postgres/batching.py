"""Group commit: concurrent writes of one kind go to PostgreSQL together, as one statement.

Each task costs the store one to three writes (create, finish, and a claim when it runs longer than
the orchestrator's CLAIM_AFTER; a task whose submitter waits for it is created by its finish, an
upsert), and under load dozens of tasks write at once. One statement and
one commit for all of them costs the server one WAL flush instead of dozens, and the client one
round trip. ``GroupWriter`` does this without a timer, so a lone write is never held back: the first
write goes at once, and the writes that arrive while ``max_in_flight`` batches are running wait for
the next one, which takes them all (up to ``max_batch``). The busier the store, the larger the batches.

A batch never holds two writes with the same key (an execution id): the second waits for the next
batch, so writes to one row apply in the order they were made, as they would one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

#: Writes in one statement at most: enough to absorb every request in flight on a busy process.
MAX_BATCH = 128
#: Batches of one kind running at once: the next batch fills while one waits for its commit.
MAX_IN_FLIGHT = 2


class GroupWriter(Generic[Item, Outcome]):
    """Runs ``write(items)`` for the items of concurrent ``submit`` calls and gives each caller its outcome.

    ``write`` returns one outcome per item, in order; an outcome that is an exception is raised to
    that caller only. An exception raised by ``write`` itself is raised to every caller of the batch.
    """

    def __init__(self, write: Callable[[Sequence[Item]], Awaitable[Sequence[Outcome | BaseException]]],
                 key: Callable[[Item], Hashable], *, max_batch: int = MAX_BATCH,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._write = write
        self._key = key
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._in_flight: set[asyncio.Task] = set()
        #: How many statements and writes went to the database (tests and benchmarks read them).
        self.batches = 0
        self.items = 0

    async def submit(self, item: Item) -> Outcome:
        """Write ``item`` with whatever else is waiting; its outcome once the batch has committed."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start_batches()
        return await future

    async def drain(self) -> None:
        """Wait until every batch started has finished (the store waits before closing its pool)."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _start_batches(self) -> None:
        while self._pending and len(self._in_flight) < self._max_in_flight:
            batch = self._take()
            if not batch:
                return
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _take(self) -> list[tuple[Item, asyncio.Future]]:
        """The next batch: pending writes in order, callers that gave up left out, one write per key."""
        batch: list[tuple[Item, asyncio.Future]] = []
        keys: set[Hashable] = set()
        kept: list[tuple[Item, asyncio.Future]] = []
        for entry in self._pending:
            item, future = entry
            if future.done():  # its caller was cancelled before the write went out: nothing to do
                continue
            key = self._key(item)
            if len(batch) >= self._max_batch or key in keys:
                kept.append(entry)
                continue
            keys.add(key)
            batch.append(entry)
        self._pending = kept
        return batch

    async def _run(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            outcomes = await self._write([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _finished(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        with contextlib.suppress(asyncio.CancelledError):
            task.exception()  # retrieved: the callers got it
        self._start_batches()
