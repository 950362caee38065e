"""Fixtures: the shared Redis server, and settings with a key prefix of the test's own.

The server is ``REDIS_HOST``:``REDIS_PORT`` of the environment (default
127.0.0.1:6379). When it does not answer the tests are skipped, or fail with
``CI=true``. Each test writes under its own random ``REDIS_KEY_PREFIX`` and its
keys are deleted afterwards (in every database the tests use), so test runs can
share the server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from agentrunner.settings import Settings, load_settings

#: The other database the tests write to (to check REDIS_DB).
OTHER_DB = 5


@pytest.fixture(scope="session")
def redis_server() -> tuple[str, int]:
    """``(host, port)`` of the shared Redis server; skips, or fails with CI=true, when it does not answer."""
    import redis

    host, port = os.environ.get("REDIS_HOST") or "127.0.0.1", int(os.environ.get("REDIS_PORT") or 6379)
    client = redis.Redis(host=host, port=port, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"Redis is not reachable at {host}:{port} (REDIS_HOST, REDIS_PORT): {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    finally:
        client.close()
    return host, port


@pytest.fixture
def key_prefix(redis_server: tuple[str, int]) -> Iterator[str]:
    """A ``REDIS_KEY_PREFIX`` of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"agentrunner-test:{uuid.uuid4().hex}:"
    yield prefix
    host, port = redis_server
    for db in (0, OTHER_DB):
        with redis.Redis(host=host, port=port, db=db) as client:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.unlink(*keys)


@pytest.fixture
def other_db() -> int:
    """A database other than 0 that the tests may write to; their keys there are deleted too."""
    return OTHER_DB


@pytest.fixture
def redis_environ(redis_server: tuple[str, int], key_prefix: str) -> dict[str, str]:
    """The variables that select the Redis cache on the shared server under this test's prefix."""
    host, port = redis_server
    return {"CACHE_BACKEND": "redis", "REDIS_HOST": host, "REDIS_PORT": str(port), "REDIS_KEY_PREFIX": key_prefix}


@pytest.fixture
def make_settings(redis_environ: dict[str, str]) -> Callable[..., Settings]:
    """Settings from ``redis_environ`` plus the given variables (``make_settings(REDIS_DB="5")``)."""

    def make(**variables: str) -> Settings:
        return load_settings(environ={**redis_environ, **variables}, env_file=None)

    return make


@pytest.fixture
async def raw(redis_server: tuple[str, int]) -> AsyncIterator[object]:
    """A plain client of database 0 that returns bytes, to look at what the cache stored."""
    import redis.asyncio

    host, port = redis_server
    client = redis.asyncio.Redis(host=host, port=port)
    yield client
    await client.aclose()
