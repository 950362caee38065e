"""sql/ holds the reference's tables as numbered migrations that PostgreSQL accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncpg
import pytest

SQL = Path(__file__).resolve().parents[1] / "sql"
MIGRATIONS = sorted(SQL.glob("*.sql"))

REFERENCE_COLUMNS = {
    "agent_state": {"agent_name", "state_data", "conversation_history", "metadata", "created_at", "updated_at",
                    "last_activity"},
    "execution_history": {"execution_id", "agent_name", "task_type", "status", "started_at", "completed_at",
                          "duration_seconds", "result", "error_message", "trace_id"},
    "schedules": {"schedule_name", "agent_name", "schedule_type", "schedule_config", "task_data", "enabled",
                  "created_at", "updated_at", "last_execution"},
}
REFERENCE_INDEXES = {"idx_agent_state_updated", "idx_agent_state_last_activity", "idx_execution_agent",
                     "idx_execution_status", "idx_execution_started", "idx_schedules_agent", "idx_schedules_enabled"}
#: What the HTTP contract returns beyond the reference's columns.
CONTRACT_COLUMNS = {"input", "data", "usage", "idempotency_key", "parent_execution_id"}


def test_migrations_are_numbered_without_gaps():
    numbers = [int(re.match(r"^(\d{3})_[a-z0-9_]+\.sql$", path.name).group(1)) for path in MIGRATIONS]
    assert numbers == list(range(len(MIGRATIONS)))


async def _apply_all(conn) -> None:
    for path in MIGRATIONS:
        async with conn.transaction():
            await conn.execute(path.read_text())


async def test_the_migrations_create_the_reference_tables_and_indexes(pg_schema):
    conn, schema = pg_schema
    await _apply_all(conn)
    rows = await conn.fetch("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = $1",
                            schema)
    columns: dict[str, set[str]] = {}
    for row in rows:
        columns.setdefault(row["table_name"], set()).add(row["column_name"])
    for table, expected in REFERENCE_COLUMNS.items():
        assert expected <= columns[table], f"{table} lacks {expected - columns[table]}"
    assert CONTRACT_COLUMNS <= columns["execution_history"]
    assert {"version", "name", "applied_at"} <= columns["schema_migrations"]
    indexes = {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1",
                                                         schema)}
    assert REFERENCE_INDEXES <= indexes


async def test_one_idempotency_key_per_agent_is_enforced_by_the_database(pg_schema):
    conn, _ = pg_schema
    await _apply_all(conn)
    insert = ("INSERT INTO execution_history (execution_id, agent_name, status, input, idempotency_key) "
              "VALUES ($1, $2, 'queued', $3, $4)")
    await conn.execute(insert, "e1", "support", json.dumps("hi"), "key-1")
    await conn.execute(insert, "e2", "billing", json.dumps("hi"), "key-1")  # another agent: allowed
    await conn.execute(insert, "e3", "support", json.dumps("hi"), None)  # no key: never conflicts
    await conn.execute(insert, "e4", "support", json.dumps("hi"), None)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert, "e5", "support", json.dumps("hi"), "key-1")
