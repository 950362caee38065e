"""Fixtures: the real PostgreSQL server, and databases of this run's own, created and dropped here.

The server is ``AGENTRUNNER_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
a role allowed to create databases). When it cannot be reached the tests skip — or fail, with
``CI=true``, so that a CI run never passes without having tested anything.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from agentrunner_postgres import PostgresStateStore
from agentrunner_postgres.connection import describe_target
from postgres_support import SERVER_URL, create_database, database_url, drop_database, store_settings


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a reachable PostgreSQL server (its maintenance database)."""
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(SERVER_URL, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        message = (f"PostgreSQL is not reachable at {describe_target(SERVER_URL)} "
                   f"(AGENTRUNNER_TEST_POSTGRES_URL): {type(exc).__name__}: {exc}")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return SERVER_URL


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[str]:
    """The URL of a database of this test session's own, migrated by the first store that starts on it."""
    name = asyncio.run(create_database(postgres_server))
    try:
        yield database_url(postgres_server, name)
    finally:
        asyncio.run(drop_database(postgres_server, name))


@pytest.fixture
async def empty_database(postgres_server: str) -> AsyncIterator[str]:
    """The URL of a new, empty database for one test (migrations, maintenance)."""
    name = await create_database(postgres_server)
    try:
        yield database_url(postgres_server, name)
    finally:
        await drop_database(postgres_server, name)


@pytest.fixture
async def store(postgres_database: str) -> AsyncIterator[PostgresStateStore]:
    """A started store on the session's database."""
    store = PostgresStateStore(store_settings(postgres_database))
    await store.start()
    try:
        yield store
    finally:
        await store.stop()
