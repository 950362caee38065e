"""The connection: settings that reach it, recovery when the broker drops it, and errors that say what to check.

Connections are dropped from the broker's side with ``rabbitmqctl close_connection``, one of our own at
a time (found by its connection name), as a broker restart would drop them; the shared broker itself is
never restarted.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time

import pytest
from agentrunner_rabbitmq import RabbitMQEventBus
from agentrunner_rabbitmq.bus import BusMisconfigured, QueueConflict
from agentrunner_rabbitmq.connection import (
    HOLD_MAX_SECONDS,
    HOLD_TURNS,
    ConnectionWatch,
    _CoalescingWriter,
    negotiated,
    server_version,
)
from rabbitmq_support import (
    BrokerLink,
    broker_settings,
    broker_view_of,
    close_connection_of,
    eventually,
    prefetch_counts,
    queue_arguments,
    rabbitmqctl_available,
)

from agentrunner.interfaces import BusUnavailable
from agentrunner.settings import load_settings

CANARY = "canary-Pw-7f3a9"

needs_rabbitmqctl = pytest.mark.skipif(not rabbitmqctl_available(),
                                       reason="rabbitmqctl is needed to close a connection from the broker's side")


@needs_rabbitmqctl
async def test_connection_settings_reach_the_broker(broker):
    bus = await broker.bus(RABBITMQ_HEARTBEAT="17", RABBITMQ_FRAME_MAX="65536", RABBITMQ_CHANNEL_MAX="100",
                           RABBITMQ_PREFETCH_COUNT="7", RABBITMQ_POOL_SIZE="3")
    await bus.subscribe("tuned", ["t"], handle_nothing, concurrency=2)
    await bus.subscribe("tuned.wide", ["w"], handle_nothing, concurrency=12)
    await bus.subscribe("tuned.ordered", ["o"], handle_nothing, concurrency=4, single_active=True)
    tune = negotiated(bus._connection)
    assert (tune.heartbeat, tune.frame_max, tune.channel_max) == (17, 65536, 100)
    seen = await broker_view_of(bus.connection_name)
    assert (seen["timeout"], seen["frame_max"], seen["channel_max"]) == (17, 65536, 100)
    # setup and publisher channels take no prefetch; consumers take RABBITMQ_PREFETCH_COUNT, at least their
    # concurrency, and 1 on a single-active queue
    assert await prefetch_counts(seen["pid"]) == [0, 0, 0, 0, 1, 7, 12]


async def test_while_the_broker_is_unreachable_publish_fails_in_time_and_then_everything_recovers(broker):
    link = BrokerLink()
    await link.start()
    try:
        bus = await broker.bus(RABBITMQ_PORT=str(link.port), RABBITMQ_CONNECTION_TIMEOUT="1")
        got: list = []

        async def collect(event):
            got.append(event.payload)

        await bus.subscribe("survivor", ["s.*"], collect, concurrency=2)
        await bus.subscribe("waiters.p1", ["s.*"], collect, exclusive=True)
        await bus.publish("s.before", "before")
        await eventually(lambda: got.count("before") == 2)

        await link.cut()  # the broker goes away
        await eventually(lambda: not bus._connected(), timeout=5)
        with pytest.raises(BusUnavailable, match="reconnecting"):
            await bus.health()
        started = time.monotonic()
        with pytest.raises(BusUnavailable, match=r"within 1 s \(RABBITMQ_CONNECTION_TIMEOUT; the connection is lost"):
            await bus.publish("s.during", "during")
        assert time.monotonic() - started < 2  # bounded by RABBITMQ_CONNECTION_TIMEOUT: never hangs
        with pytest.raises(BusUnavailable):
            await bus.queue_depth("survivor")

        await link.start()  # the broker is back
        await eventually(bus._connected, timeout=15)
        # channels, queues, bindings and consumers come back by themselves
        await eventually_published(bus, "s.after", "after")
        await bus.health()
        await eventually(lambda: got.count("after") == 2)
        assert "during" not in got
        await bus.stop()
    finally:
        await link.close()


async def test_publishes_whose_connection_drops_before_their_confirmation_go_again_once_it_is_back(broker):
    """The broker may or may not have a message whose confirmation was lost with the connection: it is
    published again on the next connection (at least once) instead of being reported as not sent."""
    link = BrokerLink()
    await link.start()
    try:
        bus = await broker.bus(RABBITMQ_PORT=str(link.port), RABBITMQ_CONNECTION_TIMEOUT="20")
        got: set = set()

        async def collect(event):
            got.add(event.payload)

        await bus.subscribe("again", ["again.*"], collect, concurrency=8)
        confirmed: list[int] = []
        numbers = iter(range(1_000_000))
        cutting = asyncio.Event()

        async def publisher() -> None:
            while not cutting.is_set() or len(confirmed) < 2000:
                number = next(numbers)
                await bus.publish("again.n", number)  # raises BusUnavailable if a lost confirmation is given up
                confirmed.append(number)

        publishers = [asyncio.ensure_future(publisher()) for _ in range(32)]
        await eventually(lambda: len(confirmed) > 300)
        await link.cut()  # the broker goes away with publishes awaiting their confirmation
        cutting.set()
        await asyncio.sleep(0.5)
        await link.start()
        await asyncio.wait_for(asyncio.gather(*publishers), 30)
        await eventually(lambda: got >= set(confirmed), timeout=15)
        await bus.stop()
    finally:
        await link.close()


@needs_rabbitmqctl
async def test_the_bus_recovers_after_the_broker_closes_its_connection(broker):
    bus = await broker.bus()
    got: list = []

    async def collect(event):
        got.append(event.payload)

    await bus.subscribe("survivor", ["s.*"], collect, concurrency=2)
    await bus.subscribe("waiters.p2", ["s.*"], collect, exclusive=True)
    await bus.publish("s.before", "before")  # the publisher's channel is known from now on
    await eventually(lambda: got.count("before") == 2)
    before = (await broker_view_of(bus.connection_name))["pid"]

    await close_connection_of(bus.connection_name)
    await eventually(lambda: bus._connected() and bus._connection.transport is not None, timeout=15)
    await eventually_published(bus, "s.after", "after")  # on the channel opened since, not the one it knew
    await eventually(lambda: got.count("after") == 2)
    assert (await broker_view_of(bus.connection_name))["pid"] != before  # a new connection, same name
    await bus.health()


async def eventually_published(bus, routing_key, payload, timeout: float = 10.0) -> None:
    """Publish once the restored channels take it (they reopen right after the connection)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await bus.publish(routing_key, payload)
            return
        except BusUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@needs_rabbitmqctl
