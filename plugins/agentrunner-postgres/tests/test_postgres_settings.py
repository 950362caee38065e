"""Each PostgreSQL setting reaches asyncpg or the server, and takes effect."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import pytest
from agentrunner_postgres import PostgresStateStore
from agentrunner_postgres.connection import ConnectionConfig
from postgres_support import connect, parts_settings, store_settings

from agentrunner.interfaces import StoreUnavailable
from agentrunner.records import AgentState
from agentrunner.settings import load_settings
from agentrunner.testing.store_contract import make_execution


def _database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def _on_pool(store: PostgresStateStore, sql: str):
    """One value from a pooled connection of the store (what its own statements see)."""
    return await store._run(lambda conn, _retry: conn.fetchval(sql), "a test query")


async def _started(settings) -> PostgresStateStore:
    store = PostgresStateStore(settings)
    await store.start()
    return store


async def test_pool_sizes_reach_the_pool_and_the_overflow_is_added_to_the_maximum(postgres_database):
    store = await _started(store_settings(postgres_database, {
        "POSTGRES_MIN_POOL_SIZE": "2", "POSTGRES_MAX_POOL_SIZE": "3", "POSTGRES_POOL_MAX_OVERFLOW": "2"}))
    try:
        assert (store._pool.get_min_size(), store._pool.get_max_size()) == (2, 5)
        assert store._pool.get_size() == 2  # the minimum is opened at start
    finally:
        await store.stop()


def test_the_db_aliases_count_when_the_postgres_names_are_unset():
    url = "postgresql://postgres@127.0.0.1:5432/x"
    aliases = {"DATABASE_URL": url, "DB_POOL_SIZE": "6", "DB_POOL_OVERFLOW": "1", "DB_QUERY_TIMEOUT": "2.5"}
    config = ConnectionConfig.from_settings(load_settings(environ=aliases, env_file=None))
    assert (config.max_size, config.statement_timeout_ms, config.command_timeout) == (7, 2500, 32.5)
    both = {**aliases, "POSTGRES_MIN_POOL_SIZE": "1", "POSTGRES_MAX_POOL_SIZE": "3", "POSTGRES_POOL_MAX_OVERFLOW": "0",
            "POSTGRES_STATEMENT_TIMEOUT": "100"}
    config = ConnectionConfig.from_settings(load_settings(environ=both, env_file=None))
    assert (config.max_size, config.statement_timeout_ms) == (3, 100)


async def test_the_statement_timeout_is_the_servers_and_db_query_timeout_is_its_alias(postgres_database):
    store = await _started(store_settings(postgres_database, {"POSTGRES_STATEMENT_TIMEOUT": "1500"}))
    try:
        assert await _on_pool(store, "SHOW statement_timeout") == "1500ms"
    finally:
        await store.stop()
    store = await _started(store_settings(postgres_database, {"DB_QUERY_TIMEOUT": "2"}))
    try:
        assert await _on_pool(store, "SHOW statement_timeout") == "2s"
    finally:
        await store.stop()
    store = await _started(store_settings(postgres_database, {"POSTGRES_STATEMENT_TIMEOUT": "0"}))
    try:
        assert await _on_pool(store, "SHOW statement_timeout") == "0"
        assert store.config.command_timeout is None
    finally:
        await store.stop()


async def test_a_statement_over_the_timeout_is_cancelled_as_unavailable(postgres_database):
    store = await _started(store_settings(postgres_database, {"POSTGRES_STATEMENT_TIMEOUT": "300"}))
    execution = make_execution("locked")
    await store.create_execution(execution)
    blocker = await connect(postgres_database)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM execution_history WHERE execution_id = $1 FOR UPDATE",
                              execution.execution_id)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.update_execution(execution.execution_id, status="running")
        assert time.monotonic() - began < 5
        assert "POSTGRES_STATEMENT_TIMEOUT" in str(caught.value) and "300 ms" in str(caught.value)
        await transaction.rollback()
        assert await store.update_execution(execution.execution_id, status="running") is True
    finally:
        await blocker.close()
        await store.stop()


async def test_the_pool_timeout_bounds_the_wait_for_a_free_connection(postgres_database):
    store = await _started(store_settings(postgres_database, {
        "POSTGRES_MIN_POOL_SIZE": "1", "POSTGRES_MAX_POOL_SIZE": "1", "POSTGRES_POOL_MAX_OVERFLOW": "0",
        "POSTGRES_POOL_TIMEOUT": "0.5", "POSTGRES_STATEMENT_TIMEOUT": "10000"}))
    execution = make_execution("busy")
    await store.create_execution(execution)
    blocker = await connect(postgres_database)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM execution_history WHERE execution_id = $1 FOR UPDATE",
                              execution.execution_id)
        waiting = asyncio.create_task(store.update_execution(execution.execution_id, status="running"))
        await asyncio.sleep(0.1)  # it holds the only connection, waiting for the row
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.get_execution(execution.execution_id)
        assert 0.4 < time.monotonic() - began < 3
        assert "all 1 are busy" in str(caught.value) and "POSTGRES_POOL_TIMEOUT" in str(caught.value)
        await transaction.rollback()
        assert await waiting is True
    finally:
        await blocker.close()
        await store.stop()


async def test_ssl_mode_reaches_asyncpg(postgres_server, postgres_database):
    database = _database(postgres_database)
    for mode in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
        config = ConnectionConfig.from_settings(parts_settings(postgres_server, database, {"POSTGRES_SSL_MODE": mode}))
        assert config.connect_kwargs()["ssl"] == mode
    # with DATABASE_URL, the URL's own sslmode applies (it wins over POSTGRES_SSL_MODE)
    config = ConnectionConfig.from_settings(store_settings(postgres_database, {"POSTGRES_SSL_MODE": "require"}))
    assert "ssl" not in config.connect_kwargs()

    store = await _started(parts_settings(postgres_server, database, {"POSTGRES_SSL_MODE": "disable"}))
    try:
        assert await _on_pool(store, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is False
    finally:
        await store.stop()
    store = PostgresStateStore(parts_settings(postgres_server, database, {"POSTGRES_SSL_MODE": "require"}))
    try:
        await store.start()
    except StoreUnavailable as exc:  # a server without TLS
        assert "(POSTGRES_SSL_MODE)" in str(exc), exc
    else:
        try:
            assert await _on_pool(store, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
        finally:
            await store.stop()


async def test_the_sslmode_of_database_url_is_named_when_it_fails(postgres_server, postgres_database):
    conn = await connect(postgres_database)
    try:
        tls = await conn.fetchval("SHOW ssl") == "on"
    finally:
        await conn.close()
    if tls:
        pytest.skip("the server speaks TLS: sslmode=require succeeds")
    store = PostgresStateStore(store_settings(postgres_database + "?sslmode=require"))
    with pytest.raises(StoreUnavailable) as caught:
        await store.start()
    assert "(the sslmode of DATABASE_URL)" in str(caught.value)


async def test_the_query_cache_setting_turns_prepared_statements_off(postgres_database):
    for enabled, cached in (("true", True), ("false", False)):
        store = await _started(store_settings(postgres_database, {
            "POSTGRES_ENABLE_QUERY_CACHE": enabled, "POSTGRES_MIN_POOL_SIZE": "1", "POSTGRES_MAX_POOL_SIZE": "1",
            "POSTGRES_POOL_MAX_OVERFLOW": "0"}))
        try:
            for _ in range(3):
                await store.get_state("nobody")
            prepared = await _on_pool(store, "SELECT count(*) FROM pg_prepared_statements")
            assert (prepared > 0) is cached, prepared
        finally:
            await store.stop()


async def test_echo_sql_logs_statements_but_never_their_parameters(postgres_database, caplog):
    canary = "parameter-canary-7f3e"
    store = await _started(store_settings(postgres_database, {"POSTGRES_ECHO_SQL": "true"}))
    try:
        with caplog.at_level(logging.INFO, logger="agentrunner_postgres.sql"):
            execution = make_execution(canary, input={"secret": canary})
            await store.create_execution(execution)
            await store.put_state(AgentState(agent_name=canary, state_data={"k": canary}))
            await store.get_execution(execution.execution_id)
            await asyncio.sleep(0.05)  # asyncpg hands query records to the logger on the next loop turn
    finally:
        await store.stop()
    records = [r for r in caplog.records if r.name == "agentrunner_postgres.sql"]
    assert all(r.levelno == logging.INFO for r in records)
    text = "\n".join(r.getMessage() for r in records)
    assert "INSERT INTO execution_history" in text and "INSERT INTO agent_state" in text
    assert "SELECT execution_id" in text and " ms]" in text
    assert canary not in text


async def test_without_echo_sql_nothing_is_logged(postgres_database, caplog):
    store = await _started(store_settings(postgres_database))
    try:
        with caplog.at_level(logging.DEBUG, logger="agentrunner_postgres.sql"):
            await store.get_state("nobody")
            await asyncio.sleep(0.05)
    finally:
        await store.stop()
    assert not [r for r in caplog.records if r.name == "agentrunner_postgres.sql"]


async def test_connections_say_they_are_agentrunner(store):
    assert await _on_pool(store, "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()") \
        == "agentrunner"


def test_building_the_store_opens_nothing():
    settings = store_settings("postgresql://nobody:pw@127.0.0.1:1/none")
    store = PostgresStateStore(settings)
    assert store._pool is None and store.auto_migrate is True
    assert "pw" not in repr(store.config)
