"""The in-memory event bus passes the event-bus contract, plus what only it promises."""

from __future__ import annotations

import pytest

from agentrunner.default_plugins.memory_bus import MAX_DELIVERIES, MemoryEventBus
from agentrunner.testing.bus_contract import EventBusContract, eventually


@pytest.fixture
async def bus():
    bus = MemoryEventBus()
    await bus.start()
    yield bus
    await bus.stop()


class TestMemoryEventBus(EventBusContract):
    pass


async def test_a_poison_message_is_dead_lettered_after_max_deliveries(bus):
    calls = []

    async def always_fails(event):
        calls.append(event.headers["delivery_count"])
        raise RuntimeError("poison")

    await bus.subscribe("poison", ["p"], always_fails)
    await bus.publish("p", {"x": 1})
    await eventually(lambda: len(bus.dead_letters) == 1)
    assert calls == list(range(1, MAX_DELIVERIES + 1))
    assert bus.dead_letters[0].payload == {"x": 1}


async def test_a_payload_that_is_not_json_fails_at_the_publisher(bus):
    async def handle(event):
        pass

    await bus.subscribe("q", ["k"], handle)
    with pytest.raises(TypeError):
        await bus.publish("k", {"when": object()})


async def test_an_invalid_binding_is_refused(bus):
    async def handle(event):
        pass

    with pytest.raises(ValueError, match="at most 255"):
        await bus.subscribe("q", ["a" * 300], handle)


async def test_health_fails_when_stopped():
    bus = MemoryEventBus()
    with pytest.raises(ConnectionError):
        await bus.health()