async def test_a_message_whose_consumer_lost_its_connection_is_redelivered_to_another_process(broker):
    one, two = await broker.bus(), await broker.bus()
    started = asyncio.Event()
    release = asyncio.Event()
    first_hands: list = []
    second_hands: list = []

    async def stuck(event):
        first_hands.append(event.headers["delivery_count"])
        started.set()
        await release.wait()

    async def handle(event):
        second_hands.append((event.payload, event.headers["delivery_count"]))

    await one.subscribe("work", ["job"], stuck)
    await one.publish("job", "the task")
    await started.wait()
    await two.subscribe("work", ["job"], handle)

    await close_connection_of(one.connection_name)  # the first process's consumer dies mid-message
    await eventually(lambda: second_hands == [("the task", 2)])
    release.set()  # the first handler finishing late changes nothing: its acknowledgement is dropped
    await asyncio.sleep(0.3)
    assert first_hands == [1]
    assert second_hands == [("the task", 2)]
    assert await two.queue_depth("work") == 0


async def test_a_refused_login_names_the_variables_and_never_the_password(broker, caplog):
    caplog.set_level(logging.DEBUG)
    bus = RabbitMQEventBus(broker_settings(broker.exchange, RABBITMQ_PASSWORD=CANARY,
                                           RABBITMQ_MANAGEMENT_PORT="15999"))
    with pytest.raises(BusUnavailable) as caught:
        await bus.start()
    message = str(caught.value)
    assert "refused the login of user 'guest'" in message
    assert "(RABBITMQ_USER, RABBITMQ_PASSWORD)" in message
    assert ":15999/api/overview" in message
    assert CANARY not in message and CANARY not in caplog.text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_a_refused_connection_names_host_and_port(broker, caplog):
    caplog.set_level(logging.DEBUG)
    bus = RabbitMQEventBus(broker_settings(broker.exchange, RABBITMQ_HOST="127.0.0.1", RABBITMQ_PORT="1",
                                           RABBITMQ_PASSWORD=CANARY))
    with pytest.raises(BusUnavailable) as caught:
        await bus.start()
    assert str(caught.value) == ("cannot connect to RabbitMQ at 127.0.0.1:1 (virtual host '/') "
                                 "(RABBITMQ_HOST, RABBITMQ_PORT): connection refused")
    assert CANARY not in caplog.text


