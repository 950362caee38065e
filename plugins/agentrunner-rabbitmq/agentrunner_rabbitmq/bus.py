"""The ``rabbitmq`` event bus: a durable topic exchange, with publisher confirms and dead-letter queues.

- Messages are persistent and ``publish`` returns once the broker confirmed them; publishes run
  on a pool of ``RABBITMQ_POOL_SIZE`` channels: on the first until it has ``CONFIRMS_PER_CHANNEL``
  awaiting their confirmation, then on the next (RabbitMQ confirms a channel's messages together).
- A message is acknowledged only after its handler returned. A handler that raises has the
  message delivered again, counted explicitly: a copy carrying the count is put back on the
  queue and the original acknowledged, so a poison message reaches ``{queue}.dlq`` after
  ``max_deliveries`` and never loops. A ``single_active`` queue retries in place instead, so
  that no message overtakes another.
- Handlers run in tasks of the bus, not of the AMQP channel: a lost connection does not cancel
  them. The broker delivers their messages again (to this process once it has reconnected, or
  to another) and the late acknowledgement is dropped, which is at-least-once delivery.
- The connection reconnects by itself and restores channels, queues, bindings and consumers;
  meanwhile ``publish`` raises ``BusUnavailable`` within ``RABBITMQ_CONNECTION_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustExchange, AbstractRobustQueue
from aiormq.abc import DeliveredMessage

from agentrunner.interfaces import BusUnavailable, Event, EventHandler, MessageRejected
from agentrunner.records import new_id
from agentrunner.topics import validate_pattern
from agentrunner_rabbitmq.connection import (
    RECONNECT_INTERVAL,
    BrokerAddress,
    ConnectionWatch,
    WatchedConnection,
    negotiated,
    open_connection,
    server_version,
)
from agentrunner_rabbitmq.properties import Properties
from agentrunner_rabbitmq.topology import Topology

log = logging.getLogger("agentrunner.bus.rabbitmq")

#: One encoder for every message: json.dumps with options builds a new encoder per call.
_encode = json.JSONEncoder(ensure_ascii=False).encode

#: Publishes awaiting their confirmation on one channel before the next channel of the pool takes more.
CONFIRMS_PER_CHANNEL = 64
#: Deliveries of one message before a handler that keeps failing has it dead-lettered.
MAX_DELIVERIES = 5
#: Deliveries of a message that ended without an acknowledgement (a handler raised, a consumer died).
DELIVERIES_HEADER = "x-agentrunner-deliveries"
#: The routing key a message was published with, kept when a copy is put back on its queue.
ROUTING_KEY_HEADER = "x-agentrunner-routing-key"
#: Headers RabbitMQ adds (dead-lettering, quorum queues): not the publisher's.
_BROKER_HEADERS = frozenset({
    "x-death", "x-delivery-count", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
    "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
})
#: RabbitMQ honours the ``x-consumer-timeout`` queue argument from this version on.
_CONSUMER_TIMEOUT_ARGUMENT = (3, 12)
_BROKER_CONSUMER_TIMEOUT = 1_800_000
#: What talking to the broker raises when the channel or connection is gone (ChannelInvalidStateError
#: is a RuntimeError).
_AMQP_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)


class BusMisconfigured(BusUnavailable, ValueError):
    """The broker cannot work as these settings ask (the message names the variable to change).

    A ``BusUnavailable``, so start-up reports it like an unreachable broker, and a ``ValueError``:
    trying again does not help until the configuration changes.
    """


class QueueConflict(BusMisconfigured):
    """A queue or exchange exists on the broker with other arguments than these settings give it."""


class RabbitMQEventBus:
    """Topic routing through RabbitMQ, shared by every process of a deployment."""

    name = "rabbitmq"
    #: Messages travel through the broker: other processes consume them, so waiters are woken by events.
    process_local = False
    max_deliveries = MAX_DELIVERIES

    def __init__(self, settings: Any) -> None:
        self._topology = Topology(settings)
        url = settings.amqp_url
        self._url: str | None = url.get_secret_value() if url else None
        self._address = BrokerAddress(self._url, from_url=bool(settings.rabbitmq_url),
                                      management_port=settings.rabbitmq_management_port) if self._url else None
        self._timeout = float(settings.rabbitmq_connection_timeout)
        self._blocked_timeout: int = settings.rabbitmq_blocked_timeout
        self._prefetch_count: int = settings.rabbitmq_prefetch_count
        self._pool_size: int = settings.rabbitmq_pool_size
        self._watch = ConnectionWatch(settings.rabbitmq_channel_max, settings.rabbitmq_frame_max, self._on_blocked)
        #: How the broker lists this process's connection (``rabbitmqctl list_connections client_properties``).
        self.connection_name = (f"agentrunner {socket.gethostname()} pid {os.getpid()} "
                                f"exchange {self._topology.exchange} {uuid.uuid4().hex[:8]}")
        self._connection: WatchedConnection | None = None
        self._setup_channel: AbstractRobustChannel | None = None
        self._publishers: list[_Publisher] = []
        self._subscriptions: set[_Subscription] = set()
        #: cancelled subscriptions whose handlers still finish their messages, and the task closing each
        self._closing: dict[_Subscription, asyncio.Task] = {}
        self._declared: set[str] = set()  # every queue this bus declared, for operators and tests
        self._dead_letter_queues: set[str] = set()  # declared on this connection already
        self._probe_lock = asyncio.Lock()
        self._blocked_watchdog: asyncio.Task | None = None
        self._lost = False
        #: the timeout scopes of the publishes under way (see _send)
        self._attempts: set[asyncio.Timeout] = set()

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Connect, declare the exchanges and open the publisher channels."""
        if self._connection is not None:
            return
        if self._url is None or self._address is None:
            raise BusUnavailable("EVENT_BUS_BACKEND=rabbitmq needs RABBITMQ_HOST (with RABBITMQ_PORT, RABBITMQ_USER, "
                                 "RABBITMQ_PASSWORD, RABBITMQ_VHOST) or RABBITMQ_URL")
        try:
            self._topology.check()
        except ValueError as exc:
            raise BusMisconfigured(str(exc)) from None
        self._lost = False
        try:
            connection = await open_connection(self._url, name=self.connection_name, timeout=self._timeout,
                                               watch=self._watch)
        except (*_AMQP_ERRORS, OSError) as exc:
            # no exception chained: the message is the whole story, and holds no password
            raise BusUnavailable(self._address.explain(exc, timeout=self._timeout,
                                                       close_reason=self._watch.close_reason)) from None
        self._connection = connection
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        try:
            await self._open_channels(connection)
        except BaseException:
            await self.stop()
            raise
        tune = negotiated(connection)
        version = server_version(connection)
        log.info("event bus: RabbitMQ %s at %s, virtual host %r, exchange %r (channel max %s, frame max %s, "
                 "heartbeat %s s)", ".".join(map(str, version)) or "?", self._address, self._address.vhost,
                 self._topology.exchange, getattr(tune, "channel_max", "?"), getattr(tune, "frame_max", "?"),
                 getattr(tune, "heartbeat", "?"))
        if version and version < _CONSUMER_TIMEOUT_ARGUMENT and self._topology.consumer_timeout != \
                _BROKER_CONSUMER_TIMEOUT:
            log.warning("RabbitMQ %s ignores the x-consumer-timeout queue argument (3.12 and later honour it): "
                        "set consumer_timeout = %d in rabbitmq.conf to match RABBITMQ_CONSUMER_TIMEOUT",
                        ".".join(map(str, version)), self._topology.consumer_timeout)

    async def _open_channels(self, connection: WatchedConnection) -> None:
        tune = negotiated(connection)
        if tune is not None and tune.channel_max < self._pool_size + 3:
            raise BusMisconfigured(f"RABBITMQ_CHANNEL_MAX allows {tune.channel_max} channels on the connection: "
                                   f"too few for RABBITMQ_POOL_SIZE={self._pool_size} publisher channels and the "
                                   f"consumers")
        topology = self._topology
        try:
            async with asyncio.timeout(self._timeout):
                setup = connection.channel(publisher_confirms=False)
                await setup.initialize()
                self._setup_channel = setup
                await setup.declare_exchange(topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
                await setup.declare_exchange(topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT,
                                             durable=True)
                for _ in range(self._pool_size):
                    channel = connection.channel(publisher_confirms=True)
                    await channel.initialize()
                    exchange = await channel.declare_exchange(topology.exchange, aio_pika.ExchangeType.TOPIC,
                                                              durable=True)
                    self._publishers.append(_Publisher(channel, exchange))
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise QueueConflict(f"RABBITMQ_EXCHANGE: the exchange {topology.exchange!r} or "
                                f"{topology.dead_letter_exchange!r} exists with another type or durability "
                                f"({exc.args[0] if exc.args else exc}); choose another RABBITMQ_EXCHANGE "
                                f"or delete that exchange") from None
        except TimeoutError:
            raise BusUnavailable(f"RabbitMQ at {self._address} did not open the bus's channels within "
                                 f"{self._timeout:g} s (RABBITMQ_CONNECTION_TIMEOUT)") from None
        except _AMQP_ERRORS as exc:
            raise BusUnavailable(f"RabbitMQ at {self._address} refused the bus's channels or exchanges: "
                                 f"{self._describe(exc)}") from None

    async def stop(self) -> None:
        """Cancel the subscriptions (their messages go back to the broker) and close the connection."""
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        # what the platform did not drain in its grace period is abandoned: the broker delivers it again
        for subscription in list(self._closing):
            subscription.abandon()
        if self._closing:
            await asyncio.wait(list(self._closing.values()), timeout=self._timeout)
        if self._blocked_watchdog is not None:
            self._blocked_watchdog.cancel()
            self._blocked_watchdog = None
        # channels first: a channel still open when its connection closes tries to restore itself
        channels = [publisher.channel for publisher in self._publishers]
        if self._setup_channel is not None:
            channels.append(self._setup_channel)
        self._publishers.clear()
        self._setup_channel = None
        self._dead_letter_queues.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(channel.close() for channel in channels), return_exceptions=True),
                                   self._timeout)
        with contextlib.suppress(TimeoutError, *_AMQP_ERRORS, OSError):
            await asyncio.wait_for(connection.close(), self._timeout)

    async def health(self) -> None:
        """Raise ``BusUnavailable`` unless connected and allowed to publish."""
        connection = self._connection
        if connection is None or connection.is_closed:
            raise BusUnavailable("the RabbitMQ event bus is not started")
        if not connection.connected.is_set():
            raise BusUnavailable(f"the connection to RabbitMQ at {self._address} is lost; reconnecting every "
                                 f"{RECONNECT_INTERVAL:g} s")
        if self._watch.blocked:
            raise BusUnavailable(f"RabbitMQ at {self._address} blocks publishing: {self._watch.blocked_reason}")

    # --- publishing ---------------------------------------------------------------

    async def publish(self, routing_key: str, payload: Any, headers: Mapping[str, Any] | None = None, *,
                      persistent: bool = True, also: Sequence[str] = ()) -> None:
        """Publish a JSON message, persistent unless ``persistent=False`` (a notification: transient, so
        RabbitMQ never writes it to disk); returns once RabbitMQ confirmed it. ``also``: more routing keys
        for the same message, in its BCC header (RabbitMQ routes by them too, once per queue, and removes
        the header before delivery).

        Raises ``MessageRejected`` when a queue it routes to is full, ``BusUnavailable``
        when the broker cannot be reached within ``RABBITMQ_CONNECTION_TIMEOUT``.
        """
        fields = dict(headers or {})
        if also:
            fields["BCC"] = list(also)
        properties = Properties(content_type="application/json", delivery_mode=2 if persistent else 1,
                                headers=fields, message_id=new_id(), timestamp=datetime.datetime.now(datetime.UTC))
        await self._send(routing_key, _encode(payload).encode(), properties)

    async def _send(self, routing_key: str, body: bytes, properties: Properties, *, queue: str | None = None) -> None:
        """Publish to the exchange, or straight to ``queue`` (through the default exchange), confirmed.

        Straight through aiormq, with the properties as AMQP encodes them: an aio-pika ``Message``
        would only be turned into them again. ``wait=False``: the publish awaits its confirmation,
        not also the write of its frames (the confirmation comes after it anyway), so the frames of
        many publishes go out in one write and each costs a task switch fewer.

        A publish whose connection is lost before its confirmation came is published again once the
        connection is back: the broker may hold the message or not. Each attempt runs in a timeout
        scope that the loss of the connection ends at once (``_on_connection_lost``): a publish waiting
        on the lost connection — for its confirmation, or in aiormq's full write queue, which a dead
        connection never empties — would otherwise wait for ``RABBITMQ_CONNECTION_TIMEOUT``, the
        bound of all attempts together.
        """
        if not self._publishers:
            raise BusUnavailable("the RabbitMQ event bus is not started")
        publisher = self._publisher()
        channel = publisher.channel
        name = publisher.exchange.name if queue is None else ""  # "": the default exchange routes by queue name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        publisher.in_flight += 1
        try:
            while True:
                attempt = asyncio.timeout_at(deadline)
                self._attempts.add(attempt)
                underlay = None
                try:
                    async with attempt:
                        underlay = publisher.underlay
                        if underlay is None or underlay.is_closed or self._watch.blocked:
                            await self._watch.unblocked.wait()
                            await channel.ready()  # while the connection is lost: until it is back and restored
                            if channel.is_closed:
                                raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed")
                            underlay = publisher.underlay = await channel.get_underlay_channel()
                        # mandatory=False: a message no queue is bound for (a completion event nobody
                        # listens to) is dropped by RabbitMQ instead of sent back whole; the channels
                        # ignore returns anyway (on_return_raises is off), so only the round trip goes.
                        await underlay.basic_publish(body, exchange=name, routing_key=queue or routing_key,
                                                     properties=properties, mandatory=False, wait=False)
                        return
                except (aiormq.exceptions.ChannelInvalidStateError, ConnectionError):
                    # closed before anything was sent (it is being restored), or the connection went while
                    # the message was on its way or awaiting its confirmation: it goes again on the
                    # connection that replaces this one. At least once, as deliveries are (a consumer may
                    # see it twice; the store records an execution's end once).
                    publisher.underlay = None
                except TimeoutError:
                    if attempt.when() >= deadline:
                        raise
                    # cut short: the connection was lost (_on_connection_lost); try again on the next one
                    publisher.underlay = None
                except Exception as exc:
                    # aiormq fails what waits on a channel that closed without a reason with a bare Exception
                    # (its FutureStore.reject_all(None)): the connection went, as above. Anything else —
                    # DeliveryError (a full queue refused it), a channel closed by the broker's error — is raised.
                    if type(exc) is not Exception or underlay is None or not underlay.is_closed:
                        raise
                    publisher.underlay = None
                finally:
                    self._attempts.discard(attempt)
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
                if loop.time() >= deadline:
                    raise TimeoutError
        except aiormq.exceptions.DeliveryError:
            raise MessageRejected(
                f"RabbitMQ refused the message for {queue or routing_key!r}: a queue it routes to is full "
                f"(RABBITMQ_QUEUE_MAX_LENGTH={self._topology.max_length}, x-overflow reject-publish)") from None
        except TimeoutError:
            if self._watch.blocked:
                raise BusUnavailable(f"RabbitMQ at {self._address} blocks publishing "
                                     f"({self._watch.blocked_reason}): the message was not sent within "
                                     f"{self._timeout:g} s (RABBITMQ_CONNECTION_TIMEOUT)") from None
            state = "connected" if self._connected() else "the connection is lost, reconnecting"
            raise BusUnavailable(f"RabbitMQ at {self._address} did not confirm the message within "
                                 f"{self._timeout:g} s (RABBITMQ_CONNECTION_TIMEOUT; {state})") from None
        except _AMQP_ERRORS as exc:
            raise BusUnavailable(f"cannot publish to RabbitMQ at {self._address}: {self._describe(exc)}") from None
        finally:
            publisher.in_flight -= 1

    def _publisher(self) -> _Publisher:
        """The first channel of the pool with fewer than ``CONFIRMS_PER_CHANNEL`` publishes awaiting their
        confirmation (one that is closed is skipped: it is being restored), else the least busy.

        Not in turn: RabbitMQ sends the confirmations (and any deliveries) of one channel together, one
        write for all that are ready, but those of two channels apart — spreading the publishes of a
        moderate load over the pool would double the broker's system calls per message. The pool takes
        the overflow of a heavy load, and the publishes of a channel that is being restored."""
        least: _Publisher | None = None
        for publisher in self._publishers:
            full = publisher.in_flight >= CONFIRMS_PER_CHANNEL
            if full and least is not None and publisher.in_flight >= least.in_flight:
                continue  # (is_closed is asked of candidates only: aio-pika's property is not free)
            if publisher.channel.is_closed:
                continue
            if not full:
                return publisher
            least = publisher
        return least or self._publishers[0]  # all closed: the publish waits for the first to be restored

    # --- consuming ----------------------------------------------------------------

    async def subscribe(self, queue: str, patterns: Sequence[str], handler: EventHandler, *, concurrency: int = 1,
                        exclusive: bool = False, single_active: bool = False,
                        prefetch: int | None = None, auto_ack: bool = False) -> _Subscription:
        """Consume ``queue`` on a channel of its own (created and bound to ``patterns`` if missing).

        A durable queue gets its dead-letter queue first; an ``exclusive`` one expires after
        ``RABBITMQ_QUEUE_EXPIRES`` if its process dies, and is deleted when cancelled. With
        ``auto_ack`` the broker counts a message as settled once it is sent (``no_ack``): no
        acknowledgement frames, and a message whose handler fails is dropped, not delivered again.
        """
        for pattern in patterns:
            _check_pattern(queue, pattern)
        full = self._topology.queue(queue)
        connection = self._require_connection()
        consumers = len(self._subscriptions) + len(self._closing)
        in_use = 1 + len(self._publishers) + consumers + 1  # the setup channel, and one for declarations
        tune = negotiated(connection)
        if tune is not None and in_use >= tune.channel_max:
            raise BusMisconfigured(f"no channel left for queue {full!r}: RABBITMQ_CHANNEL_MAX allows "
                                   f"{tune.channel_max} on the connection, and {len(self._publishers)} publisher "
                                   f"channels (RABBITMQ_POOL_SIZE), {consumers} consumers, the setup channel and one "
                                   f"for declarations take them all")
        topology = self._topology
        arguments = topology.temporary_queue_arguments() if exclusive else topology.task_queue_arguments(
            full, single_active=single_active)
        subscription = _Subscription(self, full, handler, concurrency=1 if single_active else max(1, concurrency),
                                     exclusive=exclusive, single_active=single_active, prefetch=prefetch,
                                     auto_ack=auto_ack)
        try:
            async with asyncio.timeout(self._timeout):
                await self._declare_once(connection, full, arguments, dead_letters=not exclusive)
                if not exclusive:
                    await self._declare_dead_letter_queue(full)
                await subscription.open(connection, patterns, arguments)
        except BaseException as exc:
            await subscription.discard()
            if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
                raise QueueConflict(_conflict(full, exc)) from None
            if isinstance(exc, TimeoutError):
                raise BusUnavailable(f"RabbitMQ at {self._address} did not set up queue {full!r} within "
                                     f"{self._timeout:g} s (RABBITMQ_CONNECTION_TIMEOUT)") from None
            if isinstance(exc, _AMQP_ERRORS):
                raise BusUnavailable(f"cannot set up queue {full!r} on RabbitMQ at {self._address}: "
                                     f"{self._describe(exc)}") from None
            raise
        self._subscriptions.add(subscription)
        return subscription

    async def _declare_once(self, connection: WatchedConnection, queue: str, arguments: dict[str, Any], *,
                            dead_letters: bool) -> None:
        """Declare the queue (and its dead-letter queue) on a short-lived channel first.

        A queue that exists with other arguments closes the channel that declares it: this way
        that is a throwaway channel, not one the connection would try to restore.
        """
        async with self._raw_channel(connection) as channel:
            if dead_letters:
                name = self._topology.dead_letter_queue(queue)
                await channel.queue_declare(name, durable=True,
                                            arguments=self._topology.dead_letter_queue_arguments())
            await channel.queue_declare(queue, durable=True, arguments=arguments)

    @contextlib.asynccontextmanager
    async def _raw_channel(self, connection: WatchedConnection) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """One plain channel at a time, closed after use (aiormq's, which nothing restores)."""
        async with self._probe_lock:
            await connection.ready()
            channel = await connection.transport.connection.channel(publisher_confirms=False)
            try:
                yield channel
            finally:
                if not channel.is_closed:
                    await channel.close()

    async def _declare_dead_letter_queue(self, queue: str) -> None:
        dead_letters = self._topology.dead_letter_queue(queue)
        if dead_letters in self._dead_letter_queues or self._setup_channel is None:
            return
        declared = await self._setup_channel.declare_queue(
            dead_letters, durable=True, arguments=self._topology.dead_letter_queue_arguments())
        await declared.bind(self._topology.dead_letter_exchange, dead_letters)
        self._dead_letter_queues.add(dead_letters)
        self._declared.add(dead_letters)

    async def queue_depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not those in a consumer's hands); 0 when it does not exist."""
        full = self._topology.queue(queue)
        connection = self._require_connection()
        try:
            # a channel of its own: asking for a missing queue closes the channel that asks
            async with asyncio.timeout(self._timeout), self._raw_channel(connection) as probe:
                try:
                    declared = await probe.queue_declare(full, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return 0
                return declared.message_count or 0
        except TimeoutError:
            raise BusUnavailable(f"RabbitMQ at {self._address} did not answer within {self._timeout:g} s "
                                 f"(RABBITMQ_CONNECTION_TIMEOUT)") from None
        except _AMQP_ERRORS as exc:
            raise BusUnavailable(f"cannot read queue {full!r} on RabbitMQ at {self._address}: "
                                 f"{self._describe(exc)}") from None

    @property
    def declared_queues(self) -> frozenset[str]:
        """The queues this bus declared, by their names on the broker (dead-letter queues included)."""
        return frozenset(self._declared)

    @property
    def exchange(self) -> str:
        """The topic exchange (``RABBITMQ_EXCHANGE``); its dead-letter exchange is ``<prefix>dlq-exchange``."""
        return self._topology.exchange

    @property
    def dead_letter_exchange(self) -> str:
        return self._topology.dead_letter_exchange

    def queue_name(self, queue: str) -> str:
        """A queue's name on the broker: prefixed with ``<exchange>.`` unless the exchange is ``agentrunner``."""
        return self._topology.queue(queue)

    # --- helpers --------------------------------------------------------------------

    def _require_connection(self) -> WatchedConnection:
        if self._connection is None:
            raise BusUnavailable("the RabbitMQ event bus is not started")
        return self._connection

    def _connected(self) -> bool:
        return self._connection is not None and self._connection.connected.is_set()

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, aiormq.exceptions.ChannelInvalidStateError):
            return "the channel is closed"
        text = " ".join(str(arg) for arg in getattr(error, "args", ()) if arg) or type(error).__name__
        return self._address.scrub(text) if self._address else text

    def _on_connection_lost(self, _connection: Any, error: BaseException | None) -> None:
        if self._connection is not None:  # not a stop: publishes on the lost connection start again on the next
            now = asyncio.get_running_loop().time()
            for attempt in self._attempts:
                if not attempt.expired():  # (one that expired is ending already)
                    attempt.reschedule(now)
        if self._connection is not None and not self._lost:  # not a stop, nor a failed attempt to reconnect
            self._lost = True
            why = self._describe(error) if isinstance(error, Exception) else "closed"
            log.warning("lost the connection to RabbitMQ at %s (%s); reconnecting every %g s", self._address, why,
                        RECONNECT_INTERVAL)

    def _on_reconnected(self, _connection: Any) -> None:
        self._lost = False
        log.warning("reconnected to RabbitMQ at %s; queues, bindings and consumers are restored", self._address)

    def _on_blocked(self, reason: str | None) -> None:
        if self._blocked_watchdog is not None:
            self._blocked_watchdog.cancel()
            self._blocked_watchdog = None
        if reason is None:
            log.warning("RabbitMQ at %s lifted the block on publishing", self._address)
            return
        log.warning("RabbitMQ at %s blocks publishing (%s): a memory or disk alarm; publishes wait up to %g s "
                    "(RABBITMQ_CONNECTION_TIMEOUT)", self._address, reason, self._timeout)
        if self._blocked_timeout > 0 and self._connection is not None:
            self._blocked_watchdog = asyncio.get_running_loop().create_task(self._end_blocked_connection())

    async def _end_blocked_connection(self) -> None:
        """A connection blocked longer than ``RABBITMQ_BLOCKED_TIMEOUT`` is closed, and reconnects."""
        await asyncio.sleep(self._blocked_timeout)
        connection = self._connection
        if not self._watch.blocked or connection is None or connection.transport is None:
            return
        log.error("RabbitMQ at %s has blocked publishing for %d s (RABBITMQ_BLOCKED_TIMEOUT): reconnecting",
                  self._address, self._blocked_timeout)
        self._blocked_watchdog = None
        with contextlib.suppress(*_AMQP_ERRORS, OSError):
            await asyncio.wait_for(connection.transport.connection.close(
                ConnectionError("blocked longer than RABBITMQ_BLOCKED_TIMEOUT")), self._timeout)


