"""Names and arguments of the exchanges and queues, decided once: when a queue is first declared.

RabbitMQ refuses to declare an existing queue with other arguments (``PRECONDITION_FAILED -
inequivalent arg``), so a later change of ``RABBITMQ_QUEUE_MAX_LENGTH``, ``RABBITMQ_MESSAGE_TTL``
or ``RABBITMQ_QUEUE_EXPIRES`` reaches an existing queue only through a policy or by deleting it.
"""

from __future__ import annotations

from typing import Any

DEFAULT_EXCHANGE = "agentrunner"
DEAD_LETTER_EXCHANGE = "dlq-exchange"
#: How long a dead letter stays in ``{queue}.dlq``: the reference's 7 days.
DEAD_LETTER_TTL = 604_800_000
#: Queue and exchange names are AMQP short strings.
MAX_NAME_BYTES = 255
_DLQ_SUFFIX = ".dlq"


class Topology:
    """The exchange, the queue names (prefixed unless the exchange is the default) and queue arguments."""

    def __init__(self, settings: Any) -> None:
        self.exchange: str = settings.rabbitmq_exchange
        #: Deployments (and test runs) sharing a virtual host never mix queues.
        self.prefix = "" if self.exchange == DEFAULT_EXCHANGE else f"{self.exchange}."
        self.dead_letter_exchange = self.prefix + DEAD_LETTER_EXCHANGE
        self.max_length: int = settings.rabbitmq_queue_max_length
        self.message_ttl: int = settings.rabbitmq_message_ttl
        self.queue_expires: int = settings.rabbitmq_queue_expires
        self.consumer_timeout: int = settings.rabbitmq_consumer_timeout

    def check(self) -> None:
        """Refuse an exchange name RabbitMQ would refuse, naming the variable."""
        if not self.exchange:
            raise ValueError("RABBITMQ_EXCHANGE must not be empty (the default is 'agentrunner')")
        if self.exchange.startswith("amq."):
            raise ValueError(f"RABBITMQ_EXCHANGE={self.exchange!r}: names starting with 'amq.' belong to RabbitMQ")
        if len(self.dead_letter_exchange.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"RABBITMQ_EXCHANGE is too long: exchange names hold at most {MAX_NAME_BYTES} bytes")

    def queue(self, name: str) -> str:
        """The queue's name on the broker; its dead-letter queue's name must fit too."""
        full = self.prefix + name
        if not name or len(full.encode()) + len(_DLQ_SUFFIX) > MAX_NAME_BYTES:
            raise ValueError(f"queue name {full!r} must be 1 to {MAX_NAME_BYTES - len(_DLQ_SUFFIX)} bytes "
                             f"(its dead-letter queue adds {_DLQ_SUFFIX!r})")
        return full

    @staticmethod
    def dead_letter_queue(queue: str) -> str:
        return queue + _DLQ_SUFFIX

    def task_queue_arguments(self, queue: str, *, single_active: bool) -> dict[str, Any]:
        """A durable queue of tasks or events: bounded, and nothing leaves it except to its dead-letter queue.

        A full queue refuses new messages (the publisher hears it) rather than dropping old
        ones; an expired or dead message goes to ``{queue}.dlq``. ``x-consumer-timeout`` is
        honoured from RabbitMQ 3.12 on (older brokers apply their ``consumer_timeout``).
        """
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.dead_letter_queue(queue),
            "x-max-length": self.max_length,
            "x-overflow": "reject-publish",
            "x-message-ttl": self.message_ttl,
            "x-consumer-timeout": self.consumer_timeout,
        }
        if single_active:
            arguments["x-single-active-consumer"] = True
        return arguments

    def temporary_queue_arguments(self) -> dict[str, Any]:
        """A queue of one subscription (a process's waiters): it outlives a reconnection, not its owner.

        Left behind by a process that died, it is deleted after ``RABBITMQ_QUEUE_EXPIRES``
        without consumers. Its messages are notifications: stale ones expire without a dead letter.
        """
        return {"x-expires": self.queue_expires, "x-message-ttl": self.message_ttl,
                "x-consumer-timeout": self.consumer_timeout}

    @staticmethod
    def dead_letter_queue_arguments() -> dict[str, Any]:
        return {"x-message-ttl": DEAD_LETTER_TTL}
