"""agentrunner-redis: the ``redis`` cache backend (redis-py's ``redis.asyncio``).

Registered through the ``agentrunner`` entry point ``redis = agentrunner_redis``; chosen by
``CACHE_BACKEND=redis``, or by ``REDIS_HOST`` when ``CACHE_BACKEND`` is unset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import agentrunner
from agentrunner_redis.cache import COMPRESSED, CacheUnavailable, RedisCache

__all__ = ["COMPRESSED", "CacheUnavailable", "RedisCache", "register_caches"]


@agentrunner.hookimpl
def register_caches(register: Callable[[Any], None]) -> None:
    register(RedisCache)
