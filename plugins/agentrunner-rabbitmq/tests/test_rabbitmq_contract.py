"""The RabbitMQ bus passes the event-bus contract of the core, unchanged, against the real broker."""

from __future__ import annotations

import pytest

from agentrunner.testing.bus_contract import EventBusContract


class TestRabbitMQEventBus(EventBusContract):
    @pytest.fixture
    async def bus(self, broker):
        return await broker.bus()
