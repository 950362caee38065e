"""The embedded in-memory cache: the cache contract, plus LRU bounds, sweeping and the TTL settings."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from agentrunner.cache_ttls import CacheTTLs, cache_ttls
from agentrunner.default_plugins import memory_cache
from agentrunner.default_plugins.memory_cache import MemoryCache
from agentrunner.testing.cache_contract import CacheContract


class TestMemoryCache(CacheContract):
    @pytest.fixture
    async def cache(self):
        cache = MemoryCache(SimpleNamespace())
        await cache.start()
        yield cache
        await cache.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_plugin_registers_the_memory_cache():
    registered = []
    memory_cache.register_caches(registered.append)
    assert registered == [MemoryCache] and MemoryCache.name == "memory"


def test_max_entries_comes_from_the_settings():
    assert MemoryCache(SimpleNamespace()).max_entries == 10_000
    assert MemoryCache(SimpleNamespace(cache_max_entries=5)).max_entries == 5
    with pytest.raises(ValueError, match="CACHE_MAX_ENTRIES"):
        MemoryCache(SimpleNamespace(cache_max_entries=0))


async def test_the_least_recently_used_key_is_evicted():
    cache = MemoryCache(SimpleNamespace(cache_max_entries=3))
    for key in "abc":
        await cache.set(key, key)
    assert await cache.get("a") == "a"  # a is now the most recently used
    await cache.set("d", "d")
    assert await cache.get("b") is None
    assert [await cache.get(key) for key in "acd"] == ["a", "c", "d"]
    await cache.set("c", "c2")  # overwriting refreshes too
    await cache.set("e", "e")
    assert await cache.get("a") is None and await cache.get("c") == "c2"


async def test_memory_stays_flat_under_many_keys():
    cache = MemoryCache(SimpleNamespace(cache_max_entries=100))
    for i in range(10_000):
        await cache.set(f"key-{i}", {"i": i}, ttl=3600 if i % 2 else None)
        assert len(cache) <= 100
    assert await cache.get("key-9999") == {"i": 9999}


async def test_expiry_follows_the_clock():
    clock = FakeClock()
    cache = MemoryCache(SimpleNamespace(), clock=clock)
    await cache.set("k", "v", ttl=10)
    clock.now += 9.999
    assert await cache.get("k") == "v"
    clock.now += 0.001
    assert await cache.get("k") is None
    assert len(cache) == 0  # dropped when read


async def test_expired_keys_nobody_reads_are_swept_on_write():
    clock = FakeClock()
    cache = MemoryCache(SimpleNamespace(), clock=clock)
    for i in range(50):
        await cache.set(f"short-{i}", i, ttl=1)
    await cache.set("forever", 1)
    clock.now += cache.sweep_interval + 1
    await cache.set("trigger", 1)
    assert len(cache) == 2
    assert cache.sweep() == 0


async def test_the_background_sweep_drops_expired_keys():
    clock = FakeClock()
    cache = MemoryCache(SimpleNamespace(), clock=clock)
    cache.sweep_interval = 0.01
    await cache.start()
    try:
        await cache.set("short", 1, ttl=1)
        clock.now += 2
        for _ in range(100):
            if not len(cache):
                break
            await asyncio.sleep(0.01)
        assert len(cache) == 0
    finally:
        await cache.stop()


async def test_a_non_positive_ttl_deletes_the_key():
    cache = MemoryCache(SimpleNamespace())
    await cache.set("k", "v")
    await cache.set("k", "new", ttl=0)
    assert await cache.get("k") is None


async def test_a_value_that_is_not_json_is_refused():
    cache = MemoryCache(SimpleNamespace())
    with pytest.raises(TypeError):
        await cache.set("k", {"when": object()})
    assert await cache.get("k") is None


async def test_stop_empties_the_cache():
    cache = MemoryCache(SimpleNamespace())
    await cache.start()
    await cache.set("k", "v")
    await cache.stop()
    assert await cache.get("k") is None


def test_cache_ttls_default_to_the_reference():
    assert cache_ttls(SimpleNamespace()) == CacheTTLs(state=1800, config=3600, result=300, health=60, default=3600)
    assert cache_ttls() == cache_ttls(SimpleNamespace())


def test_cache_ttls_follow_the_settings():
    settings = SimpleNamespace(redis_state_ttl=60, redis_config_ttl=120, redis_result_ttl=30, redis_default_ttl=90)
    assert cache_ttls(settings) == CacheTTLs(state=60, config=120, result=30, health=60, default=90)
    assert cache_ttls(SimpleNamespace(state_cache_ttl=900)).state == 900
    assert cache_ttls(SimpleNamespace(redis_state_ttl=None, state_cache_ttl=900)).state == 900
    assert cache_ttls(SimpleNamespace(redis_state_ttl=100, state_cache_ttl=900)).state == 100
    with pytest.raises(ValueError, match="REDIS_RESULT_TTL"):
        cache_ttls(SimpleNamespace(redis_result_ttl=0))
