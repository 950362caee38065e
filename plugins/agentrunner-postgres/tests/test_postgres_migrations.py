"""Migrations: the repository's sql/ files, packaged, applied once each — also by several processes at once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest
from agentrunner_postgres import Migration, MigrationError, PostgresStateStore, load_migrations
from agentrunner_postgres.migrations import apply_migrations
from postgres_support import connect, store_settings

from agentrunner.interfaces import StoreUnavailable

REPO_SQL = Path(__file__).resolve().parents[3] / "sql"
TABLES = {"schema_migrations", "agent_state", "execution_history", "schedules", "dead_letters", "schedule_runs"}


def test_the_packaged_migrations_are_the_repository_sql_files():
    migrations = load_migrations()
    files = sorted(REPO_SQL.glob("*.sql"))
    assert [m.name for m in migrations] == [f.name for f in files]
    assert [m.sql for m in migrations] == [f.read_text(encoding="utf-8") for f in files]
    assert [m.version for m in migrations] == list(range(len(files)))


async def _tables(url: str) -> set[str]:
    conn = await connect(url)
    try:
        return {row["tablename"] for row in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    finally:
        await conn.close()


async def test_start_applies_every_migration_once_and_records_it(empty_database):
    store = PostgresStateStore(store_settings(empty_database))
    await store.start()
    try:
        assert await _tables(empty_database) == TABLES
        conn = await connect(empty_database)
        try:
            rows = await conn.fetch(
                "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
        finally:
            await conn.close()
        migrations = load_migrations()
        assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
            (m.version, m.name, hashlib.sha256(m.sql.encode()).hexdigest()) for m in migrations]
        assert all(r["applied_at"].tzinfo is not None for r in rows)
        # applied already: nothing to do, however often it runs
        assert await store.migrate() == []
        assert await store.migrate() == []
    finally:
        await store.stop()
    again = PostgresStateStore(store_settings(empty_database))
    await again.start()
    await again.stop()


async def test_migrate_returns_the_names_applied_and_reports_progress(empty_database):
    store = PostgresStateStore(store_settings(empty_database), migrate=False)
    lines: list[str] = []
    applied = await store.migrate(progress=lines.append)  # on a store that is not started
    assert applied == [m.name for m in load_migrations()]
    assert lines == [f"applied {name}" for name in applied]


async def test_five_stores_starting_at_once_apply_each_migration_once(empty_database):
    stores = [PostgresStateStore(store_settings(empty_database)) for _ in range(5)]
    applied = await asyncio.gather(*(store.migrate() for store in stores))
    try:
        names = [name for names in applied for name in names]
        assert sorted(names) == sorted(m.name for m in load_migrations())
        await asyncio.gather(*(store.start() for store in stores))
        conn = await connect(empty_database)
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(load_migrations())
        finally:
            await conn.close()
    finally:
        await asyncio.gather(*(store.stop() for store in stores))


async def test_five_fresh_stores_start_concurrently_on_an_empty_database(empty_database):
    stores = [PostgresStateStore(store_settings(empty_database)) for _ in range(5)]
    try:
        await asyncio.gather(*(store.start() for store in stores))
        await asyncio.gather(*(store.health() for store in stores))
        assert await _tables(empty_database) == TABLES
    finally:
        await asyncio.gather(*(store.stop() for store in stores))


async def test_without_auto_migrate_start_refuses_an_unmigrated_database(empty_database):
    store = PostgresStateStore(store_settings(empty_database), migrate=False)
    assert store.auto_migrate is False
    with pytest.raises(StoreUnavailable) as caught:
        await store.start()
    assert "000_schema_migrations.sql" in str(caught.value) and "agentrunner db migrate" in str(caught.value)
    assert await _tables(empty_database) == set()
    await store.migrate()
    await store.start()
    try:
        await store.health()
    finally:
        await store.stop()


async def test_a_failing_migration_is_rolled_back_and_named(empty_database):
    conn = await connect(empty_database)
    try:
        tracking = load_migrations()[0]
        good = Migration(1, "001_good.sql", "CREATE TABLE good (id INTEGER PRIMARY KEY);")
        bad = Migration(2, "002_bad.sql", "CREATE TABLE half_done (id INTEGER); SELECT no_such_column FROM good;")
        with pytest.raises(MigrationError) as caught:
            await apply_migrations(conn, [tracking, good, bad])
        assert "002_bad.sql" in str(caught.value) and "no_such_column" in str(caught.value)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")] == [
            tracking.name, good.name]
        fixed = Migration(2, "002_bad.sql", "CREATE TABLE half_done (id INTEGER);")
        assert await apply_migrations(conn, [tracking, good, fixed]) == ["002_bad.sql"]
        # the lock is released after a failure as after a success
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        await conn.close()


async def test_a_migration_changed_after_it_was_applied_is_reported_not_reapplied(empty_database, caplog):
    conn = await connect(empty_database)
    try:
        tracking = load_migrations()[0]
        first = Migration(1, "001_table.sql", "CREATE TABLE t (id INTEGER);")
        await apply_migrations(conn, [tracking, first])
        edited = Migration(1, "001_table.sql", "CREATE TABLE t (id BIGINT);")
        with caplog.at_level(logging.WARNING, logger="agentrunner_postgres.migrations"):
            assert await apply_migrations(conn, [tracking, edited]) == []
        assert "001_table.sql changed after it was applied" in caplog.text
    finally:
        await conn.close()
