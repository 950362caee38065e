"""The embedded cache: JSON values with per-key TTLs in process memory.

It is the default ``memory`` cache, used when no Redis is configured. The cache
holds at most ``CACHE_MAX_ENTRIES`` keys (default 10,000) and evicts the least
recently used one beyond that, so its memory stays flat. Expiry uses the
monotonic clock; an expired key is dropped when it is read, and a sweep (every
``sweep_interval`` seconds, from a background task and on writes) drops the
expired keys nobody reads. Values are stored as JSON text, as Redis stores
them: a value that is not JSON-able is a ``TypeError`` at ``set``, and changing
a value after ``set`` or after ``get`` never changes what the cache holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import agentrunner

DEFAULT_MAX_ENTRIES = 10_000


class MemoryCache:
    """A bounded in-process LRU cache with per-key TTLs (``CACHE_BACKEND=memory``).

    ``ttl=None`` never expires; a ``ttl`` of zero or less deletes the key.
    ``clock`` (seconds, monotonic) can be replaced in tests.
    """

    name = "memory"
    #: Seconds between two sweeps of expired keys.
    sweep_interval = 30.0

    def __init__(self, settings: Any = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        max_entries = getattr(settings, "cache_max_entries", None)
        self.max_entries = int(max_entries) if max_entries is not None else DEFAULT_MAX_ENTRIES
        if self.max_entries < 1:
            raise ValueError(f"CACHE_MAX_ENTRIES must be at least 1 (got {self.max_entries})")
        self._clock = clock
        # key → (expiry on the monotonic clock or None, value as JSON text); order is recency of use.
        self._entries: OrderedDict[str, tuple[float | None, str]] = OrderedDict()
        self._next_sweep = clock() + self.sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """How many keys are held (expired ones not yet swept included)."""
        return len(self._entries)

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_periodically(), name="agentrunner-memory-cache-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self._entries.clear()

    async def health(self) -> None:
        """An in-process cache is always reachable."""

    async def get(self, key: str) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, payload = entry
        if expires is not None and expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return json.loads(payload)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        payload = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        now = self._clock()
        if ttl is not None and ttl <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (None if ttl is None else now + ttl, payload)
        self._entries.move_to_end(key)
        if now >= self._next_sweep:
            self.sweep(now)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    def sweep(self, now: float | None = None) -> int:
        """Drop every expired key now; returns how many were dropped."""
        now = self._clock() if now is None else now
        expired = [key for key, (expires, _) in self._entries.items() if expires is not None and expires <= now]
        for key in expired:
            del self._entries[key]
        self._next_sweep = now + self.sweep_interval
        return len(expired)

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            self.sweep()


@agentrunner.hookimpl
def register_caches(register: Callable[[Any], None]) -> None:
    register(MemoryCache)