class _Publisher:
    """A channel of the publisher pool, its exchange, and how many of its publishes await a confirmation."""

    __slots__ = ("channel", "exchange", "in_flight", "underlay")

    def __init__(self, channel: AbstractRobustChannel, exchange: AbstractRobustExchange) -> None:
        self.channel = channel
        self.exchange = exchange
        self.in_flight = 0
        #: the channel's aiormq channel when last seen open (aio-pika opens another after a reconnection)
        self.underlay: aiormq.abc.AbstractChannel | None = None


class _Subscription:
    """One consumer of a queue, on a channel of its own, handling up to ``concurrency`` messages at a time."""

    def __init__(self, bus: RabbitMQEventBus, queue: str, handler: EventHandler, *, concurrency: int,
                 exclusive: bool, single_active: bool, prefetch: int | None = None,
                 auto_ack: bool = False) -> None:
        self._prefetch = prefetch
        self._auto_ack = auto_ack
        self._bus = bus
        self.queue = queue
        self._handler = handler
        self._exclusive = exclusive
        self._single_active = single_active
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractRobustQueue | None = None
        self._tag: str | None = None
        self._patterns: set[str] = set()
        self._tasks: set[asyncio.Task] = set()  # one per message delivered
        self._running: set[asyncio.Task] = set()  # those past the concurrency limit, in hand
        self._cancelled = False

    async def open(self, connection: WatchedConnection, patterns: Sequence[str], arguments: dict[str, Any]) -> None:
        bus = self._bus
        topology = bus._topology
        channel = connection.channel(publisher_confirms=False)
        channel.QUEUE_CLASS = _RawRobustQueue  # its consumer gets aiormq's deliveries (see _Delivery)
        self._channel = channel
        await channel.initialize()
        if self._single_active:
            prefetch = 1
        elif self._prefetch is not None:
            prefetch = max(1, self._prefetch)  # the caller's choice (TASK_ROUTING_STRATEGY=least_busy: its slots)
        elif bus._prefetch_count == 0:
            prefetch = 0  # AMQP's "no limit"
        else:
            prefetch = max(bus._prefetch_count, self._concurrency)  # every handler slot can be busy
        await channel.set_qos(prefetch_count=prefetch)
        self._queue = await channel.declare_queue(self.queue, durable=True, arguments=arguments)
        bus._declared.add(self.queue)
        for pattern in patterns:
            await self._queue.bind(topology.exchange, pattern)
            self._patterns.add(pattern)
        self._tag = await self._queue.consume(self._on_message, no_ack=self._auto_ack)

    async def bind(self, pattern: str) -> None:
        _check_pattern(self.queue, pattern)
        await self._change_binding(pattern, bind=True)

    async def unbind(self, pattern: str) -> None:
        await self._change_binding(pattern, bind=False)

    async def _change_binding(self, pattern: str, *, bind: bool) -> None:
        if self._queue is None or self._cancelled:
            raise BusUnavailable(f"the subscription to queue {self.queue!r} is cancelled")
        bus = self._bus
        try:
            async with asyncio.timeout(bus._timeout):
                if bind:
                    await self._queue.bind(bus._topology.exchange, pattern)
                    self._patterns.add(pattern)
                else:
                    await self._queue.unbind(bus._topology.exchange, pattern)
                    self._patterns.discard(pattern)
        except TimeoutError:
            raise BusUnavailable(f"RabbitMQ at {bus._address} did not change the bindings of {self.queue!r} within "
                                 f"{bus._timeout:g} s (RABBITMQ_CONNECTION_TIMEOUT)") from None
        except _AMQP_ERRORS as exc:
            raise BusUnavailable(f"cannot change the bindings of {self.queue!r}: {bus._describe(exc)}") from None

    async def cancel(self) -> None:
        """Stop taking messages; handlers already running finish their message, the others give it back."""
        if self._cancelled:
            return
        self._cancelled = True
        bus = self._bus
        bus._subscriptions.discard(self)
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(TimeoutError, *_AMQP_ERRORS):
                await asyncio.wait_for(self._queue.cancel(self._tag), bus._timeout)
        waiting = [task for task in self._tasks if task not in self._running]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        if not self._running:
            await self._close()
            return
        if self._exclusive:  # nothing new arrives while the last messages finish
            for pattern in list(self._patterns):
                with contextlib.suppress(TimeoutError, *_AMQP_ERRORS):
                    await asyncio.wait_for(self._queue.unbind(bus._topology.exchange, pattern), bus._timeout)
        closer = asyncio.ensure_future(self._close_after(list(self._running)))
        bus._closing[self] = closer
        closer.add_done_callback(lambda _: bus._closing.pop(self, None))

    def abandon(self) -> None:
        """The bus stops: handlers still running are cancelled and their messages given back."""
        for task in list(self._running):
            task.cancel()

    async def discard(self) -> None:
        """Close what a failed ``open`` left."""
        self._cancelled = True
        if self._channel is not None:
            with contextlib.suppress(TimeoutError, *_AMQP_ERRORS):
                await asyncio.wait_for(self._channel.close(), self._bus._timeout)

    async def _close_after(self, tasks: list[asyncio.Task]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close()

    async def _close(self) -> None:
        if self._channel is None:
            return
        bus = self._bus
        with contextlib.suppress(TimeoutError, *_AMQP_ERRORS):
            async with asyncio.timeout(bus._timeout):
                if self._exclusive:
                    await self._channel.queue_delete(self.queue)
                    bus._declared.discard(self.queue)
                await self._channel.close()

    # --- one message ----------------------------------------------------------------

    def _on_message(self, message: DeliveredMessage | AbstractIncomingMessage) -> _Done:
        try:
            delivery = _Delivery.of(message, settled=self._auto_ack)
        except aiormq.exceptions.ChannelInvalidStateError:
            return _DONE  # aio-pika's message of a channel closed meanwhile: the broker has it back
        # a task of the bus: closing the AMQP channel cancels the channel's own tasks, not this one
        task = asyncio.ensure_future(self._handle(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _DONE  # the consumer's caller awaits what it returns: nothing, and not the handler's task

    async def _handle(self, message: _Delivery) -> None:
        task = asyncio.current_task()
        try:
            async with self._slots:
                self._running.add(task)  # in hand: a cancel lets it finish
                if self._cancelled:
                    await self._give_back(message)
                elif self._auto_ack:
                    await self._process_settled(message)
                elif _channel_open(message):  # else its channel closed while it waited: the broker has it back
                    await self._process(message)
        except asyncio.CancelledError:
            # stopping, not failing: the message goes back without counting a delivery (an auto_ack message
            # was settled on delivery: it is marked processed, and there is nothing to give back)
            await self._give_back(message)
            raise
        finally:
            self._running.discard(task)

    async def _process_settled(self, message: _Delivery) -> None:
        """A message of an ``auto_ack`` subscription: the broker has forgotten it, nothing to settle."""
        routing_key, headers = _routing_key_and_headers(message)
        try:
            event = Event(routing_key, json.loads(message.body), dict(headers, delivery_count=1),
                          message.message_id or "")
            await self._handler(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("queue %s: handler failed on %s (%s); the message is dropped (auto_ack)", self.queue,
                        routing_key, message.message_id, exc_info=True)

    async def _process(self, message: _Delivery) -> None:
        routing_key, headers = _routing_key_and_headers(message)
        previous = _count(headers.pop(DELIVERIES_HEADER, 0))
        if message.redelivered:
            previous += 1  # a delivery ended without an outcome: its consumer's connection or process died
        try:
            payload = json.loads(message.body)
        except ValueError:
            await self._dead_letter(message, routing_key, previous + 1, "its body is not JSON")
            return
        if previous >= self._bus.max_deliveries:
            await self._dead_letter(message, routing_key, previous + 1, "its consumers kept dying")
            return
        if message.redelivered and not self._single_active:
            await self._put_back(message, previous)  # the lost delivery is counted before trying again
            return
        deliveries = previous + 1
        while True:
            event = Event(routing_key, payload, dict(headers, delivery_count=deliveries), message.message_id or "")
            try:
                await self._handler(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                if deliveries >= self._bus.max_deliveries:
                    log.error("queue %s: handler failed on %s (%s) %d times", self.queue, routing_key,
                              message.message_id, deliveries, exc_info=True)
                    await self._dead_letter(message, routing_key, deliveries, "its handler kept failing")
                    return
                log.warning("queue %s: handler failed on %s (delivery %d of %d); delivering it again", self.queue,
                            routing_key, deliveries, self._bus.max_deliveries, exc_info=True)
                if self._single_active:  # in place: nothing may overtake it
                    deliveries += 1
                    continue
                await self._put_back(message, deliveries)
                return
            await self._settle(message.ack())
            return

    async def _put_back(self, message: _Delivery, deliveries: int) -> None:
        """Queue a copy carrying the delivery count, then acknowledge the original."""
        if not _channel_open(message):
            return  # the broker already has it back
        headers = dict(message.headers or {})
        headers.setdefault(ROUTING_KEY_HEADER, message.routing_key)
        headers[DELIVERIES_HEADER] = deliveries
        copy = Properties(headers=headers, content_type=message.content_type, delivery_mode=2,
                          message_id=message.message_id, timestamp=message.timestamp)
        try:
            await self._bus._send(message.routing_key or "", message.body, copy, queue=self.queue)
        except BusUnavailable as exc:
            log.warning("queue %s: cannot put message %s back (%s); returning it to the broker", self.queue,
                        message.message_id, exc)
            await self._settle(message.nack(requeue=True))
            return
        await self._settle(message.ack())

    async def _give_back(self, message: _Delivery) -> None:
        """Return a message nobody failed on, uncounted: in place on an ordered queue, else as a copy."""
        if message.processed or not _channel_open(message):
            return
        if self._single_active:
            await self._settle(message.nack(requeue=True))
        else:
            await self._put_back(message, _count((message.headers or {}).get(DELIVERIES_HEADER, 0)))

    async def _dead_letter(self, message: _Delivery, routing_key: str, delivery: int, why: str) -> None:
        """Reject ``message`` to its dead-letter queue at its ``delivery``-th delivery (counting this one)."""
        where = "dropped (a temporary queue has no dead-letter queue)" if self._exclusive else \
            f"dead-lettered to {self._bus._topology.dead_letter_queue(self.queue)}"
        log.error("queue %s: message %s (%s) %s at delivery %d: %s", self.queue, message.message_id,
                  routing_key, where, delivery, why)
        await self._settle(message.reject(requeue=False))

    async def _settle(self, operation: Awaitable[Any]) -> None:
        try:
            await operation
        except _AMQP_ERRORS as exc:
            log.info("queue %s: the channel closed before a message was settled (%s); RabbitMQ delivers it again",
                     self.queue, type(exc).__name__)


class _Delivery:
    """A message delivered to a subscription: what the bus reads of it, and its settlement.

    Made from aiormq's delivery as it arrives. aio-pika's ``IncomingMessage`` converts every property
    and sets each attribute through a lock check — a quarter of a delivery's CPU in a consumer — for
    nothing the bus reads; and its ``ack`` waits until the connection's writer has sent the frame.
    """

    __slots__ = ("_channel", "body", "content_type", "delivery_tag", "headers", "message_id", "processed",
                 "redelivered", "routing_key", "timestamp")

    def __init__(self, body: bytes, properties: Any, routing_key: str | None, redelivered: bool,
                 delivery_tag: int | None, channel: aiormq.abc.AbstractChannel, *, settled: bool) -> None:
        self.body = body
        self.headers: dict[str, Any] = properties.headers or {}
        self.routing_key = routing_key
        self.redelivered = bool(redelivered)
        self.message_id: str | None = properties.message_id
        self.timestamp = properties.timestamp
        self.content_type: str | None = properties.content_type
        self.delivery_tag = delivery_tag
        #: settled (acknowledged, rejected or given back), or delivered settled (auto_ack)
        self.processed = settled
        self._channel = channel

    @classmethod
    def of(cls, message: DeliveredMessage | AbstractIncomingMessage, *, settled: bool) -> _Delivery:
        if isinstance(message, DeliveredMessage):
            delivery = message.delivery
            return cls(message.body, message.header.properties, delivery.routing_key, delivery.redelivered,
                       delivery.delivery_tag, message.channel, settled=settled)
        # aio-pika consumes through its own wrapper when it restores a consumer the broker cancelled
        return cls(message.body, message.properties, message.routing_key, message.redelivered,
                   message.delivery_tag, message.channel, settled=settled)

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        if self._channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed")
        return self._channel

    def _take(self) -> bool:
        """Mark it settled before the frame is queued (a cancellation then finds it settled); False if it was."""
        if self.processed or self.delivery_tag is None:
            return False
        self.processed = True
        return True

    async def ack(self) -> None:
        """Acknowledge it, without waiting until the frame is written: it goes out with the others of this
        turn of the loop. Queuing it cannot suspend, so nothing can cancel the handler between the
        acknowledgement and its return; a connection lost before the frame is sent has the broker deliver
        the message again, as with any acknowledgement lost on the way."""
        channel = self.channel
        if self._take():
            await channel.basic_ack(delivery_tag=self.delivery_tag, wait=False)

    async def nack(self, *, requeue: bool) -> None:
        channel = self.channel
        if self._take():
            await channel.basic_nack(delivery_tag=self.delivery_tag, requeue=requeue)

    async def reject(self, *, requeue: bool) -> None:
        channel = self.channel
        if self._take():
            await channel.basic_reject(delivery_tag=self.delivery_tag, requeue=requeue)


class _Done:
    """An awaitable that is done at once (aiormq and aio-pika await what a consumer returns)."""

    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())


_DONE = _Done()


class _RawQueue(aio_pika.Queue):
    """``consume`` hands the consumer aiormq's delivery as it is, not an aio-pika ``IncomingMessage``."""

    __slots__ = ()

    async def consume(self, callback: Callable[[DeliveredMessage], Any], no_ack: bool = False,
                      exclusive: bool = False, arguments: Any = None, consumer_tag: str | None = None,
                      timeout: Any = None) -> str:
        channel = await self.channel.get_underlay_channel()
        result = await channel.basic_consume(queue=self.name, consumer_callback=callback, exclusive=exclusive,
                                             no_ack=no_ack, arguments=arguments, consumer_tag=consumer_tag,
                                             timeout=timeout)
        if result.consumer_tag is None:
            raise RuntimeError(f"RabbitMQ gave no consumer tag for queue {self.name!r}")
        return result.consumer_tag


class _RawRobustQueue(aio_pika.RobustQueue, _RawQueue):
    """aio-pika's robust queue (it declares, binds and consumes again after a reconnection), consuming raw."""

    __slots__ = ()


def _routing_key_and_headers(message: _Delivery) -> tuple[str, dict[str, Any]]:
    """The routing key it was published with (kept by a copy put back on its queue), and the publisher's
    headers without those RabbitMQ adds."""
    headers = dict(message.headers or {})
    routing_key = str(headers.pop(ROUTING_KEY_HEADER, "") or message.routing_key or "")
    for name in _BROKER_HEADERS & headers.keys():
        del headers[name]
    return routing_key, headers


def _channel_open(message: _Delivery) -> bool:
    try:
        return not message.channel.is_closed
    except aiormq.exceptions.ChannelInvalidStateError:
        return False


def _count(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _check_pattern(queue: str, pattern: str) -> None:
    problem = validate_pattern(pattern)
    if problem:
        raise ValueError(f"cannot bind queue {queue!r}: {problem}")


def _conflict(queue: str, error: BaseException) -> str:
    reason = error.args[0] if error.args else str(error)
    return (f"queue {queue!r} already exists with other arguments ({reason}). Queue arguments are fixed when a queue "
            f"is first declared: to apply new RABBITMQ_QUEUE_MAX_LENGTH, RABBITMQ_MESSAGE_TTL or "
            f"RABBITMQ_CONSUMER_TIMEOUT values to it, set a policy (rabbitmqctl set_policy) or delete the queue once "
            f"it is drained (rabbitmqctl delete_queue {queue})")
