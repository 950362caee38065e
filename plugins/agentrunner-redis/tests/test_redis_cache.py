"""What the Redis cache stores where: key prefix, database, TTLs, compression, and how the settings reach the client."""

from __future__ import annotations

import json
import logging
import zlib

import agentrunner_redis
import pytest
import redis.asyncio
from agentrunner_redis import COMPRESSED, RedisCache
from redis.asyncio.connection import Connection, SSLConnection
from redis_private_server import make_certificate, private_redis

from agentrunner.plugins import Registry, make_plugin_manager
from agentrunner.runtime import Platform

#: Compresses well, and its JSON is far above the thresholds the tests use.
LARGE = {"conversation_history": [{"user": f"question {i}", "assistant": "an answer " * 20} for i in range(50)]}


@pytest.fixture
async def started(make_settings):
    """Start a cache with the given variables; every cache started this way is stopped after the test."""
    caches = []

    async def start(**variables: str) -> RedisCache:
        cache = RedisCache(make_settings(**variables))
        await cache.start()
        caches.append(cache)
        return cache

    yield start
    for cache in caches:
        await cache.stop()


def compact(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


# --- Registration and selection ------------------------------------------------------------


def test_the_plugin_registers_the_redis_cache():
    pm = make_plugin_manager(load_entry_points=False, extra_plugins=[(agentrunner_redis, "redis")])
    assert Registry.from_plugin_manager(pm).caches["redis"] is RedisCache
    assert RedisCache.name == "redis"


@pytest.mark.parametrize("variables", [{"REDIS_HOST": "cache.invalid"}, {"CACHE_BACKEND": "redis"}])
def test_redis_host_or_cache_backend_selects_it_and_building_opens_nothing(tmp_path, variables):
    from agentrunner.settings import load_settings

    settings = load_settings(environ={"SQLITE_PATH": str(tmp_path / "db"), "CONFIG_AGENTS_DIR": str(tmp_path),
                                      **variables}, env_file=None)
    pm = make_plugin_manager(load_entry_points=False, extra_plugins=[(agentrunner_redis, "redis")])
    cache = Platform(settings, pm=pm).cache  # an unresolvable host is fine until start()
    assert isinstance(cache, RedisCache)
    assert cache.host == variables.get("REDIS_HOST", "localhost")


# --- Where values go ---------------------------------------------------------------------------


async def test_every_key_starts_with_the_prefix(started, raw, key_prefix):
    cache = await started()
    await cache.set("state:bot", {"x": 1})
    assert await raw.get(f"{key_prefix}state:bot") == b'{"x":1}'
    assert await raw.exists("state:bot") == 0
    assert [key async for key in raw.scan_iter(match=f"{key_prefix}*")] == [f"{key_prefix}state:bot".encode()]
    await cache.delete("state:bot")
    assert await raw.exists(f"{key_prefix}state:bot") == 0


async def test_two_prefixes_do_not_see_each_other(started, key_prefix):
    one = await started()
    other = await started(REDIS_KEY_PREFIX=key_prefix + "other:")
    await one.set("k", "one")
    assert await other.get("k") is None
    await other.set("k", "other")
    assert (await one.get("k"), await other.get("k")) == ("one", "other")


async def test_the_database_number_is_respected(started, raw, redis_server, key_prefix, other_db):
    cache = await started(REDIS_DB=str(other_db))
    await cache.set("k", "in the other database")
    host, port = redis_server
    async with redis.asyncio.Redis(host=host, port=port, db=other_db) as client:
        assert await client.get(f"{key_prefix}k") == b'"in the other database"'
    assert await raw.exists(f"{key_prefix}k") == 0


# --- TTLs ------------------------------------------------------------------------------------------


async def test_the_ttl_is_set_on_the_key(started, raw, key_prefix):
    cache = await started()
    await cache.set("state:bot", {"v": 1}, ttl=1800)
    assert 1799 <= await raw.ttl(f"{key_prefix}state:bot") <= 1800
    await cache.set("short", 1, ttl=1.5)
    assert 1000 < await raw.pttl(f"{key_prefix}short") <= 1500


async def test_no_ttl_means_redis_default_ttl(started, raw, key_prefix):
    cache = await started(REDIS_DEFAULT_TTL="777")
    await cache.set("k", "v")
    assert 776 <= await raw.ttl(f"{key_prefix}k") <= 777
    await cache.set("k", "v", ttl=60)
    await cache.set("k", "v2")  # no ttl again: back to the default, not the previous 60 s
    assert 776 <= await raw.ttl(f"{key_prefix}k") <= 777


async def test_a_non_positive_ttl_deletes_the_key(started, raw, key_prefix):
    cache = await started()
    await cache.set("k", "v")
    await cache.set("k", "new", ttl=0)
    assert await raw.exists(f"{key_prefix}k") == 0
    assert await cache.get("k") is None


async def test_a_value_that_is_not_json_is_refused_before_redis_is_asked(started, raw, key_prefix):
    cache = await started()
    await cache.set("k", "old")
    with pytest.raises(TypeError):
        await cache.set("k", {"when": object()})
    assert await cache.get("k") == "old"


# --- Compression -------------------------------------------------------------------------------------


async def test_a_large_value_is_stored_compressed_and_reads_back_equal(started, raw, key_prefix):
    cache = await started(STATE_COMPRESSION_THRESHOLD="1024")
    await cache.set("large", LARGE)
    stored = await raw.get(f"{key_prefix}large")
    assert stored[:1] == COMPRESSED
    assert zlib.decompress(stored[1:]) == compact(LARGE)
    assert len(stored) < len(compact(LARGE)) / 5
    assert await cache.get("large") == LARGE


async def test_a_small_value_is_stored_plain(started, raw, key_prefix):
    cache = await started(STATE_COMPRESSION_THRESHOLD="1024")
    small = {"conversation_history": [{"user": "hi", "assistant": "hello"}]}
    await cache.set("small", small)
    assert await raw.get(f"{key_prefix}small") == compact(small)


async def test_the_threshold_counts_bytes_of_json(started, raw, key_prefix):
    cache = await started(STATE_COMPRESSION_THRESHOLD="100")
    at_threshold = "é" * 49  # 98 bytes of UTF-8 + 2 quotes = 100 bytes: not larger, so plain
    above = "é" * 50
    await cache.set("at", at_threshold)
    await cache.set("above", above)
    assert await raw.get(f"{key_prefix}at") == compact(at_threshold)
    assert (await raw.get(f"{key_prefix}above"))[:1] == COMPRESSED
    assert (await cache.get("at"), await cache.get("above")) == (at_threshold, above)


async def test_compression_can_be_turned_off_and_both_forms_stay_readable(started, raw, key_prefix):
    compressing = await started()
    plain = await started(STATE_COMPRESSION_ENABLED="false")
    await plain.set("plain", LARGE)
    assert await raw.get(f"{key_prefix}plain") == compact(LARGE)
    await compressing.set("packed", LARGE)
    assert await plain.get("packed") == LARGE
    assert await compressing.get("plain") == LARGE


async def test_a_value_another_program_wrote_under_the_prefix_is_an_error_naming_the_key(started, raw, key_prefix):
    cache = await started()
    await raw.set(f"{key_prefix}foreign", b"\x00not zlib")
    with pytest.raises(ValueError, match=r"foreign.*REDIS_KEY_PREFIX"):
        await cache.get("foreign")


# --- Settings that reach the client ---------------------------------------------------------------


def test_the_connection_settings_reach_the_pool(make_settings):
    pool = RedisCache(make_settings(
        REDIS_HOST="cache.example.com", REDIS_PORT="6380", REDIS_DB="3", REDIS_PASSWORD="s3cret-pw",
        REDIS_MAX_CONNECTIONS="7", REDIS_SOCKET_TIMEOUT="2.5", REDIS_SOCKET_CONNECT_TIMEOUT="1.5",
        CACHE_OPERATION_TIMEOUT="3")).make_connection_pool()
    kwargs = pool.connection_kwargs
    assert pool.connection_class is Connection
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("cache.example.com", 6380, 3,
                                                                                  "s3cret-pw")
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.5, 1.5)
    assert (pool.max_connections, pool.timeout) == (7, 3.0)


