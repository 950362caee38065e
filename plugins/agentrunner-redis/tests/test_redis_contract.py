"""The cache contract every backend meets, run against the real Redis under a key prefix of its own."""

from __future__ import annotations

import pytest
from agentrunner_redis import RedisCache

from agentrunner.testing.cache_contract import CacheContract


class TestRedisCache(CacheContract):
    @pytest.fixture
    async def cache(self, make_settings):
        cache = RedisCache(make_settings())
        await cache.start()
        yield cache
        await cache.stop()
