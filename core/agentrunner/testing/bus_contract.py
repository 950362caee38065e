"""The event-bus contract: every bus backend passes these tests.

Subclass ``EventBusContract`` in a backend's tests and provide a started bus as
the fixture ``bus``. Queue names and routing keys are prefixed with a unique
word per test, so the suite can run against a shared broker.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest


async def eventually(predicate, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` is true (polling), failing after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _collector(got: dict[str, list]):
    """``collector(name)``: a handler that appends each event to ``got[name]``."""
    def collector(name):
        async def handle(event):
            got[name].append(event)
        return handle
    return collector


class EventBusContract:
    """Routing, competing consumers, redelivery, bindings, exclusivity, draining."""

    @pytest.fixture
    def prefix(self) -> str:
        return "t" + uuid.uuid4().hex[:10]

    async def test_messages_reach_every_matching_queue_once(self, bus, prefix):
        got: dict[str, list] = {"a": [], "b": [], "c": []}
        collector = _collector(got)

        await bus.subscribe(f"{prefix}.a", [f"{prefix}.order.*"], collector("a"))
        await bus.subscribe(f"{prefix}.b", [f"{prefix}.#"], collector("b"))
        await bus.subscribe(f"{prefix}.c", [f"{prefix}.invoice.*"], collector("c"))
        await bus.publish(f"{prefix}.order.created", {"id": 1, "text": "héllo"}, {"trace_id": "t-1"})
        await eventually(lambda: len(got["a"]) == 1 and len(got["b"]) == 1)
        await asyncio.sleep(0.1)
        assert got["c"] == []
        event = got["a"][0]
        assert event.routing_key == f"{prefix}.order.created"
        assert event.payload == {"id": 1, "text": "héllo"}
        assert event.headers["trace_id"] == "t-1"
        assert event.headers["delivery_count"] == 1
        assert event.message_id and event.message_id == got["b"][0].message_id

    async def test_one_message_routed_by_more_keys_reaches_each_matching_queue_once(self, bus, prefix):
        got: dict[str, list] = {"main": [], "copy": [], "both": [], "none": []}
        collector = _collector(got)

        await bus.subscribe(f"{prefix}.main", [f"{prefix}.done.*"], collector("main"))
        await bus.subscribe(f"{prefix}.copy", [f"{prefix}.reply.p1"], collector("copy"))
        await bus.subscribe(f"{prefix}.both", [f"{prefix}.#"], collector("both"))
        await bus.subscribe(f"{prefix}.none", [f"{prefix}.reply.p2"], collector("none"))
        await bus.publish(f"{prefix}.done.x", {"n": 1}, {"trace_id": "t-1"}, also=[f"{prefix}.reply.p1"])
        await eventually(lambda: all(len(got[name]) == 1 for name in ("main", "copy", "both")))
        await asyncio.sleep(0.1)
        assert got["none"] == [] and len(got["both"]) == 1  # matched by both keys, delivered once
        copy = got["copy"][0]
        assert copy.routing_key == f"{prefix}.done.x" and copy.payload == {"n": 1}
        assert copy.headers["trace_id"] == "t-1" and "BCC" not in copy.headers
        assert copy.message_id == got["main"][0].message_id

    async def test_consumers_of_one_queue_compete(self, bus, prefix):
        seen: list[int] = []

        async def handle(event):
            seen.append(event.payload)

        await bus.subscribe(f"{prefix}.work", [f"{prefix}.job"], handle, concurrency=2)
        await bus.subscribe(f"{prefix}.work", [f"{prefix}.job"], handle, concurrency=2)
        for number in range(40):
            await bus.publish(f"{prefix}.job", number)
        await eventually(lambda: len(seen) >= 40)
        await asyncio.sleep(0.1)
        assert sorted(seen) == list(range(40))

    async def test_handlers_run_concurrently_up_to_the_limit(self, bus, prefix):
        running, peak = 0, 0
        release = asyncio.Event()

        async def handle(event):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

        await bus.subscribe(f"{prefix}.pool", [f"{prefix}.job"], handle, concurrency=3)
        for number in range(5):
            await bus.publish(f"{prefix}.job", number)
        await eventually(lambda: running == 3)
        await asyncio.sleep(0.1)
        assert peak == 3
        release.set()
        await eventually(lambda: running == 0)

    async def test_a_failing_handler_gets_the_message_again_a_bounded_number_of_times(self, bus, prefix):
        deliveries: list[int] = []

        async def handle(event):
            deliveries.append(event.headers["delivery_count"])
            if len(deliveries) < 3:
                raise RuntimeError("not yet")

        await bus.subscribe(f"{prefix}.retry", [f"{prefix}.job"], handle)
        await bus.publish(f"{prefix}.job", "x")
        await eventually(lambda: len(deliveries) == 3)
        assert deliveries == [1, 2, 3]

        poison: list[int] = []

        async def always_fails(event):
            poison.append(1)
            raise RuntimeError("poison")

        await bus.subscribe(f"{prefix}.poison", [f"{prefix}.poison"], always_fails)
        await bus.publish(f"{prefix}.poison", "x")
        await eventually(lambda: len(poison) >= 2)
        await asyncio.sleep(0.5)
        assert len(poison) <= 10  # dead-lettered, not redelivered forever

    async def test_an_auto_ack_subscription_never_gets_a_message_again(self, bus, prefix):
        """Notifications: a handler that raises loses that message; the next ones still arrive, and a
        transient message (``persistent=False``) is delivered like any other."""
        seen: list = []

        async def handle(event):
            seen.append((event.payload, event.headers["delivery_count"]))
            if event.payload == "fails":
                raise RuntimeError("handler failed")

        await bus.subscribe(f"{prefix}.notes", [f"{prefix}.note"], handle, exclusive=True, auto_ack=True)
        await bus.publish(f"{prefix}.note", "fails", {"internal": True}, persistent=False)
        await eventually(lambda: len(seen) == 1)
        await bus.publish(f"{prefix}.note", "next", {"internal": True}, persistent=False)
        await eventually(lambda: len(seen) == 2)
        await asyncio.sleep(0.3)
        assert seen == [("fails", 1), ("next", 1)]
        assert await bus.queue_depth(f"{prefix}.notes") == 0

    async def test_bindings_change_while_consuming(self, bus, prefix):
        got: list[str] = []

        async def handle(event):
            got.append(event.routing_key)

        subscription = await bus.subscribe(f"{prefix}.dyn", [], handle)
        await bus.publish(f"{prefix}.one", 1)
        await subscription.bind(f"{prefix}.one")
        await bus.publish(f"{prefix}.one", 2)
        await eventually(lambda: len(got) == 1)
        await subscription.unbind(f"{prefix}.one")
        await bus.publish(f"{prefix}.one", 3)
        await asyncio.sleep(0.2)
        assert got == [f"{prefix}.one"]

    async def test_a_durable_queue_keeps_messages_while_nobody_consumes(self, bus, prefix):
        got: list = []

        async def handle(event):
            got.append(event.payload)

        subscription = await bus.subscribe(f"{prefix}.keep", [f"{prefix}.keep"], handle)
        await subscription.cancel()
        await bus.publish(f"{prefix}.keep", "while away")
        await eventually(lambda: True)
        assert await bus.queue_depth(f"{prefix}.keep") == 1
        await bus.subscribe(f"{prefix}.keep", [], handle)
        await eventually(lambda: got == ["while away"])

    async def test_an_exclusive_queue_goes_away_with_its_subscription(self, bus, prefix):
        got: list = []

        async def handle(event):
            got.append(event.payload)

        subscription = await bus.subscribe(f"{prefix}.mine", [f"{prefix}.ping"], handle, exclusive=True)
        await subscription.cancel()
        await bus.publish(f"{prefix}.ping", 1)
        await asyncio.sleep(0.1)
        assert await bus.queue_depth(f"{prefix}.mine") == 0

    async def test_cancel_lets_the_message_in_hand_finish(self, bus, prefix):
        finished: list = []
        started = asyncio.Event()

        async def handle(event):
            started.set()
            await asyncio.sleep(0.2)
            finished.append(event.payload)

        subscription = await bus.subscribe(f"{prefix}.slow", [f"{prefix}.slow"], handle)
        await bus.publish(f"{prefix}.slow", "in hand")
        await started.wait()
        await subscription.cancel()
        await eventually(lambda: finished == ["in hand"])

    async def test_health(self, bus):
        await bus.health()

    async def test_a_single_active_queue_is_handled_one_message_at_a_time_in_order(self, bus, prefix):
        seen: list[int] = []
        running = 0
        most = 0

        async def handle(event):
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.002)
            if event.payload["n"] == 3 and event.headers["delivery_count"] == 1:
                running -= 1
                raise RuntimeError("first delivery of 3 fails")  # redelivered before 4 is handled
            seen.append(event.payload["n"])
            running -= 1

        # as two processes would: two subscriptions of one queue, each asking for concurrency
        await bus.subscribe(f"{prefix}.ordered", [f"{prefix}.o"], handle, concurrency=4, single_active=True)
        await bus.subscribe(f"{prefix}.ordered", [f"{prefix}.o"], handle, concurrency=4, single_active=True)
        for n in range(20):
            await bus.publish(f"{prefix}.o", {"n": n})
        await eventually(lambda: len(seen) == 20)
        assert seen == list(range(20))
        assert most == 1