async def test_with_a_url_the_error_names_the_url_without_its_password(broker, caplog):
    caplog.set_level(logging.DEBUG)
    settings = load_settings(environ={"RABBITMQ_URL": f"amqp://someone:{CANARY}@127.0.0.1:1/prod",
                                      "RABBITMQ_EXCHANGE": broker.exchange}, env_file=None)
    bus = RabbitMQEventBus(settings)
    with pytest.raises(BusUnavailable) as caught:
        await bus.start()
    message = str(caught.value)
    assert "127.0.0.1:1 (virtual host 'prod') (RABBITMQ_URL)" in message
    assert CANARY not in message and CANARY not in caplog.text


async def test_an_unknown_virtual_host_is_named(broker):
    bus = RabbitMQEventBus(broker_settings(broker.exchange, RABBITMQ_VHOST="no-such-vhost-art"))
    with pytest.raises(BusUnavailable) as caught:
        await bus.start()
    message = str(caught.value)
    assert "(RABBITMQ_VHOST)" in message and "530" in message and "no-such-vhost-art" in message


async def test_a_silent_broker_times_out_within_the_connection_timeout(broker):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts the TCP connection, never speaks AMQP
    try:
        port = listener.getsockname()[1]
        bus = RabbitMQEventBus(broker_settings(broker.exchange, RABBITMQ_PORT=str(port),
                                               RABBITMQ_CONNECTION_TIMEOUT="0.5"))
        started = time.monotonic()
        with pytest.raises(BusUnavailable, match=r"no answer within 0.5 s \(RABBITMQ_CONNECTION_TIMEOUT\)"):
            await bus.start()
        assert time.monotonic() - started < 3
    finally:
        listener.close()


async def test_without_a_host_start_says_what_to_set():
    bus = RabbitMQEventBus(load_settings(environ={"EVENT_BUS_BACKEND": "rabbitmq"}, env_file=None))
    with pytest.raises(BusUnavailable, match=r"RABBITMQ_HOST .* or RABBITMQ_URL"):
        await bus.start()
    with pytest.raises(BusUnavailable, match="not started"):
        await bus.health()


async def test_too_few_channels_for_the_pool_is_a_clear_error(broker):
    bus = RabbitMQEventBus(broker_settings(broker.exchange, RABBITMQ_CHANNEL_MAX="4", RABBITMQ_POOL_SIZE="3"))
    with pytest.raises(BusMisconfigured, match="RABBITMQ_CHANNEL_MAX allows 4 channels"):
        await bus.start()
    assert bus._connection is None


async def test_the_channel_limit_is_checked_before_a_subscription_would_break_the_connection(broker):
    bus = await broker.bus(RABBITMQ_CHANNEL_MAX="5", RABBITMQ_POOL_SIZE="2")
    await bus.subscribe("c1", ["c"], handle_nothing)
    with pytest.raises(BusMisconfigured, match="RABBITMQ_CHANNEL_MAX allows 5 on the connection"):
        await bus.subscribe("c2", ["c"], handle_nothing)
    await bus.health()
    await bus.publish("c", 1)


async def test_stop_then_start_again(broker):
    bus = await broker.bus()
    await bus.stop()
    await bus.stop()
    with pytest.raises(BusUnavailable):
        await bus.publish("x", 1)
    await bus.start()
    await bus.health()
    await bus.publish("x", 1)


def test_queue_names_are_prefixed_unless_the_exchange_is_the_default():
    default = RabbitMQEventBus(load_settings(environ={"RABBITMQ_HOST": "localhost"}, env_file=None))
    assert (default.exchange, default.queue_name("agentrunner.tasks.autonomous")) == (
        "agentrunner", "agentrunner.tasks.autonomous")
    assert default.dead_letter_exchange == "dlq-exchange"
    own = RabbitMQEventBus(broker_settings("staging"))
    assert own.queue_name("agentrunner.tasks.autonomous") == "staging.agentrunner.tasks.autonomous"
    assert own.dead_letter_exchange == "staging.dlq-exchange"
    with pytest.raises(ValueError, match="must be 1 to 251 bytes"):
        own.queue_name("q" * 250)


def tune_frame(channel_max: int, frame_max: int, heartbeat: int) -> bytes:
    return struct.pack(">HHHIH", 10, 30, channel_max, frame_max, heartbeat) + b"\xce"


