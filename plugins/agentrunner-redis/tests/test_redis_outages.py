"""Failures: clear start-up errors, bounded calls, fast failure while Redis is down, recovery, no password leaks."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback

import pytest
from agentrunner_redis import CacheUnavailable, RedisCache
from redis_fault_proxy import FaultProxy
from redis_private_server import free_port, private_redis

from agentrunner.settings import load_settings

PASSWORD = "pw-canary-7f3a9c1e"


def assert_no_password(error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    """Neither the error, its whole traceback (causes included), nor any log line shows the password."""
    assert PASSWORD not in "".join(traceback.format_exception(error))
    assert PASSWORD not in caplog.text


@pytest.fixture
async def proxy(redis_server):
    proxy = FaultProxy(*redis_server)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def proxied(proxy, make_settings):
    """A started cache that reaches Redis through ``proxy``, with short timeouts and a password the server ignores."""
    cache = RedisCache(make_settings(REDIS_HOST="127.0.0.1", REDIS_PORT=str(proxy.port), REDIS_PASSWORD=PASSWORD,
                                     CACHE_OPERATION_TIMEOUT="0.5", REDIS_SOCKET_TIMEOUT="2",
                                     REDIS_SOCKET_CONNECT_TIMEOUT="0.5"))
    cache.retry_interval = 0.2
    await cache.start()
    yield cache
    await cache.stop()


async def timed(call) -> tuple[BaseException, float]:
    began = time.monotonic()
    with pytest.raises(CacheUnavailable) as caught:
        await call
    return caught.value, time.monotonic() - began


# --- Start-up errors name what to check -------------------------------------------------------------


async def test_nothing_listening_names_host_and_port(make_settings, caplog):
    port = free_port()
    cache = RedisCache(make_settings(REDIS_HOST="127.0.0.1", REDIS_PORT=str(port), REDIS_PASSWORD=PASSWORD))
    error, elapsed = await timed(cache.start())
    assert str(error) == f"cannot connect to Redis at 127.0.0.1:{port} (REDIS_HOST, REDIS_PORT): connection refused"
    assert elapsed < 2
    assert_no_password(error, caplog)


async def test_an_unknown_host_names_redis_host(make_settings):
    cache = RedisCache(make_settings(REDIS_HOST="no-such-host.invalid"))
    error, _ = await timed(cache.start())
    assert str(error) == "cannot connect to Redis at no-such-host.invalid:6379 (REDIS_HOST): unknown host"


async def test_a_server_that_never_answers_names_the_timeouts(proxy, make_settings):
    proxy.blackhole = True
    cache = RedisCache(make_settings(REDIS_HOST="127.0.0.1", REDIS_PORT=str(proxy.port),
                                     REDIS_SOCKET_CONNECT_TIMEOUT="0.2", REDIS_SOCKET_TIMEOUT="0.2",
                                     CACHE_OPERATION_TIMEOUT="0.2"))
    error, elapsed = await timed(cache.start())
    assert "timed out (REDIS_SOCKET_CONNECT_TIMEOUT=0.2s, REDIS_SOCKET_TIMEOUT=0.2s" in str(error)
    assert "(REDIS_HOST, REDIS_PORT)" in str(error)
    assert elapsed < 1.5


async def test_a_wrong_or_missing_password_names_redis_password(caplog):
    async with private_redis(password=PASSWORD + "-server") as port:
        for environ, expected in (
            ({"REDIS_PASSWORD": PASSWORD}, "the server refused the password (REDIS_PASSWORD)"),
            ({}, "the server requires a password (set REDIS_PASSWORD)"),
        ):
            cache = RedisCache(load_settings(environ={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), **environ},
                                             env_file=None))
            error, _ = await timed(cache.start())
            assert str(error) == f"cannot connect to Redis at 127.0.0.1:{port}: {expected}"
            assert_no_password(error, caplog)


async def test_a_database_the_server_does_not_have_names_redis_db():
    async with private_redis("--databases", "2") as port:
        cache = RedisCache(load_settings(environ={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port),
                                                  "REDIS_DB": "5"}, env_file=None))
        error, _ = await timed(cache.start())
        assert str(error).startswith(f"cannot connect to Redis at 127.0.0.1:{port}: the server has no database 5 "
                                     "(REDIS_DB)")


async def test_a_full_redis_refuses_writes_with_a_hint_and_reads_go_on():
    async with private_redis() as port:
        cache = RedisCache(load_settings(environ={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port),
                                                  "REDIS_MAXMEMORY": "2mb", "REDIS_MAXMEMORY_POLICY": "noeviction",
                                                  "STATE_COMPRESSION_ENABLED": "false"}, env_file=None))
        await cache.start()
        try:
            with pytest.raises(CacheUnavailable) as caught:
                for i in range(10):
                    await cache.set(f"filler-{i}", "x" * 500_000)
            message = str(caught.value)
            assert message.startswith(f"Redis at 127.0.0.1:{port} refused SET: command not allowed when used memory")
            assert message.endswith("(REDIS_MAXMEMORY is reached and REDIS_MAXMEMORY_POLICY evicts nothing)")
            assert await cache.get("filler-0") == "x" * 500_000  # a refusal is not an outage: reads go on
        finally:
            await cache.stop()


async def test_calls_before_start_or_after_stop_raise(make_settings):
    cache = RedisCache(make_settings())
    with pytest.raises(CacheUnavailable, match="not started"):
        await cache.get("k")
    await cache.start()
    await cache.stop()
    with pytest.raises(CacheUnavailable, match="not started"):
        await cache.health()


# --- Outages while running ------------------------------------------------------------------------------


async def test_an_outage_raises_quickly_then_the_cache_recovers_by_itself(proxy, proxied, caplog):
    await proxied.set("k", {"before": True})
    await proxy.cut()

    error, elapsed = await timed(proxied.get("k"))
    assert str(error).startswith(f"cannot reach Redis at 127.0.0.1:{proxy.port} (REDIS_HOST, REDIS_PORT)")
    assert elapsed < 1
    with pytest.raises(CacheUnavailable):
        await proxied.health()

    await proxy.restore()
    await proxied.health()  # health probes even while calls fail fast, and its success ends the outage
    assert await proxied.get("k") == {"before": True}
    await proxied.set("k", {"after": True})
    assert await proxied.get("k") == {"after": True}

    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "agentrunner.redis"]
    assert [level for level, _ in messages if level >= logging.WARNING] == [logging.WARNING]  # once per outage
    assert any("answers again" in message for _, message in messages)
    assert_no_password(error, caplog)


async def test_while_down_calls_fail_at_once_without_connecting(proxy, proxied):
    await proxy.cut()
    with pytest.raises(CacheUnavailable):
        await proxied.get("k")
    await proxy.restore()  # listening again, but within retry_interval nobody tries
    accepted = proxy.accepted
    for _ in range(20):
        error, elapsed = await timed(proxied.get("k"))
        assert elapsed < 0.2
    assert "was unreachable moments ago" in str(error)
    assert proxy.accepted == accepted
    await asyncio.sleep(proxied.retry_interval)
    assert await proxied.get("k") is None


async def test_a_server_that_stops_answering_is_bounded_by_cache_operation_timeout(proxy, proxied):
    await proxied.set("k", 1)
    proxy.blackhole = True
    error, elapsed = await timed(proxied.get("k"))
    assert "no answer to GET within 0.5s (CACHE_OPERATION_TIMEOUT)" in str(error)
    assert 0.4 < elapsed < 2
    proxy.blackhole = False
    await asyncio.sleep(proxied.retry_interval)
    assert await proxied.get("k") == 1  # the connection that timed out was dropped; a new one is used


async def test_redis_socket_timeout_bounds_a_read_too(proxy, make_settings):
    cache = RedisCache(make_settings(REDIS_HOST="127.0.0.1", REDIS_PORT=str(proxy.port),
                                     REDIS_SOCKET_TIMEOUT="0.1", CACHE_OPERATION_TIMEOUT="5"))
    await cache.start()
    try:
        proxy.blackhole = True
        error, elapsed = await timed(cache.get("k"))
        assert "(REDIS_SOCKET_TIMEOUT)" in str(error)
        assert elapsed < 1
    finally:
        await cache.stop()


async def test_a_write_missed_during_an_outage_is_not_served_stale_afterwards(proxy, proxied):
    await proxied.set("state:bot", {"version": 1})
    await proxy.cut()
    with pytest.raises(CacheUnavailable):
        await proxied.set("state:bot", {"version": 2})  # the store has version 2 now; Redis still holds 1
    with pytest.raises(CacheUnavailable):
        await proxied.delete("state:other")
    await proxy.restore()
    await asyncio.sleep(proxied.retry_interval)
    assert await proxied.get("state:bot") is None  # a miss (the caller reads the store), never version 1
    await proxied.set("state:bot", {"version": 2})
    assert await proxied.get("state:bot") == {"version": 2}


async def test_stopping_during_an_outage_does_not_hang(proxy, proxied):
    await proxy.cut()
    with pytest.raises(CacheUnavailable):
        await proxied.get("k")
    async with asyncio.timeout(2):
        await proxied.stop()
