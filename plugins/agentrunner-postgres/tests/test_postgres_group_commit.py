"""Group commit of the task path's writes (``batching``), on the real server.

Rows written by one statement share their transaction id (``xmin``): that is how these tests see
that concurrent writes were batched, without timing anything.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from agentrunner_postgres.batching import GroupWriter

from agentrunner.records import new_id
from agentrunner.testing.store_contract import make_execution

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


async def transactions(store, execution_ids) -> list[int]:
    """The transaction id that last wrote each execution's row, in the order of ``execution_ids``."""
    async with store._pool.acquire() as conn:
        rows = await conn.fetch("SELECT execution_id, xmin::text::bigint AS xid FROM execution_history "
                                "WHERE execution_id = ANY($1::text[])", list(execution_ids))
    xid = {row["execution_id"]: row["xid"] for row in rows}
    return [xid[execution_id] for execution_id in execution_ids]


async def occupy(store, agent: str) -> list:
    """Two lone creates: while they run, the next creates gather into one batch."""
    return [asyncio.ensure_future(store.create_execution(make_execution(agent))) for _ in range(2)]


async def test_concurrent_creates_share_one_transaction(store):
    agent = f"batch-{new_id()}"
    executions = [make_execution(agent, input={"i": i}) for i in range(20)]
    results = await asyncio.gather(*(store.create_execution(execution) for execution in executions))
    assert all(created for _, created in results)
    # the first two go alone (nothing else is in flight), the 18 that arrive meanwhile go together
    xids = await transactions(store, [execution.execution_id for execution in executions])
    assert len(set(xids)) <= 3 and len(set(xids[2:])) == 1
    for execution in executions:
        assert await store.get_execution(execution.execution_id) == execution


async def test_a_duplicate_key_in_a_batch_skips_only_its_own_row(store):
    agent, key = f"batch-{new_id()}", new_id()
    lone = await occupy(store, agent)
    first = make_execution(agent, idempotency_key=key, input="first")
    duplicate = make_execution(agent, idempotency_key=key, input="duplicate")
    others = [make_execution(agent, input=i) for i in range(3)]
    batch = [first, others[0], duplicate, others[1], others[2]]
    results = await asyncio.gather(*(store.create_execution(execution) for execution in batch))
    await asyncio.gather(*lone)
    assert results[2] == (first, False)  # the duplicate gets the key's first execution
    assert [created for _, created in results] == [True, True, False, True, True]
    assert await store.get_execution(duplicate.execution_id) is None
    stored = [first, *others]
    assert len(set(await transactions(store, [execution.execution_id for execution in stored]))) == 1
    for execution in stored:
        assert await store.get_execution(execution.execution_id) == execution


async def test_a_batch_recognises_an_execution_id_already_stored(store):
    agent = f"batch-{new_id()}"
    stored = make_execution(agent, input="stored")
    await store.create_execution(stored)
    lone = await occupy(store, agent)
    again = make_execution(agent, execution_id=stored.execution_id, input="again")
    new = make_execution(agent, input="new")
    results = await asyncio.gather(store.create_execution(again), store.create_execution(new))
    await asyncio.gather(*lone)
    assert results == [(stored, False), (new, True)]


async def test_concurrent_claims_and_finishes_are_batched(store):
    agent = f"batch-{new_id()}"
    executions = [make_execution(agent) for _ in range(12)]
    await asyncio.gather(*(store.create_execution(execution) for execution in executions))
    ids = [execution.execution_id for execution in executions]
    claims = await asyncio.gather(*(store.claim_execution(execution_id, T0) for execution_id in ids))
    assert [(claim.execution_id, claim.status, claim.attempts, claim.started_at) for claim in claims] == [
        (execution_id, "running", 1, T0) for execution_id in ids]
    assert len(set((await transactions(store, ids))[2:])) == 1
    # results of any JSON shape (a list must not read as another array dimension), NULL, and durations
    results = [[i, "x"] if i % 3 == 0 else {"i": i} if i % 3 == 1 else None for i in range(len(ids))]
    finished = await asyncio.gather(*(
        store.update_execution(execution_id, expect_status=["running"], status="completed", result=result,
                               completed_at=T0 + timedelta(seconds=i))
        for i, (execution_id, result) in enumerate(zip(ids, results, strict=True))))
    assert all(finished)
    assert len(set((await transactions(store, ids))[2:])) == 1
    for i, (execution_id, result) in enumerate(zip(ids, results, strict=True)):
        got = await store.get_execution(execution_id)
        assert (got.status, got.result, got.duration_seconds, got.attempts) == ("completed", result, float(i), 1)


