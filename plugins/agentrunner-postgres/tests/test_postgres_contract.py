"""The state-store contract against the real server, twice: configured by DATABASE_URL, and by the
POSTGRES_* parts with the prepared-statement cache off (as behind pgbouncer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import agentrunner_postgres
import pytest
from agentrunner_postgres import PostgresStateStore
from postgres_support import parts_settings

from agentrunner.testing.store_contract import StateStoreContract, make_execution


class TestPostgresStateStore(StateStoreContract):
    """The whole contract; the ``store`` fixture (conftest) is configured by DATABASE_URL."""


class TestPostgresStateStoreWithoutQueryCache(StateStoreContract):
    """The contract again, from POSTGRES_HOST & co., with POSTGRES_ENABLE_QUERY_CACHE=false."""

    @pytest.fixture
    async def store(self, postgres_server, postgres_database):
        database = urlsplit(postgres_database).path.lstrip("/")
        store = PostgresStateStore(parts_settings(postgres_server, database,
                                                  {"POSTGRES_ENABLE_QUERY_CACHE": "false"}))
        await store.start()
        yield store
        await store.stop()


def test_the_plugin_registers_the_postgres_store():
    registered = []
    agentrunner_postgres.register_state_stores(registered.append)
    assert registered == [PostgresStateStore] and PostgresStateStore.name == "postgres"


async def test_an_invalid_cursor_is_a_value_error(store):
    for cursor in ("not-a-cursor", "W10", "WyJ4IiwgMV0"):
        with pytest.raises(ValueError, match="invalid cursor"):
            await store.list_executions(cursor=cursor)


async def test_naive_timestamps_are_taken_as_utc(store):
    naive = datetime(2024, 6, 1, 12, 0, 0, 250000)
    execution = make_execution("naive", created_at=naive, started_at=naive)
    await store.create_execution(execution)
    got = await store.get_execution(execution.execution_id)
    assert got.created_at == naive.replace(tzinfo=UTC) and got.started_at.utcoffset() == timedelta(0)