def test_redis_pool_size_is_used_when_redis_max_connections_is_unset(make_settings):
    assert RedisCache(make_settings(REDIS_POOL_SIZE="9")).make_connection_pool().max_connections == 9
    both = make_settings(REDIS_POOL_SIZE="9", REDIS_MAX_CONNECTIONS="11")
    assert RedisCache(both).make_connection_pool().max_connections == 11


def test_no_password_sends_none(make_settings):
    assert RedisCache(make_settings()).make_connection_pool().connection_kwargs["password"] is None


def test_redis_ssl_makes_verified_tls_connections(make_settings):
    import ssl

    pool = RedisCache(make_settings(REDIS_SSL="true")).make_connection_pool()
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == ("required", True)
    assert kwargs["ssl_min_version"] is ssl.TLSVersion.TLSv1_2
    context = pool.make_connection().ssl_context.get()
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


async def test_redis_ssl_against_a_plain_server_fails_naming_redis_ssl(make_settings):
    cache = RedisCache(make_settings(REDIS_SSL="true", REDIS_SOCKET_CONNECT_TIMEOUT="0.3",
                                     REDIS_SOCKET_TIMEOUT="0.3", CACHE_OPERATION_TIMEOUT="0.5"))
    with pytest.raises(agentrunner_redis.CacheUnavailable, match="REDIS_SSL"):
        await cache.start()


