"""The StateManager: agents' persistent state, read through the cache.

Reads try the cache first (``STATE_CACHE_ENABLED``), then the store; writes go
to the store and then to the cache (``STATE_CACHE_WRITE_THROUGH``) or evict it.
A cache outage only costs speed: every cache failure falls back to the store.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agentrunner.cache_ttls import cache_ttls
from agentrunner.records import AgentState

log = logging.getLogger("agentrunner.state")


def _key(agent_name: str) -> str:
    return f"state:{agent_name}"


class StateManager:
    """Get, put and delete an agent's state (``agentrunner.records.AgentState``)."""

    def __init__(self, store: Any, cache: Any, settings: Any) -> None:
        self.store = store
        self.cache = cache
        self.enabled = bool(settings.state_cache_enabled)
        self.write_through = bool(settings.state_cache_write_through)
        self.ttl = cache_ttls(settings).state
        #: agents whose state this process holds ready (in the cache), with when each was last used
        self.loaded: dict[str, float] = {}

    def touch(self, agent_name: str) -> None:
        """The agent was just used: it stays loaded until it has been idle for its idle timeout."""
        self.loaded[agent_name] = time.monotonic()

    def idle_for(self, agent_name: str) -> float | None:
        """Seconds since the agent was last used, or None when it is not loaded."""
        used = self.loaded.get(agent_name)
        return None if used is None else time.monotonic() - used

    async def load(self, agent_name: str) -> AgentState | None:
        """Read the agent's state into the cache ahead of its first task (``restore_on_startup``)."""
        state = await self.get(agent_name)
        self.touch(agent_name)
        return state

    async def unload(self, agent_name: str) -> None:
        """Drop an idle agent from memory; its state stays in the store and the next task restores it."""
        self.loaded.pop(agent_name, None)
        await self._evict(agent_name)

    async def get(self, agent_name: str) -> AgentState | None:
        if self.enabled:
            try:
                cached = await self.cache.get(_key(agent_name))
                if cached is not None:
                    return AgentState.from_json(cached)
            except Exception as exc:  # the cache is an optimisation: fall back to the store
                log.warning("state cache read failed (%s); reading the store", type(exc).__name__)
        state = await self.store.get_state(agent_name)
        if state is not None:
            await self._cache(state)
        return state

    async def put(self, state: AgentState, *, expect_version: int | None = None) -> AgentState:
        """Store the state (``StateConflict`` if ``expect_version`` is stale), then update the cache."""
        try:
            stored = await self.store.put_state(state, expect_version=expect_version)
        except Exception:
            await self._evict(state.agent_name)  # the cached copy may be the stale one
            raise
        if self.write_through:
            await self._cache(stored)
        else:
            await self._evict(stored.agent_name)
        return stored

    async def delete(self, agent_name: str) -> bool:
        deleted = await self.store.delete_state(agent_name)
        await self._evict(agent_name)
        return deleted

    async def _cache(self, state: AgentState) -> None:
        if not self.enabled:
            return
        try:
            await self.cache.set(_key(state.agent_name), state.to_json(), self.ttl)
        except Exception as exc:
            log.warning("state cache write failed (%s)", type(exc).__name__)

    async def _evict(self, agent_name: str) -> None:
        if not self.enabled:
            return
        try:
            await self.cache.delete(_key(agent_name))
        except Exception as exc:
            log.warning("state cache eviction failed (%s)", type(exc).__name__)
