"""The contract every state store meets (``agentrunner.interfaces.StateStore``).

Subclass ``StateStoreContract`` in a ``Test…`` class and provide a ``store``
fixture that yields a started store (see ``agentrunner.testing``). Every test
uses names of its own, so the store need not be empty.

Beyond the protocol's docstrings the contract pins down what callers rely on:

- ``create_execution`` returns ``(the stored execution, False)`` both for an
  agent's idempotency key already used and for an ``execution_id`` already
  stored (a redelivered task), decided by the database's unique constraints.
- ``update_execution`` accepts any ``Execution`` field but ``execution_id``
  (another name is a ``TypeError``); ``expect_status=[]`` never matches.
- ``list_executions`` is newest first by ``created_at`` then ``execution_id``;
  a page that ends the listing has no cursor (no empty last page).
- ``executions_with_status`` is oldest first.
- ``claim_execution`` starts an attempt of a ``queued`` or ``running``
  execution and returns it exactly as stored afterwards (``running``, the given
  ``started_at``, no ``error_message``, ``attempts`` + 1, everything else as
  it was). It is not a lock: claiming a ``running`` execution again succeeds
  (the previous attempt crashed or the task was redelivered), and concurrent
  claims of one execution all succeed, one after the other, each with its own
  attempt number. Any other status (finished, ``cancelled``,
  ``awaiting_input``) or an unknown id gives None and changes nothing.
- ``put_state`` returns the state as stored: the next version, the
  ``created_at`` of the first write, ``updated_at`` set by the store.
  ``expect_version=0`` means "no state stored yet".
- ``upsert_schedule`` keeps an existing schedule's ``created_at``;
  ``list_schedules`` is ordered by name.
- ``add_dead_letter`` with an existing id replaces it; ``list_dead_letters`` is
  newest ``failed_at`` first.
- Timestamps come back timezone-aware in UTC, equal to what was stored, with
  microseconds; JSON values come back equal (unicode and nesting included).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from agentrunner.interfaces import StateConflict
from agentrunner.records import AgentState, DeadLetter, Execution, Schedule, new_id

#: A fixed instant with microseconds, to build distinct and exact timestamps from.
T0 = datetime(2024, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)

NESTED = {
    "text": "ünïcødé ✓ 🚀 日本語 \"quoted\" back\\slash\nnewline",
    "numbers": [0, -1, 2**53, 3.5, 1e-7],
    "flags": {"yes": True, "no": False, "nothing": None},
    "deep": {"a": {"b": {"c": [1, [2, [3, {"d": "é"}]]]}}},
    "empty": {"list": [], "dict": {}, "string": ""},
}


def _name(label: str = "agent") -> str:
    return f"{label}-{new_id()[-12:]}"


def make_execution(agent_name: str, **fields: Any) -> Execution:
    """An execution with a new id for ``agent_name``; ``fields`` override the defaults."""
    values: dict[str, Any] = {"execution_id": new_id(), "agent_name": agent_name, "task_type": "autonomous"}
    values.update(fields)
    return Execution(**values)


def _assert_utc(value: datetime | None) -> None:
    assert value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0), value


class StateStoreContract:
    """Tests every state store passes; the subclass provides the ``store`` fixture."""

    pytestmark = pytest.mark.asyncio

    async def test_health_passes_when_started(self, store: Any) -> None:
        await store.health()

    # --- executions -----------------------------------------------------------------

    async def test_an_execution_round_trips_every_field(self, store: Any) -> None:
        execution = make_execution(
            _name(),
            task_type="collaborative",
            status="completed",
            input={"question": "¿qué?", "nested": NESTED},
            data={"routing_key": "slack.event.message", "event": {"user": "U1", "text": "hé"}},
            result={"answer": "✓", "items": [1, 2.5, None]},
            error_message="none — really",
            trace_id=new_id(),
            usage={"input_tokens": 12, "output_tokens": 34, "model": "echo"},
            details={"tool_calls": [{"name": "search", "arguments": {"q": "x"}}], "plan": ["a", "b"]},
            attempts=3,
            idempotency_key=new_id(),
            parent_execution_id=new_id(),
            created_at=T0,
            started_at=T0 + timedelta(microseconds=1),
            completed_at=T0 + timedelta(seconds=2, microseconds=500001),
        )
        stored, created = await store.create_execution(execution)
        assert created is True
        assert stored == execution
        got = await store.get_execution(execution.execution_id)
        assert got == execution
        for value in (got.created_at, got.started_at, got.completed_at):
            _assert_utc(value)
        assert got.duration_seconds == 2.5

    async def test_an_execution_with_defaults_round_trips(self, store: Any) -> None:
        execution = make_execution(_name())
        await store.create_execution(execution)
        got = await store.get_execution(execution.execution_id)
        assert got == execution
        assert got.input is None and got.result is None and got.data == {} and got.started_at is None

    @pytest.mark.parametrize(
        "value", ["plain", "ünïcødé 🚀", 0, 7.25, True, None, [1, "two", None], NESTED, {"k": [{"x": {}}]}]
    )
    async def test_json_input_and_result_round_trip(self, store: Any, value: Any) -> None:
        execution = make_execution(_name(), input=value, result=value, data={"value": value})
        await store.create_execution(execution)
        got = await store.get_execution(execution.execution_id)
        assert got.input == value and got.result == value and got.data == {"value": value}
        assert type(got.input) is type(value)

    async def test_timestamps_in_other_zones_come_back_as_the_same_instant_in_utc(self, store: Any) -> None:
        plus_five = timezone(timedelta(hours=5, minutes=30))
        created = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=plus_five)
        execution = make_execution(_name(), created_at=created, started_at=created + timedelta(seconds=1))
        await store.create_execution(execution)
        got = await store.get_execution(execution.execution_id)
        assert got.created_at == created and got.started_at == created + timedelta(seconds=1)
        _assert_utc(got.created_at)
        assert got.created_at.replace(tzinfo=None) == datetime(2024, 1, 1, 21, 34, 5, 6)

    async def test_a_missing_execution_is_none(self, store: Any) -> None:
        assert await store.get_execution(new_id()) is None

    async def test_one_idempotency_key_per_agent_returns_the_first_execution(self, store: Any) -> None:
        agent, key = _name(), new_id()
        first = make_execution(agent, idempotency_key=key, input="first")
        second = make_execution(agent, idempotency_key=key, input="second")
        assert await store.create_execution(first) == (first, True)
        stored, created = await store.create_execution(second)
        assert created is False
        assert stored == first
        assert await store.get_execution(second.execution_id) is None

    async def test_an_idempotency_key_is_scoped_to_its_agent(self, store: Any) -> None:
        key = new_id()
        one, other = make_execution(_name(), idempotency_key=key), make_execution(_name(), idempotency_key=key)
        assert (await store.create_execution(one))[1] is True
        assert (await store.create_execution(other))[1] is True

    async def test_executions_without_a_key_never_conflict(self, store: Any) -> None:
        agent = _name()
        for _ in range(3):
            assert (await store.create_execution(make_execution(agent)))[1] is True
        page, _ = await store.list_executions(agent_name=agent)
        assert len(page) == 3

    async def test_an_execution_id_is_stored_once(self, store: Any) -> None:
        first = make_execution(_name(), input="first")
        again = make_execution(first.agent_name, execution_id=first.execution_id, input="again")
        await store.create_execution(first)
        stored, created = await store.create_execution(again)
        assert created is False
        assert stored == first
        assert (await store.get_execution(first.execution_id)).input == "first"

    async def test_concurrent_submissions_with_one_key_yield_one_execution(self, store: Any) -> None:
        agent, key = _name(), new_id()
        attempts = [make_execution(agent, idempotency_key=key, input=i) for i in range(50)]
        results = await asyncio.gather(*(store.create_execution(e) for e in attempts))
        assert sum(created for _, created in results) == 1
        ids = {stored.execution_id for stored, _ in results}
        assert len(ids) == 1
        page, cursor = await store.list_executions(agent_name=agent, limit=100)
        assert [e.execution_id for e in page] == list(ids) and cursor is None

    async def test_concurrent_creates_and_updates_all_land(self, store: Any) -> None:
        agent = _name()

        async def run(i: int) -> bool:
            execution = make_execution(agent, input={"i": i})
            assert (await store.create_execution(execution))[1] is True
            started = await store.update_execution(execution.execution_id, expect_status=["queued"],
                                                   status="running", started_at=T0)
            finished = await store.update_execution(execution.execution_id, expect_status=["running"],
                                                    status="completed", result={"i": i},
                                                    completed_at=T0 + timedelta(seconds=i))
            return started and finished

        assert all(await asyncio.gather(*(run(i) for i in range(200))))
        executions = await store.executions_with_status(["completed"])
        mine = [e for e in executions if e.agent_name == agent]
        assert len(mine) == 200
        assert sorted(e.result["i"] for e in mine) == list(range(200))
        assert all(e.input == e.result and e.duration_seconds == e.result["i"] for e in mine)

    async def test_update_sets_fields(self, store: Any) -> None:
        execution = make_execution(_name())
        await store.create_execution(execution)
        changed = await store.update_execution(
            execution.execution_id, status="failed", error_message="boom ✗", attempts=2,
            started_at=T0, completed_at=T0 + timedelta(seconds=1, microseconds=250000),
            result=NESTED, usage={"input_tokens": 1}, details={"plan": ["x"]},
        )
        assert changed is True
        got = await store.get_execution(execution.execution_id)
        assert (got.status, got.error_message, got.attempts) == ("failed", "boom ✗", 2)
        assert got.result == NESTED and got.usage == {"input_tokens": 1} and got.details == {"plan": ["x"]}
        assert got.started_at == T0 and got.duration_seconds == 1.25
        _assert_utc(got.completed_at)
        assert got.input == execution.input and got.created_at == execution.created_at

    async def test_update_can_clear_a_field(self, store: Any) -> None:
        execution = make_execution(_name(), result="r", error_message="e", started_at=T0)
        await store.create_execution(execution)
        assert await store.update_execution(execution.execution_id, result=None, error_message=None, started_at=None)
        got = await store.get_execution(execution.execution_id)
        assert (got.result, got.error_message, got.started_at) == (None, None, None)

    async def test_updating_a_missing_execution_returns_false(self, store: Any) -> None:
        assert await store.update_execution(new_id(), status="running") is False

    async def test_update_with_expect_status_is_a_compare_and_set(self, store: Any) -> None:
        execution = make_execution(_name())
        await store.create_execution(execution)
        eid = execution.execution_id
        assert await store.update_execution(eid, expect_status=["running"], status="completed") is False
        assert (await store.get_execution(eid)).status == "queued"
        assert await store.update_execution(eid, expect_status=["queued", "running"], status="running") is True
        assert await store.update_execution(eid, expect_status=[], status="cancelled") is False
        assert await store.update_execution(eid, expect_status=["running"], status="cancelled") is True
        assert (await store.get_execution(eid)).status == "cancelled"

    async def test_concurrent_compare_and_set_has_one_winner(self, store: Any) -> None:
        execution = make_execution(_name())
        await store.create_execution(execution)
        results = await asyncio.gather(*(
            store.update_execution(execution.execution_id, expect_status=["queued"], status="running",
                                   details={"worker": i})
            for i in range(20)
        ))
        assert sum(results) == 1
        winner = results.index(True)
        assert (await store.get_execution(execution.execution_id)).details == {"worker": winner}

    async def test_claim_starts_an_attempt_and_returns_the_execution(self, store: Any) -> None:
        execution = make_execution(_name(), input={"q": "é"}, data={"k": 1}, error_message="earlier failure",
                                   usage={"input_tokens": 3}, details={"plan": ["a"]}, idempotency_key=new_id(),
                                   parent_execution_id=new_id(), created_at=T0)
        await store.create_execution(execution)
        started = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
        claimed = await store.claim_execution(execution.execution_id, started)
        expected = attrs.evolve(execution, status="running", started_at=started, error_message=None, attempts=1)
        assert claimed == expected
        _assert_utc(claimed.started_at)
        assert claimed.duration_seconds is None
        assert await store.get_execution(execution.execution_id) == expected

    @pytest.mark.parametrize("started", [datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
                                         datetime(2026, 1, 2, 3, 4, 5, 678901)])  # naive means UTC
    async def test_a_claim_returns_exactly_what_a_read_returns(self, store: Any, started: datetime) -> None:
        # a store may answer a first claim without reading the row back: it must still be the row,
        # values normalised by their JSON round trip included (a tuple comes back as a list)
        execution = make_execution(_name(), input=("a", {"pair": (1, 2)}), data={"n": 1})
        await store.create_execution(execution)
        claimed = await store.claim_execution(execution.execution_id, started)
        assert claimed == await store.get_execution(execution.execution_id)
        assert (claimed.status, claimed.attempts, claimed.input) == ("running", 1, ["a", {"pair": [1, 2]}])
        claimed.data["n"] = 2  # the caller's copy: changing it changes nothing stored
        again = await store.claim_execution(execution.execution_id, started)  # a redelivery
        assert again == await store.get_execution(execution.execution_id)
        assert (again.attempts, again.data) == (2, {"n": 1})

    async def test_claiming_a_running_execution_starts_the_next_attempt(self, store: Any) -> None:
        # a crashed (or redelivered) attempt left it running: the next claim starts attempt 2
        execution = make_execution(_name())
        await store.create_execution(execution)
        await store.claim_execution(execution.execution_id, T0)
        await store.update_execution(execution.execution_id, error_message="worker lost")
        again = await store.claim_execution(execution.execution_id, T0 + timedelta(seconds=1))
        expected = attrs.evolve(execution, status="running", started_at=T0 + timedelta(seconds=1), attempts=2)
        assert again == expected
        assert await store.get_execution(execution.execution_id) == expected

    async def test_finished_cancelled_or_unknown_executions_cannot_be_claimed(self, store: Any) -> None:
        for status in ("completed", "failed", "timed_out", "cancelled", "awaiting_input"):
            execution = make_execution(_name(), status=status, attempts=2, error_message="kept",
                                       started_at=T0, completed_at=T0 + timedelta(seconds=3), result={"r": 1})
            await store.create_execution(execution)
            assert await store.claim_execution(execution.execution_id, datetime.now(UTC)) is None
            assert await store.get_execution(execution.execution_id) == execution
        unknown = new_id()
        assert await store.claim_execution(unknown, datetime.now(UTC)) is None
        assert await store.get_execution(unknown) is None

    async def test_a_claim_after_the_execution_finished_is_refused(self, store: Any) -> None:
        execution = make_execution(_name())
        await store.create_execution(execution)
        assert (await store.claim_execution(execution.execution_id, T0)).attempts == 1
        assert await store.update_execution(execution.execution_id, expect_status=["running"], status="completed",
                                            completed_at=T0 + timedelta(seconds=2))
        assert await store.claim_execution(execution.execution_id, T0 + timedelta(seconds=5)) is None
        got = await store.get_execution(execution.execution_id)
        assert (got.status, got.attempts, got.started_at, got.duration_seconds) == ("completed", 1, T0, 2.0)

    async def test_concurrent_claims_each_start_their_own_attempt(self, store: Any) -> None:
        execution = make_execution(_name())
        await store.create_execution(execution)
        started = [T0 + timedelta(seconds=i) for i in range(20)]
        claims = await asyncio.gather(*(store.claim_execution(execution.execution_id, at) for at in started))
        assert all(claim is not None and claim.status == "running" for claim in claims)
        assert sorted(claim.attempts for claim in claims) == list(range(1, 21))
        for claim, at in zip(claims, started, strict=True):
            assert claim.started_at == at
        # the store holds the last claim applied
        last = max(claims, key=lambda claim: claim.attempts)
        assert await store.get_execution(execution.execution_id) == last

    async def test_an_update_with_insert_stores_an_execution_not_stored_yet(self, store: Any) -> None:
        # a task submitted by a waiting caller is recorded once, when it ends, with every field
        submitted = make_execution(_name(), input={"q": "é"}, data={"k": 1}, created_at=T0)
        running = attrs.evolve(submitted, status="running", started_at=T0 + timedelta(seconds=1), attempts=1)
        ended = T0 + timedelta(seconds=3.5)
        assert await store.update_execution(
            submitted.execution_id, expect_status=["queued", "running"], insert=running, status="completed",
            completed_at=ended, result={"answer": 42}, started_at=running.started_at, attempts=1) is True
        expected = attrs.evolve(running, status="completed", completed_at=ended, result={"answer": 42})
        got = await store.get_execution(submitted.execution_id)
        assert got == expected and got.duration_seconds == 2.5
        _assert_utc(got.completed_at)

    async def test_an_update_with_insert_of_a_stored_execution_is_an_update(self, store: Any) -> None:
        execution = make_execution(_name(), data={"stored": True})
        await store.create_execution(execution)  # recorded meanwhile (the submitter's deferred create)
        late = attrs.evolve(execution, data={"stored": False}, status="running", started_at=T0, attempts=1)
        assert await store.update_execution(execution.execution_id, expect_status=["queued", "running"],
                                            insert=late, status="completed", completed_at=T0 + timedelta(seconds=1),
                                            started_at=T0, attempts=1) is True
        got = await store.get_execution(execution.execution_id)
        # only the update's fields change: what was stored otherwise stays
        assert (got.status, got.data, got.attempts, got.duration_seconds) == ("completed", {"stored": True}, 1, 1.0)
        # a finished (or cancelled) execution is not changed: the compare-and-set holds with insert too
        assert await store.update_execution(execution.execution_id, expect_status=["queued", "running"],
                                            insert=late, status="failed", error_message="late") is False
        assert (await store.get_execution(execution.execution_id)).status == "completed"

    async def test_an_insert_without_expected_statuses_leaves_a_stored_execution_alone(self, store: Any) -> None:
        execution = make_execution(_name(), input="first")
        assert await store.update_execution(execution.execution_id, expect_status=[], insert=execution) is True
        assert await store.get_execution(execution.execution_id) == execution
        assert await store.update_execution(execution.execution_id, expect_status=["queued"], status="running")
        late = attrs.evolve(execution, input="second")
        assert await store.update_execution(execution.execution_id, expect_status=[], insert=late) is False
        got = await store.get_execution(execution.execution_id)
        assert (got.status, got.input) == ("running", "first")

    async def test_concurrent_updates_with_insert_all_land(self, store: Any) -> None:
        executions = [make_execution(_name("many"), input=n) for n in range(40)]
        stored = executions[::2]
        for execution in stored:
            await store.create_execution(execution)
        results = await asyncio.gather(*(
            store.update_execution(e.execution_id, expect_status=["queued", "running"], insert=e,
                                   status="completed", result=e.input, completed_at=T0)
            for e in executions))
        assert results == [True] * 40
        for execution in executions:
            got = await store.get_execution(execution.execution_id)
            assert (got.status, got.result, got.input) == ("completed", execution.input, execution.input)

    async def test_a_claim_with_insert_stores_and_claims_an_execution_not_stored_yet(self, store: Any) -> None:
        submitted = make_execution(_name(), input="hi", data={"k": 1}, created_at=T0)
        started = T0 + timedelta(seconds=2)
        claimed = await store.claim_execution(submitted.execution_id, started, insert=submitted)
        expected = attrs.evolve(submitted, status="running", started_at=started, attempts=1)
        assert claimed == expected
        assert await store.get_execution(submitted.execution_id) == expected
        # claimed again (a redelivery after a crash): the stored row's next attempt
        again = await store.claim_execution(submitted.execution_id, started + timedelta(seconds=1), insert=submitted)
        assert (again.attempts, again.started_at) == (2, started + timedelta(seconds=1))
        # finished: refused, and nothing changes
        assert await store.update_execution(submitted.execution_id, expect_status=["running"], status="completed")
        assert await store.claim_execution(submitted.execution_id, started, insert=submitted) is None
        assert (await store.get_execution(submitted.execution_id)).attempts == 2

    async def test_concurrent_claims_with_insert_each_start_their_own_attempt(self, store: Any) -> None:
        execution = make_execution(_name())
        started = [T0 + timedelta(seconds=i) for i in range(10)]
        claims = await asyncio.gather(*(store.claim_execution(execution.execution_id, at, insert=execution)
                                        for at in started))
        assert sorted(claim.attempts for claim in claims) == list(range(1, 11))

    async def test_update_rejects_unknown_fields(self, store: Any) -> None:
        execution = make_execution(_name())
        await store.create_execution(execution)
        with pytest.raises(TypeError):
            await store.update_execution(execution.execution_id, no_such_field=1)
        with pytest.raises(TypeError):
            await store.update_execution(execution.execution_id, execution_id="other")

    async def _created(self, store: Any, agent: str, count: int, **fields: Any) -> list[Execution]:
        executions = [make_execution(agent, created_at=T0 + timedelta(seconds=i), **fields) for i in range(count)]
        for execution in executions:
            await store.create_execution(execution)
        return executions

    async def _all_pages(self, store: Any, limit: int, **filters: Any) -> list[list[Execution]]:
        pages, cursor = [], None
        while True:
            page, cursor = await store.list_executions(limit=limit, cursor=cursor, **filters)
            pages.append(page)
            assert len(page) <= limit
            if cursor is None:
                return pages
            assert len(page) == limit
            assert len(pages) < 1000, "the cursor does not advance"

    async def test_list_is_newest_first_across_pages(self, store: Any) -> None:
        agent = _name()
        executions = await self._created(store, agent, 10)
        pages = await self._all_pages(store, 3, agent_name=agent)
        assert [len(page) for page in pages] == [3, 3, 3, 1]
        listed = [e for page in pages for e in page]
        assert listed == list(reversed(executions))

    async def test_a_page_that_ends_the_listing_has_no_cursor(self, store: Any) -> None:
        agent = _name()
        await self._created(store, agent, 6)
        assert [len(page) for page in await self._all_pages(store, 3, agent_name=agent)] == [3, 3]
        assert await store.list_executions(agent_name=_name()) == ([], None)

    async def test_executions_created_at_the_same_instant_are_listed_once_each(self, store: Any) -> None:
        agent = _name()
        executions = [make_execution(agent, created_at=T0) for _ in range(7)]
        for execution in executions:
            await store.create_execution(execution)
        listed = [e.execution_id for page in await self._all_pages(store, 2, agent_name=agent) for e in page]
        assert sorted(listed) == sorted(e.execution_id for e in executions)
        assert len(set(listed)) == 7

    async def test_list_filters_by_agent_and_status_across_pages(self, store: Any) -> None:
        agent, other = _name(), _name()
        executions = await self._created(store, agent, 12)
        await self._created(store, other, 4)
        for execution in executions[::2]:
            await store.update_execution(execution.execution_id, status="completed")
        completed = [e.execution_id for e in reversed(executions[::2])]
        pages = await self._all_pages(store, 4, agent_name=agent, status="completed")
        assert [e.execution_id for page in pages for e in page] == completed
        assert [len(page) for page in pages] == [4, 2]
        queued = [e.execution_id for page in await self._all_pages(store, 5, agent_name=agent, status="queued")
                  for e in page]
        assert queued == [e.execution_id for e in reversed(executions[1::2])]
        everyone = [e.execution_id for page in await self._all_pages(store, 50) for e in page]
        mine = [eid for eid in everyone if eid in {e.execution_id for e in executions}]
        assert mine == [e.execution_id for e in reversed(executions)]

    async def test_a_cursor_is_a_string(self, store: Any) -> None:
        agent = _name()
        await self._created(store, agent, 3)
        _, cursor = await store.list_executions(agent_name=agent, limit=1)
        assert isinstance(cursor, str) and cursor

    async def test_executions_with_status(self, store: Any) -> None:
        agent = _name()
        executions = await self._created(store, agent, 5)
        await store.update_execution(executions[1].execution_id, status="running")
        await store.update_execution(executions[3].execution_id, status="awaiting_input")
        await store.update_execution(executions[4].execution_id, status="completed")
        found = await store.executions_with_status(["running", "awaiting_input"])
        mine = [e.execution_id for e in found if e.agent_name == agent]
        assert mine == [executions[1].execution_id, executions[3].execution_id]
        assert await store.executions_with_status([]) == []

    # --- agent state -------------------------------------------------------------------

    async def test_a_missing_state_is_none(self, store: Any) -> None:
        assert await store.get_state(_name()) is None

    async def test_put_state_bumps_the_version_and_round_trips(self, store: Any) -> None:
        state = AgentState(
            agent_name=_name(),
            state_data={"counter": 1, "nested": NESTED},
            conversation_history=[{"role": "user", "content": "héllo 🚀"}, {"role": "assistant", "content": "hi"}],
            metadata={"source": "contract"},
            last_activity=T0,
        )
        stored = await store.put_state(state)
        assert stored.version == 1
        assert (stored.state_data, stored.conversation_history, stored.metadata) == (
            state.state_data, state.conversation_history, state.metadata)
        got = await store.get_state(state.agent_name)
        assert got == stored
        assert got.last_activity == T0
        for value in (got.created_at, got.updated_at, got.last_activity):
            _assert_utc(value)
        second = await store.put_state(AgentState(agent_name=state.agent_name, state_data={"counter": 2}))
        assert second.version == 2
        assert second.created_at == stored.created_at
        assert second.updated_at >= stored.updated_at
        got = await store.get_state(state.agent_name)
        assert got == second
        assert got.state_data == {"counter": 2} and got.conversation_history == [] and got.last_activity is None

    async def test_expect_version_refuses_a_stale_writer(self, store: Any) -> None:
        name = _name()
        first = await store.put_state(AgentState(agent_name=name, state_data={"v": 1}))
        second = await store.put_state(AgentState(agent_name=name, state_data={"v": 2}), expect_version=first.version)
        assert second.version == 2
        with pytest.raises(StateConflict):
            await store.put_state(AgentState(agent_name=name, state_data={"v": "stale"}), expect_version=1)
        got = await store.get_state(name)
        assert got.version == 2 and got.state_data == {"v": 2}

    async def test_expect_version_zero_means_no_state_yet(self, store: Any) -> None:
        name = _name()
        with pytest.raises(StateConflict):
            await store.put_state(AgentState(agent_name=name), expect_version=1)
        assert await store.get_state(name) is None
        assert (await store.put_state(AgentState(agent_name=name), expect_version=0)).version == 1
        with pytest.raises(StateConflict):
            await store.put_state(AgentState(agent_name=name), expect_version=0)

    async def test_concurrent_writers_of_one_version_have_one_winner(self, store: Any) -> None:
        name = _name()
        await store.put_state(AgentState(agent_name=name, state_data={"writer": None}))

        async def write(i: int) -> bool:
            try:
                await store.put_state(AgentState(agent_name=name, state_data={"writer": i}), expect_version=1)
            except StateConflict:
                return False
            return True

        results = await asyncio.gather(*(write(i) for i in range(10)))
        assert sum(results) == 1
        got = await store.get_state(name)
        assert got.version == 2 and got.state_data == {"writer": results.index(True)}

    async def test_concurrent_unconditional_writes_each_bump_the_version(self, store: Any) -> None:
        name = _name()
        results = await asyncio.gather(*(
            store.put_state(AgentState(agent_name=name, state_data={"i": i})) for i in range(10)))
        assert sorted(state.version for state in results) == list(range(1, 11))
        assert (await store.get_state(name)).version == 10

    async def test_delete_state(self, store: Any) -> None:
        name = _name()
        await store.put_state(AgentState(agent_name=name, state_data={"x": 1}))
        assert await store.delete_state(name) is True
        assert await store.get_state(name) is None
        assert await store.delete_state(name) is False

    # --- schedules --------------------------------------------------------------------

    def _schedule(self, **fields: Any) -> Schedule:
        values: dict[str, Any] = {
            "schedule_name": _name("schedule"),
            "agent_name": _name(),
            "schedule_type": "cron",
            "schedule_config": {"cron": "*/5 * * * *", "timezone": "Europe/Paris"},
            "task_data": {"report": "daily ✓", "nested": NESTED},
            "enabled": True,
            "created_at": T0,
            "updated_at": T0 + timedelta(seconds=1),
            "last_execution": T0 + timedelta(minutes=5),
        }
        values.update(fields)
        return Schedule(**values)

    async def test_a_schedule_round_trips(self, store: Any) -> None:
        schedule = self._schedule()
        await store.upsert_schedule(schedule)
        got = await store.get_schedule(schedule.schedule_name)
        assert got == schedule
        for value in (got.created_at, got.updated_at, got.last_execution):
            _assert_utc(value)
        interval = self._schedule(schedule_type="interval", schedule_config={"interval_seconds": 30},
                                  task_data={}, enabled=False, last_execution=None)
        await store.upsert_schedule(interval)
        assert await store.get_schedule(interval.schedule_name) == interval
        assert await store.get_schedule(_name("schedule")) is None

    async def test_upsert_replaces_a_schedule_and_keeps_created_at(self, store: Any) -> None:
        schedule = self._schedule()
        await store.upsert_schedule(schedule)
        changed = self._schedule(
            schedule_name=schedule.schedule_name, agent_name=schedule.agent_name, schedule_type="interval",
            schedule_config={"interval_seconds": 60}, enabled=False, created_at=T0 + timedelta(days=1),
            updated_at=T0 + timedelta(days=1), last_execution=T0 + timedelta(days=1, minutes=1),
        )
        await store.upsert_schedule(changed)
        got = await store.get_schedule(schedule.schedule_name)
        assert got == attrs.evolve(changed, created_at=schedule.created_at)

    async def test_list_schedules_is_ordered_by_name(self, store: Any) -> None:
        prefix = _name("list")
        names = [f"{prefix}-{suffix}" for suffix in ("b", "a", "c")]
        for name in names:
            await store.upsert_schedule(self._schedule(schedule_name=name))
        listed = [s.schedule_name for s in await store.list_schedules()]
        assert [name for name in listed if name.startswith(prefix)] == sorted(names)
        assert listed == sorted(listed)

    async def test_delete_schedule(self, store: Any) -> None:
        schedule = self._schedule()
        await store.upsert_schedule(schedule)
        assert await store.delete_schedule(schedule.schedule_name) is True
        assert await store.get_schedule(schedule.schedule_name) is None
        assert await store.delete_schedule(schedule.schedule_name) is False

    async def test_a_schedule_tick_is_claimed_once(self, store: Any) -> None:
        name = _name("schedule")
        tick = T0.replace(microsecond=0)
        assert await store.claim_schedule_tick(name, tick) is True
        assert await store.claim_schedule_tick(name, tick) is False
        assert await store.claim_schedule_tick(name, tick + timedelta(minutes=1)) is True
        assert await store.claim_schedule_tick(_name("schedule"), tick) is True

    async def test_the_same_instant_in_another_zone_is_the_same_tick(self, store: Any) -> None:
        name = _name("schedule")
        tick = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
        assert await store.claim_schedule_tick(name, tick) is True
        paris = timezone(timedelta(hours=1))
        assert await store.claim_schedule_tick(name, tick.astimezone(paris)) is False

    async def test_concurrent_claims_of_a_tick_have_one_winner(self, store: Any) -> None:
        name = _name("schedule")
        tick = T0.replace(second=0, microsecond=0)
        results = await asyncio.gather(*(store.claim_schedule_tick(name, tick) for _ in range(20)))
        assert sum(results) == 1

    # --- dead letters ------------------------------------------------------------------

    def _dead_letter(self, **fields: Any) -> DeadLetter:
        values: dict[str, Any] = {
            "id": new_id(),
            "execution_id": new_id(),
            "agent_name": _name(),
            "routing_key": "autonomous.task.submitted",
            "payload": {"input": "héllo 🚀", "data": NESTED},
            "error_message": "provider timed out ✗",
            "attempts": 3,
            "failed_at": T0,
        }
        values.update(fields)
        return DeadLetter(**values)

    async def test_a_dead_letter_round_trips(self, store: Any) -> None:
        item = self._dead_letter()
        await store.add_dead_letter(item)
        got = await store.get_dead_letter(item.id)
        assert got == item
        _assert_utc(got.failed_at)
        assert await store.get_dead_letter(new_id()) is None

    async def test_dead_letters_are_listed_newest_first(self, store: Any) -> None:
        agent = _name()
        items = [self._dead_letter(agent_name=agent, failed_at=T0 + timedelta(seconds=i)) for i in (2, 0, 1)]
        for item in items:
            await store.add_dead_letter(item)
        listed = [item for item in await store.list_dead_letters() if item.agent_name == agent]
        assert listed == sorted(items, key=lambda item: item.failed_at, reverse=True)

    async def test_a_dead_letter_added_twice_is_kept_once(self, store: Any) -> None:
        item = self._dead_letter()
        await store.add_dead_letter(item)
        again = self._dead_letter(id=item.id, execution_id=item.execution_id, agent_name=item.agent_name,
                                  attempts=4, failed_at=T0 + timedelta(seconds=9))
        await store.add_dead_letter(again)
        assert await store.get_dead_letter(item.id) == again
        assert [i.id for i in await store.list_dead_letters()].count(item.id) == 1

    async def test_delete_dead_letter(self, store: Any) -> None:
        item = self._dead_letter()
        await store.add_dead_letter(item)
        assert await store.delete_dead_letter(item.id) is True
        assert await store.get_dead_letter(item.id) is None
        assert await store.delete_dead_letter(item.id) is False