async def test_redis_ssl_talks_tls_to_a_tls_server_it_trusts(tmp_path, monkeypatch):
    cert, key = make_certificate(tmp_path)
    async with private_redis(tls=(cert, key)) as port:
        from agentrunner.settings import load_settings

        settings = load_settings(environ={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_SSL": "true"},
                                 env_file=None)
        untrusted = RedisCache(settings)
        with pytest.raises(agentrunner_redis.CacheUnavailable) as caught:
            await untrusted.start()
        assert str(caught.value) == (
            f"cannot connect to Redis at 127.0.0.1:{port}: its TLS certificate is not trusted: self-signed certificate "
            "(REDIS_SSL, REDIS_HOST: the certificate must name the host; trust a private CA with SSL_CERT_FILE)")

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # how the README says to trust a private CA
        cache = RedisCache(settings)
        await cache.start()
        try:
            await cache.set("k", {"over": "tls"})
            assert await cache.get("k") == {"over": "tls"}
        finally:
            await cache.stop()

        plain = RedisCache(load_settings(environ={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port),
                                                  "REDIS_SOCKET_TIMEOUT": "0.5"}, env_file=None))
        with pytest.raises(agentrunner_redis.CacheUnavailable, match="REDIS_SSL"):
            await plain.start()


async def test_the_password_reaches_the_server():
    async with private_redis(password="right-pw") as port:
        from agentrunner.settings import load_settings

        settings = load_settings(environ={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port),
                                          "REDIS_PASSWORD": "right-pw"}, env_file=None)
        cache = RedisCache(settings)
        await cache.start()
        try:
            await cache.set("k", {"authenticated": True})
            assert await cache.get("k") == {"authenticated": True}
            await cache.health()
        finally:
            await cache.stop()


# --- Server settings --------------------------------------------------------------------------------


def test_the_server_settings_are_applied_only_when_given(make_settings):
    untouched = RedisCache(make_settings())
    assert (untouched.maxmemory, untouched.maxmemory_policy) == (None, None)
    limited = RedisCache(make_settings(REDIS_MAXMEMORY="2gb"))
    assert (limited.maxmemory, limited.maxmemory_policy) == (2 * 1024**3, "allkeys-lru")
    policy_only = RedisCache(make_settings(REDIS_MAXMEMORY_POLICY="volatile-ttl"))
    assert (policy_only.maxmemory, policy_only.maxmemory_policy) == (None, "volatile-ttl")


async def test_maxmemory_and_its_policy_are_set_on_the_server(caplog):
    caplog.set_level(logging.INFO, logger="agentrunner.redis")
    async with private_redis() as port:
        from agentrunner.settings import load_settings

        cache = RedisCache(load_settings(environ={
            "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_MAXMEMORY": "64mb",
            "REDIS_MAXMEMORY_POLICY": "volatile-lru"}, env_file=None))
        await cache.start()
        await cache.stop()
        async with redis.asyncio.Redis(port=port, decode_responses=True) as client:
            assert await client.config_get("maxmemory") == {"maxmemory": str(64 * 1024**2)}
            assert await client.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-lru"}
    assert "set maxmemory 67108864 (REDIS_MAXMEMORY)" in caplog.text


async def test_a_server_that_refuses_config_gets_a_warning_not_a_failed_start(caplog):
    async with private_redis("--rename-command", "CONFIG", "") as port:
        from agentrunner.settings import load_settings

        cache = RedisCache(load_settings(environ={
            "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_MAXMEMORY": "64mb"}, env_file=None))
        await cache.start()
        try:
            await cache.set("k", "still works")
            assert await cache.get("k") == "still works"
        finally:
            await cache.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("REDIS_MAXMEMORY=67108864" in w and "`maxmemory 67108864` in redis.conf" in w for w in warnings)
    assert any("REDIS_MAXMEMORY_POLICY=allkeys-lru" in w and "redis.conf" in w for w in warnings)
