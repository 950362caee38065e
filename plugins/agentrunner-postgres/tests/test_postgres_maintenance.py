"""Maintenance (the reference's "Database Maintenance"): old finished executions and idle agent state
go, unfinished executions stay whatever their age, and the tables are vacuumed and analyzed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from agentrunner_postgres import PostgresStateStore
from postgres_support import connect, store_settings

from agentrunner.records import AgentState, utcnow
from agentrunner.testing.store_contract import make_execution

VACUUMED = ["agent_state", "execution_history", "schedules"]


@pytest.fixture
async def fresh_store(empty_database):
    store = PostgresStateStore(store_settings(empty_database))
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


async def test_old_finished_executions_and_idle_states_are_deleted(fresh_store):
    store, now = fresh_store, utcnow()
    old, recent = now - timedelta(days=100), now - timedelta(days=10)
    deleted = [
        make_execution("a", status="completed", created_at=old, started_at=old, completed_at=old),
        make_execution("a", status="failed", created_at=old, started_at=old + timedelta(days=1)),
        make_execution("a", status="timed_out", created_at=old, started_at=old),
        # never started: its age is its creation
        make_execution("a", status="cancelled", created_at=old),
    ]
    kept = [
        make_execution("a", status="completed", created_at=recent, started_at=recent, completed_at=recent),
        # created long ago but started recently: the start counts
        make_execution("a", status="completed", created_at=old, started_at=recent, completed_at=recent),
        # not finished: never deleted, however old
        make_execution("a", status="running", created_at=old, started_at=old),
        make_execution("a", status="queued", created_at=old),
        make_execution("a", status="awaiting_input", created_at=old, started_at=old),
    ]
    for execution in deleted + kept:
        await store.create_execution(execution)
    await store.put_state(AgentState(agent_name="idle", last_activity=now - timedelta(days=40)))
    await store.put_state(AgentState(agent_name="active", last_activity=now - timedelta(days=10)))
    await store.put_state(AgentState(agent_name="never-active"))
    await store.claim_schedule_tick("nightly", now - timedelta(days=8))
    await store.claim_schedule_tick("nightly", now - timedelta(days=1))

    lines: list[str] = []
    report = await store.maintenance(progress=lines.append)

    assert report == {"executions_deleted": 4, "states_deleted": 1, "schedule_claims_deleted": 1,
                      "vacuumed": VACUUMED}
    for execution in deleted:
        assert await store.get_execution(execution.execution_id) is None
    for execution in kept:
        assert await store.get_execution(execution.execution_id) == execution
    assert await store.get_state("idle") is None
    assert await store.get_state("active") is not None and await store.get_state("never-active") is not None
    assert len(lines) == 6 and "deleted 4 finished executions older than 90 days" in lines
    # the ages are parameters
    assert (await store.maintenance(execution_days=5, state_days=5, vacuum=False))["executions_deleted"] == 2
    assert await store.get_state("active") is None


async def test_vacuum_analyze_runs_on_the_three_tables(fresh_store, empty_database):
    conn = await connect(empty_database)
    try:
        before = await conn.fetchval("SELECT now()")
        report = await fresh_store.maintenance()
        assert report["vacuumed"] == VACUUMED
        rows = await conn.fetch("SELECT relname, last_vacuum, last_analyze FROM pg_stat_user_tables "
                                "WHERE relname = ANY($1::text[])", VACUUMED)
        assert sorted(row["relname"] for row in rows) == VACUUMED
        assert all(row["last_vacuum"] >= before and row["last_analyze"] >= before for row in rows), rows
    finally:
        await conn.close()


async def test_without_vacuum_nothing_is_vacuumed(fresh_store):
    assert (await fresh_store.maintenance(vacuum=False))["vacuumed"] == []


async def test_negative_ages_are_refused(fresh_store):
    with pytest.raises(ValueError):
        await fresh_store.maintenance(execution_days=-1)
