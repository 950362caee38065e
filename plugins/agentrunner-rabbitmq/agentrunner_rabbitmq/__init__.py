"""agentrunner-rabbitmq: the ``rabbitmq`` event bus (a durable RabbitMQ topic exchange with dead-letter queues).

Registered through the ``agentrunner`` entry point ``rabbitmq = agentrunner_rabbitmq``. aio-pika is
imported when a bus is built, not when the plugin is loaded or registered, so ``agentrunner --help`` and
platforms on other buses never import it.
"""

from __future__ import annotations

from typing import Any

import agentrunner

__all__ = ["RabbitMQEventBus", "register_event_buses"]


class _RabbitMQBusFactory:
    """Builds a ``RabbitMQEventBus`` from the settings, importing it (and aio-pika) only then."""

    name = "rabbitmq"

    def __call__(self, settings: Any) -> Any:
        from agentrunner_rabbitmq.bus import RabbitMQEventBus

        return RabbitMQEventBus(settings)


@agentrunner.hookimpl
def register_event_buses(register):
    register(_RabbitMQBusFactory())


def __getattr__(name: str) -> Any:
    if name == "RabbitMQEventBus":
        from agentrunner_rabbitmq.bus import RabbitMQEventBus

        return RabbitMQEventBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