async def test_batched_finishes_that_insert_their_row_store_every_value_as_given(store):
    # the executions of waited tasks are stored by the write that records their end, in batches sent as one
    # JSON parameter: every column must come back as it went, whatever the value
    agent = f"batch-{new_id()}"
    naive = datetime(2025, 3, 1, 12, 0, 0, 123456)  # naive: stored as UTC
    values = [
        ("plain", {"text": "hi"}, "done"),
        ("quotes \" and \\ and \n, ünïcødé ✓, </script>", ["a", 1, 2.5, None, True], {"nested": {"list": [[1, 2]]}}),
        ("", {}, None),
        ("x" * 5000, {"big": 2**53, "neg": -1.5e-7}, [1, "x"]),
        ("emoji 🙂", None, "with \u2028 line separator"),
        ("last", {"k": "v"}, 0),
    ]
    executions = []
    for i, (error, data, _result) in enumerate(values):
        executions.append(make_execution(agent, status="running", input={"i": i, "text": error}, data=data or {},
                                         trace_id=new_id(), idempotency_key=f"key-{i}-{new_id()}" if i % 2 else None,
                                         parent_execution_id=new_id() if i == 3 else None, created_at=T0,
                                         started_at=naive if i == 0 else T0, attempts=1))
    fields = [{"status": "failed" if i % 2 else "completed",
               "completed_at": (naive if i == 0 else T0) + timedelta(seconds=i, microseconds=7),
               "result": result, "error_message": error or None, "usage": {"input_tokens": i, "model": "m"},
               "details": {"steps": [i]} if i % 2 else {}}
              for i, (error, _, result) in enumerate(values)]
    changed = await asyncio.gather(*(
        store.update_execution(execution.execution_id, expect_status=("queued", "running"), insert=execution,
                               **update) for execution, update in zip(executions, fields, strict=True)))
    assert changed == [True] * len(values)
    # the first two go alone (nothing else is in flight), the others that arrive meanwhile go together
    xids = await transactions(store, [execution.execution_id for execution in executions])
    assert len(set(xids)) <= 3 and len(set(xids[2:])) == 1
    for i, (execution, update) in enumerate(zip(executions, fields, strict=True)):
        got = await store.get_execution(execution.execution_id)
        expected = {**execution.to_json(), **{key: value for key, value in update.items() if key != "completed_at"}}
        started = naive.replace(tzinfo=UTC) if i == 0 else T0
        completed = update["completed_at"].replace(tzinfo=UTC)
        expected.update(completed_at=completed.isoformat(), started_at=started.isoformat(),
                        duration_seconds=round((completed - started).total_seconds(), 6))
        assert got.to_json() == expected
    # the same upsert with a status it does not expect leaves the stored row as it is
    again = await store.update_execution(executions[0].execution_id, expect_status=("queued",), insert=executions[0],
                                         status="cancelled")
    assert again is False and (await store.get_execution(executions[0].execution_id)).status == "completed"


async def test_a_compare_and_set_in_a_batch_refuses_only_its_own_row(store):
    agent = f"batch-{new_id()}"
    executions = [make_execution(agent) for _ in range(6)]
    await asyncio.gather(*(store.create_execution(execution) for execution in executions))
    ids = [execution.execution_id for execution in executions]
    await store.update_execution(ids[3], status="cancelled")
    changed = await asyncio.gather(*(store.update_execution(execution_id, expect_status=["queued"],
                                                            status="failed", error_message="boom")
                                     for execution_id in [*ids, new_id()]))
    assert changed == [True, True, True, False, True, True, False]
    assert [(await store.get_execution(execution_id)).status for execution_id in ids] == [
        "failed", "failed", "failed", "cancelled", "failed", "failed"]


async def test_claims_of_one_execution_never_share_a_batch(store):
    execution = make_execution(f"batch-{new_id()}")
    await store.create_execution(execution)
    started = [T0 + timedelta(seconds=i) for i in range(8)]
    claims = await asyncio.gather(*(store.claim_execution(execution.execution_id, at) for at in started))
    assert sorted(claim.attempts for claim in claims) == list(range(1, 9))


async def test_a_writer_keeps_one_write_per_key_in_a_batch_and_reports_each_outcome():
    batches: list[list[tuple[str, int]]] = []
    gate = asyncio.Event()

    async def write(items):
        batches.append(list(items))
        await gate.wait()
        return [ValueError(key) if value < 0 else value * 10 for key, value in items]

    writer = GroupWriter(write, key=lambda item: item[0], max_in_flight=1)
    calls = [asyncio.ensure_future(writer.submit(item))
             for item in [("a", 1), ("a", 2), ("b", 3), ("c", -1), ("a", 4)]]
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert batches == [[("a", 1)], [("a", 2), ("b", 3), ("c", -1)], [("a", 4)]]
    assert outcomes[:3] == [10, 20, 30] and outcomes[4] == 40
    assert isinstance(outcomes[3], ValueError)
    assert (writer.batches, writer.items) == (3, 5)


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_still_runs():
    async def write(items):
        if any(item < 0 for item in items):
            raise ConnectionError("lost")
        return list(items)

    writer = GroupWriter(write, key=lambda item: item, max_in_flight=1)
    first = asyncio.ensure_future(writer.submit(1))
    failing = [asyncio.ensure_future(writer.submit(item)) for item in (2, -3)]
    assert await first == 1
    for call in failing:
        with pytest.raises(ConnectionError):
            await call
    assert await writer.submit(4) == 4