def test_the_client_lowers_the_limits_the_broker_offers():
    watch = ConnectionWatch(channel_max=100, frame_max=65536)
    assert watch.connection_method(tune_frame(2047, 131072, 60)) == tune_frame(100, 65536, 60)
    assert watch.connection_method(tune_frame(0, 0, 60)) == tune_frame(100, 65536, 60)  # 0: the broker sets none
    assert watch.connection_method(tune_frame(50, 8192, 0)) == tune_frame(50, 8192, 0)  # never raises them


def test_the_watch_follows_blocked_unblocked_and_close():
    changes: list = []
    watch = ConnectionWatch(channel_max=10, frame_max=8192, on_blocked=changes.append)
    reason = b"low on memory"
    watch.connection_method(struct.pack(">HHB", 10, 60, len(reason)) + reason + b"\xce")
    assert watch.blocked and watch.blocked_reason == "low on memory"
    watch.connection_method(struct.pack(">HH", 10, 61) + b"\xce")
    assert not watch.blocked and changes == ["low on memory", None]
    text = b"NOT_ALLOWED - vhost x not found"
    watch.connection_method(struct.pack(">HHHB", 10, 50, 530, len(text)) + text + struct.pack(">HH", 0, 0) + b"\xce")
    assert watch.close_reason == "530 NOT_ALLOWED - vhost x not found"
    watch.connecting()
    assert watch.close_reason is None and not watch.blocked


