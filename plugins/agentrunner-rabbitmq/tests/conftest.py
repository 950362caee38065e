"""Fixtures: the real RabbitMQ, an exchange of each test's own, and the removal of its queues and exchanges.

Without a reachable broker the tests are skipped, or fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

import aio_pika
import pytest
from agentrunner_rabbitmq import RabbitMQEventBus
from rabbitmq_support import RABBITMQ_URL, broker_settings


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The broker's URL, once it answered; otherwise skip (fail under CI=true) naming the service."""

    async def probe() -> None:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        host = RABBITMQ_URL.rsplit("@", 1)[-1]
        message = (f"RabbitMQ at {host} is not reachable (AGENTRUNNER_TEST_RABBITMQ_URL names another): "
                   f"{type(exc).__name__}: {exc}")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return RABBITMQ_URL


class Broker:
    """One test's corner of the broker: its exchange, its buses, and what they declared (deleted afterwards)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.exchange = f"art-{uuid.uuid4().hex[:12]}"
        self.buses: list[RabbitMQEventBus] = []
        self.queues: set[str] = set()

    def settings(self, **extra: str):
        return broker_settings(self.exchange, **extra)

    async def bus(self, **extra: str) -> RabbitMQEventBus:
        """A started bus on this test's exchange; stopped at the end of the test."""
        bus = RabbitMQEventBus(self.settings(**extra))
        self.buses.append(bus)
        await bus.start()
        return bus

    def forget(self, *queues: str) -> None:
        """Delete these broker queues too at the end (those a platform declared, for instance)."""
        self.queues.update(queues)

    async def clean(self) -> None:
        for bus in self.buses:
            self.queues.update(bus.declared_queues)
            with contextlib.suppress(Exception):
                await bus.stop()
        connection = await aio_pika.connect(self.url, timeout=5)
        try:
            channel = await connection.channel()
            for queue in sorted(self.queues):
                await channel.queue_delete(queue)
            for exchange in (self.exchange, f"{self.exchange}.dlq-exchange"):
                await channel.exchange_delete(exchange)
        finally:
            await connection.close()


@pytest.fixture
async def broker(rabbitmq_url):
    corner = Broker(rabbitmq_url)
    try:
        yield corner
    finally:
        await corner.clean()
