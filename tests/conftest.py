"""Shared fixtures: real services for the tests that need them, isolated per test."""

from __future__ import annotations

import os
import uuid

import pytest

from agentrunner.testing.pytest_plugin import service_missing

POSTGRES_DSN = os.environ.get("AGENTRUNNER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")




@pytest.fixture
async def pg_schema():
    """A connection to the real PostgreSQL inside a fresh schema of its own, dropped afterwards."""
    import asyncpg

    try:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        service_missing(f"PostgreSQL at {POSTGRES_DSN} is not reachable: {exc!r}")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.execute(f'SET search_path TO "{schema}"')
    try:
        yield conn, schema
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