class RecordingWriter:
    """A stream writer that keeps what it is given, one entry per ``write``."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    async def drain(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.writes.append(b"<eof>")

    def close(self) -> None:
        self.closed = True


async def turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_frames_written_within_a_few_turns_of_the_loop_go_out_in_one_send_in_order(monkeypatch):
    import agentrunner_rabbitmq.connection

    # turns only: a pause of this test's process (a busy CI machine) must not end the wait early
    monkeypatch.setattr(agentrunner_rabbitmq.connection, "HOLD_MAX_SECONDS", 3600.0)
    inner = RecordingWriter()
    writer = _CoalescingWriter(inner)
    for frame in (b"publish-1", b"ack-7"):
        writer.write(frame)
        await writer.drain()  # aiormq drains after a frame whose sender waits: that must not send it alone
    assert inner.writes == []  # still this turn
    await turns(HOLD_TURNS - 2)
    writer.write(b"publish-2")  # a later turn, before the frames go out: it joins them
    assert inner.writes == []
    await turns(2)
    assert inner.writes == [b"publish-1ack-7publish-2"]
    writer.write(b"heartbeat")  # alone: it goes out as many turns after it was written
    await turns(HOLD_TURNS - 1)
    assert inner.writes[1:] == []
    await turns(1)
    assert inner.writes[1:] == [b"heartbeat"]
    writer.write(b"close-ok")
    assert writer.can_write_eof()  # the rest is the inner writer's
    writer.write_eof()  # closing sends what is pending first
    writer.close()
    assert inner.writes[2:] == [b"close-ok", b"<eof>"] and inner.closed
    await asyncio.sleep(0)
    assert inner.writes[2:] == [b"close-ok", b"<eof>"]  # nothing twice


async def test_frames_held_while_the_loop_is_blocked_go_out_after_the_longest_wait_not_after_every_turn():
    inner = RecordingWriter()
    writer = _CoalescingWriter(inner)
    writer.write(b"publish-1")
    # a callback computing in the loop: the first turn of the wait outlasts the longest wait
    asyncio.get_running_loop().call_soon(time.sleep, HOLD_MAX_SECONDS * 1.2)
    await turns(2)
    assert inner.writes == [b"publish-1"]  # not HOLD_TURNS such turns later


async def handle_nothing(event):
    pass


def blocked_frame(reason: bytes) -> bytes:
    return struct.pack(">HHB", 10, 60, len(reason)) + reason + b"\xce"


async def test_while_the_broker_blocks_publishers_publish_fails_in_time_and_health_says_why(broker):
    # the frame RabbitMQ sends on a memory or disk alarm, as the connection's reader hands it over
    bus = await broker.bus(RABBITMQ_CONNECTION_TIMEOUT="0.5", RABBITMQ_BLOCKED_TIMEOUT="0")
    bus._watch.connection_method(blocked_frame(b"low on memory"))
    with pytest.raises(BusUnavailable, match="blocks publishing: low on memory"):
        await bus.health()
    started = time.monotonic()
    with pytest.raises(BusUnavailable, match=r"blocks publishing \(low on memory\).*RABBITMQ_CONNECTION_TIMEOUT"):
        await bus.publish("x", 1)
    assert time.monotonic() - started < 1.5
    bus._watch.connection_method(struct.pack(">HH", 10, 61) + b"\xce")
    await bus.health()
    await bus.publish("x", 1)


async def test_a_connection_blocked_longer_than_the_blocked_timeout_is_replaced(broker, caplog):
    bus = await broker.bus(RABBITMQ_BLOCKED_TIMEOUT="1")
    got: list = []

    async def collect(event):
        got.append(event.payload)

    await bus.subscribe("blocked", ["b"], collect)
    first = bus._connection.transport.connection
    bus._watch.connection_method(blocked_frame(b"disk alarm"))
    await eventually(lambda: bus._connection.transport is not None and bus._connection.transport.connection
                     is not first and bus._connected(), timeout=10)
    assert not bus._watch.blocked  # a new connection starts unblocked
    assert "RABBITMQ_BLOCKED_TIMEOUT" in caplog.text
    await eventually_published(bus, "b", "after")
    await eventually(lambda: got == ["after"])


async def test_tls_against_a_plain_port_names_the_tls_setting(broker):
    settings = broker_settings(broker.exchange, RABBITMQ_SSL="true", RABBITMQ_PASSWORD=CANARY)
    bus = RabbitMQEventBus(settings)
    with pytest.raises(BusUnavailable) as caught:
        await bus.start()
    message = str(caught.value)
    assert message.startswith(f"cannot connect to RabbitMQ at {settings.rabbitmq_host}:{settings.rabbitmq_port}")
    assert "RABBITMQ_SSL" in message and "5671" in message and CANARY not in message


@needs_rabbitmqctl
async def test_queue_arguments_as_the_broker_holds_them(broker):
    bus = await broker.bus(RABBITMQ_QUEUE_MAX_LENGTH="321", RABBITMQ_MESSAGE_TTL="654000",
                           RABBITMQ_QUEUE_EXPIRES="98000", RABBITMQ_CONSUMER_TIMEOUT="7200000")
    await bus.subscribe("agentrunner.tasks.autonomous", ["autonomous.task.*"], handle_nothing)
    await bus.subscribe("agentrunner.tasks.ordered", ["ordered.task.*"], handle_nothing, single_active=True)
    await bus.subscribe("agentrunner.waiters.p3", ["agent.execution.*"], handle_nothing, exclusive=True)
    tasks = bus.queue_name("agentrunner.tasks.autonomous")
    assert await queue_arguments(tasks) == {
        "x-dead-letter-exchange": f"{broker.exchange}.dlq-exchange", "x-dead-letter-routing-key": f"{tasks}.dlq",
        "x-max-length": 321, "x-overflow": "reject-publish", "x-message-ttl": 654000,
        "x-consumer-timeout": 7200000, "durable": True}
    assert (await queue_arguments(bus.queue_name("agentrunner.tasks.ordered")))["x-single-active-consumer"] is True
    assert await queue_arguments(f"{tasks}.dlq") == {"x-message-ttl": 604800000, "durable": True}
    assert await queue_arguments(bus.queue_name("agentrunner.waiters.p3")) == {
        "x-expires": 98000, "x-message-ttl": 654000, "x-consumer-timeout": 7200000, "durable": True}


async def test_an_old_broker_is_said_to_ignore_the_consumer_timeout_argument(broker, caplog):
    bus = await broker.bus(RABBITMQ_CONSUMER_TIMEOUT="7200000")
    version = server_version(bus._connection)
    if version >= (3, 12):
        assert "x-consumer-timeout" not in caplog.text
    else:
        assert "set consumer_timeout = 7200000 in rabbitmq.conf" in caplog.text


async def test_an_exchange_name_rabbitmq_reserves_is_refused_naming_the_variable(broker):
    bus = RabbitMQEventBus(broker_settings("amq.mine"))
    with pytest.raises(BusMisconfigured, match=r"RABBITMQ_EXCHANGE='amq\.mine'"):
        await bus.start()


async def test_an_exchange_of_another_type_is_a_conflict_naming_the_variable(broker):
    import aio_pika

    connection = await aio_pika.connect(broker.url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(broker.exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    bus = RabbitMQEventBus(broker.settings())
    with pytest.raises(QueueConflict, match="RABBITMQ_EXCHANGE: the exchange"):
        await bus.start()
    assert bus._connection is None
