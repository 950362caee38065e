"""The embedded SQLite state store: the state-store contract, plus what is SQLite's own."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest

from agentrunner.default_plugins import sqlite_store
from agentrunner.default_plugins.sqlite_store import SCHEMA_VERSION, SQLiteStateStore
from agentrunner.interfaces import StateConflict, StoreUnavailable
from agentrunner.records import AgentState, DeadLetter, Schedule
from agentrunner.testing.store_contract import T0, StateStoreContract, make_execution


async def _started(path) -> SQLiteStateStore:
    store = SQLiteStateStore(SimpleNamespace(sqlite_path=str(path)))
    await store.start()
    return store


@pytest.fixture
async def store(tmp_path):
    store = await _started(tmp_path / "agentrunner.db")
    yield store
    await store.stop()


class TestSQLiteStateStore(StateStoreContract):
    """The whole contract against a store on a file."""


class TestSQLiteStateStoreInMemory(StateStoreContract):
    """The contract again with ``:memory:``, one write per batch (no group commit at all)."""

    @pytest.fixture
    async def store(self):
        store = SQLiteStateStore(SimpleNamespace(sqlite_path=":memory:"))
        store.max_batch = 1
        await store.start()
        yield store
        await store.stop()


def test_the_plugin_registers_the_sqlite_store():
    registered = []
    sqlite_store.register_state_stores(registered.append)
    assert registered == [SQLiteStateStore] and SQLiteStateStore.name == "sqlite"


def test_the_default_path_is_agentrunner_db():
    assert SQLiteStateStore(SimpleNamespace()).path == "agentrunner.db"
    assert SQLiteStateStore(None).path == "agentrunner.db"


async def test_everything_survives_a_restart(tmp_path):
    path = tmp_path / "sub" / "dir" / "state.db"
    store = await _started(path)
    execution = make_execution("support", input={"q": "héllo"}, idempotency_key="k1", created_at=T0)
    await store.create_execution(execution)
    await store.update_execution(execution.execution_id, status="completed", result="done", completed_at=T0)
    state = await store.put_state(AgentState(agent_name="support", state_data={"n": 1}))
    schedule = Schedule(schedule_name="support", agent_name="support", schedule_type="interval",
                        schedule_config={"interval_seconds": 30})
    await store.upsert_schedule(schedule)
    assert await store.claim_schedule_tick("support", T0)
    item = DeadLetter(id="d1", execution_id=execution.execution_id, agent_name="support",
                      routing_key="autonomous.task.submitted", payload={"input": "x"}, error_message="boom",
                      attempts=3)
    await store.add_dead_letter(item)
    await store.stop()

    store = await _started(path)
    try:
        got = await store.get_execution(execution.execution_id)
        assert (got.status, got.result, got.input) == ("completed", "done", {"q": "héllo"})
        assert await store.get_state("support") == state
        assert await store.get_schedule("support") == schedule
        assert await store.get_dead_letter("d1") == item
        assert await store.claim_schedule_tick("support", T0) is False
        again = make_execution("support", idempotency_key="k1")
        assert (await store.create_execution(again))[0].execution_id == execution.execution_id
    finally:
        await store.stop()


async def test_stop_commits_every_queued_write(tmp_path):
    path = tmp_path / "a.db"
    store = await _started(path)
    executions = [make_execution("bulk") for _ in range(100)]
    tasks = [asyncio.create_task(store.create_execution(e)) for e in executions]
    await asyncio.sleep(0)  # every task has queued its write; none is committed yet
    await store.stop()
    assert all(created for _, created in await asyncio.gather(*tasks))
    store = await _started(path)
    try:
        page, _ = await store.list_executions(agent_name="bulk", limit=200)
        assert len(page) == 100
    finally:
        await store.stop()


async def test_concurrent_writes_are_group_committed(store):
    await asyncio.gather(*(store.create_execution(make_execution("bulk")) for _ in range(200)))
    assert store.writes_committed == 200
    assert store.batches_committed < 200


async def test_a_failing_operation_fails_only_its_caller(store):
    async def half_done_then_fail(conn):
        await conn.execute_fetchall(
            "INSERT INTO dead_letters (id, execution_id, agent_name, routing_key, payload, error_message, "
            "attempts, failed_at) VALUES ('half', 'e', 'a', 'r', '{}', 'm', 1, '2024-01-01T00:00:00.000000+00:00')")
        raise RuntimeError("fails after writing")

    await store.put_state(AgentState(agent_name="busy"))
    good = [make_execution("neighbour") for _ in range(20)]
    results = await asyncio.gather(
        *(store.create_execution(e) for e in good[:10]),
        store._write(half_done_then_fail),
        store.put_state(AgentState(agent_name="busy"), expect_version=0),  # a conflict, in the same batch
        store.create_execution(make_execution("neighbour", execution_id=good[0].execution_id)),  # duplicate id
        *(store.create_execution(e) for e in good[10:]),
        return_exceptions=True,
    )
    assert isinstance(results[10], RuntimeError)
    assert isinstance(results[11], StateConflict)
    assert results[12][1] is False
    assert all(created for _, created in results[:10] + results[13:])
    assert await store.get_dead_letter("half") is None  # its SAVEPOINT was rolled back
    page, _ = await store.list_executions(agent_name="neighbour", limit=100)
    assert len(page) == 20
    assert store.batches_committed < 23  # they shared batches


@pytest.mark.parametrize("savepoint", [True, False])
async def test_when_sqlite_rolls_the_transaction_back_the_whole_batch_fails(store, savepoint):
    async def lose_the_transaction(conn):
        # What SQLite does by itself on a full disk or an I/O error.
        await conn.execute_fetchall("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    neighbours = [make_execution("unlucky") for _ in range(5)]
    results = await asyncio.gather(
        *(store.create_execution(e) for e in neighbours[:3]),
        store._write(lose_the_transaction, savepoint=savepoint),
        *(store.create_execution(e) for e in neighbours[3:]),
        return_exceptions=True,
    )
    assert all(isinstance(result, StoreUnavailable) for result in results), results
    assert (await store.list_executions(agent_name="unlucky"))[0] == []  # nothing half-committed
    assert (await store.create_execution(neighbours[0]))[1] is True  # and the store carries on
    await store.health()


async def test_reads_do_not_wait_for_another_writer(store, tmp_path):
    execution = make_execution("reader")
    await store.create_execution(execution)
    other = sqlite3.connect(tmp_path / "agentrunner.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM execution_history")  # uncommitted, holding the write lock
        assert await store.get_execution(execution.execution_id) == execution
        assert (await store.list_executions(agent_name="reader"))[0] == [execution]
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_the_file_is_in_wal_mode_with_plain_columns(store, tmp_path):
    execution = make_execution("raw", input={"é": [1]}, created_at=T0)
    await store.create_execution(execution)
    raw = sqlite3.connect(tmp_path / "agentrunner.db")
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        created_at, input_text = raw.execute(
            "SELECT created_at, input FROM execution_history WHERE execution_id = ?",
            (execution.execution_id,)).fetchone()
        assert created_at == "2024-05-17T08:30:15.123456+00:00"
        assert json.loads(input_text) == {"é": [1]}
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"agent_state", "execution_history", "schedules", "dead_letters", "schedule_runs"} <= tables
    finally:
        raw.close()


async def test_old_tick_claims_are_pruned(store, tmp_path):
    old = T0 - timedelta(days=30)
    assert await store.claim_schedule_tick("nightly", old)
    assert await store.claim_schedule_tick("nightly", T0)
    raw = sqlite3.connect(tmp_path / "agentrunner.db")
    try:
        rows = raw.execute("SELECT fire_time FROM schedule_runs WHERE schedule_name = 'nightly'").fetchall()
    finally:
        raw.close()
    assert rows == [("2024-05-17T08:30:15.123456+00:00",)]


async def test_an_invalid_cursor_is_a_value_error(store):
    for cursor in ("not-base64!!", "bm90IGpzb24", "WzEsMl0"):
        with pytest.raises(ValueError, match="invalid cursor"):
            await store.list_executions(cursor=cursor)
    with pytest.raises(ValueError):
        await store.list_executions(limit=0)


async def test_health_and_writes_fail_unless_started(tmp_path):
    store = SQLiteStateStore(SimpleNamespace(sqlite_path=str(tmp_path / "h.db")))
    with pytest.raises(StoreUnavailable):
        await store.health()
    with pytest.raises(StoreUnavailable):
        await store.get_execution("x")
    await store.start()
    await store.health()
    await store.stop()
    with pytest.raises(StoreUnavailable):
        await store.health()
    with pytest.raises(StoreUnavailable):
        await store.create_execution(make_execution("late"))
    await store.stop()  # stopping twice is harmless


async def test_a_broken_connection_is_unavailable(store):
    await store._readers[0].close()
    await store._readers[1].close()
    with pytest.raises(StoreUnavailable):
        await store.health()


async def test_a_database_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "future.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    store = SQLiteStateStore(SimpleNamespace(sqlite_path=str(path)))
    with pytest.raises(StoreUnavailable, match="newer"):
        await store.start()
    await store.stop()


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    store = SQLiteStateStore(SimpleNamespace(sqlite_path=str(path)))
    with pytest.raises(StoreUnavailable, match=r"junk\.db"):
        await store.start()


async def test_memory_databases_are_private_and_leave_nothing_behind():
    one = SQLiteStateStore(SimpleNamespace(sqlite_path=":memory:"))
    two = SQLiteStateStore(SimpleNamespace(sqlite_path=":memory:"))
    await one.start()
    await two.start()
    try:
        await one.create_execution(make_execution("private"))
        assert (await two.list_executions(agent_name="private"))[0] == []
        tempdir = one._tempdir
    finally:
        await one.stop()
        await two.stop()
    assert tempdir is not None and not await asyncio.to_thread(os.path.exists, tempdir)


async def test_a_cancelled_caller_does_not_break_its_batch(store):
    executions = [make_execution("cancel") for _ in range(30)]
    tasks = [asyncio.create_task(store.create_execution(e)) for e in executions]
    await asyncio.sleep(0)
    tasks[5].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[5], asyncio.CancelledError)
    assert all(result[1] for index, result in enumerate(results) if index != 5)
    await store.health()
    assert await store.get_execution(executions[6].execution_id) is not None


async def test_a_writer_that_dies_fails_its_callers_and_health_instead_of_hanging(tmp_path):
    store = await _started(tmp_path / "a.db")

    def crash(batch, outcomes):
        raise RuntimeError("a bug in the writer")

    store._answer = crash
    results = await asyncio.wait_for(asyncio.gather(
        *(store.create_execution(make_execution("doomed")) for _ in range(5)), return_exceptions=True), 5)
    assert all(isinstance(result, StoreUnavailable) for result in results), results
    with pytest.raises(StoreUnavailable, match="writer"):
        await store.health()
    with pytest.raises(StoreUnavailable):
        await store.create_execution(make_execution("later"))
    await asyncio.wait_for(store.stop(), 5)  # and it still stops


async def test_the_wal_is_checkpointed_off_the_event_loop_and_maintenance_runs_in_the_writer_thread(tmp_path):
    path = tmp_path / "a.db"
    store = await _started(path)
    store.checkpoint_every = 4
    try:
        for _ in range(3):
            await asyncio.gather(*(store.create_execution(make_execution("many")) for _ in range(20)))
            for _ in range(4):
                await store.create_execution(make_execution("many"))
        for _ in range(50):
            if store.checkpoints:
                break
            await asyncio.sleep(0.02)
        assert store.batches_committed >= 8
        assert store.checkpoints >= 1  # the writer thread copied the WAL into the database
        # and the WAL starts over after each: 200 more commits (about 3 MB of pages) leave it small
        for _ in range(200):
            await store.create_execution(make_execution("many"))
        assert path.with_name(path.name + "-wal").stat().st_size < 512 * 1024
        loop_thread = threading.get_ident()
        threads = []
        original = store._apply_batch

        def spy(batch):
            threads.append(threading.get_ident())
            return original(batch)

        store._apply_batch = spy
        await store.create_execution(make_execution("light"))
        await store.maintenance(execution_days=1, state_days=1, vacuum=False)
        assert threads[0] == loop_thread  # a task-path write commits on the event loop
        assert threads[-1] != loop_thread  # the maintenance's deletes in the writer thread
    finally:
        await store.stop()
    assert not path.with_name(path.name + "-wal").exists()  # closing checkpointed the rest

