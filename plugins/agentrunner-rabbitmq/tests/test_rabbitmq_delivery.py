"""What the RabbitMQ bus guarantees beyond the contract: persistence, explicit delivery counts, dead letters,
refusal of a full queue, expiry into the DLQ, and ordering across processes."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import pytest
from agentrunner_rabbitmq import bus as bus_module
from agentrunner_rabbitmq.bus import DELIVERIES_HEADER, MAX_DELIVERIES, ROUTING_KEY_HEADER, QueueConflict
from rabbitmq_support import broker_settings, eventually, take_all

from agentrunner.interfaces import BusUnavailable, MessageRejected


async def nothing(event):
    pass


async def test_messages_published_with_no_consumer_wait_for_one_on_another_connection(broker):
    first = await broker.bus()
    subscription = await first.subscribe("keep", ["order.*"], nothing)
    await subscription.cancel()
    await first.stop()  # the consumer process is gone altogether

    publisher = await broker.bus()
    for number in range(3):
        await publisher.publish("order.created", {"n": number}, {"trace_id": f"t-{number}"})
    # publish returned: the broker has confirmed each message, so it is in the queue already
    assert await publisher.queue_depth("keep") == 3

    got = []

    async def collect(event):
        got.append(event)

    consumer = await broker.bus()
    await consumer.subscribe("keep", [], collect)
    await eventually(lambda: len(got) == 3)
    assert sorted(event.payload["n"] for event in got) == [0, 1, 2]
    assert {event.headers["trace_id"] for event in got} == {"t-0", "t-1", "t-2"}
    assert all(event.headers["delivery_count"] == 1 for event in got)
    await eventually(lambda: True)
    assert await consumer.queue_depth("keep") == 0


async def test_messages_are_persistent_json(broker):
    bus = await broker.bus()
    subscription = await bus.subscribe("raw", ["raw.key"], nothing)
    await subscription.cancel()
    await bus.publish("raw.key", {"text": "héllo"}, {"trace_id": "t-1"})
    [message] = await take_all(bus.queue_name("raw"))
    assert message.delivery_mode == 2  # persistent: survives a broker restart in a durable queue
    assert message.content_type == "application/json"
    assert message.body.decode() == '{"text": "héllo"}'
    assert message.headers["trace_id"] == "t-1" and message.message_id
    assert message.timestamp is not None  # when it was published, for whoever reads a dead letter


async def test_a_notification_is_transient_and_its_subscription_sends_no_acknowledgements(broker):
    bus = await broker.bus()
    subscription = await bus.subscribe("raw-note", ["raw.note"], nothing)
    await subscription.cancel()
    await bus.publish("raw.note", {"done": 1}, {"internal": True}, persistent=False)
    [message] = await take_all(bus.queue_name("raw-note"))
    assert message.delivery_mode == 1  # transient: RabbitMQ never writes it to disk
    assert message.body.decode() == '{"done": 1}'

    got = []

    async def collect(event):
        got.append(event.payload)

    notes = await bus.subscribe("notes", ["note.*"], collect, exclusive=True, auto_ack=True)
    for number in range(3):
        await bus.publish("note.done", number, persistent=False)
    await eventually(lambda: len(got) == 3)
    # settled on delivery: nothing is left in the queue, and no acknowledgement went out (RabbitMQ closes a
    # channel that acknowledges a delivery tag it does not know)
    assert sorted(got) == [0, 1, 2]
    assert notes._channel is not None and not notes._channel.is_closed
    assert await bus.queue_depth("notes") == 0


async def test_a_poison_message_reaches_its_dead_letter_queue_after_max_deliveries(broker):
    bus = await broker.bus()
    counts: list[int] = []

    async def always_fails(event):
        counts.append(event.headers["delivery_count"])
        raise RuntimeError("poison")

    await bus.subscribe("poison", ["job.#"], always_fails)
    await bus.publish("job.run", {"x": 1}, {"trace_id": "t-9"})
    dead = await take_all(bus.queue_name("poison") + ".dlq")
    assert counts == list(range(1, MAX_DELIVERIES + 1))
    [letter] = dead
    assert letter.body == b'{"x": 1}'
    assert letter.headers["trace_id"] == "t-9"
    assert letter.headers[ROUTING_KEY_HEADER] == "job.run"
    assert letter.headers["x-death"][0]["reason"] == "rejected"
    assert letter.headers["x-death"][0]["queue"] == bus.queue_name("poison")
    await asyncio.sleep(0.3)
    assert counts == list(range(1, MAX_DELIVERIES + 1))  # and never again


async def test_a_redelivered_message_keeps_its_routing_key_headers_and_id(broker):
    bus = await broker.bus()
    seen = []

    async def fails_once(event):
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("not yet")

    await bus.subscribe("again", ["a.*"], fails_once)
    await bus.publish("a.b", [1, 2], {"trace_id": "t-2", "depth": 3})
    await eventually(lambda: len(seen) == 2)
    first, second = seen
    assert (second.routing_key, second.payload, second.message_id) == (first.routing_key, first.payload,
                                                                       first.message_id)
    assert second.headers == dict(first.headers, delivery_count=2)
    assert DELIVERIES_HEADER not in second.headers and ROUTING_KEY_HEADER not in second.headers


async def test_a_full_queue_refuses_the_publisher_instead_of_dropping_a_message(broker):
    bus = await broker.bus(RABBITMQ_QUEUE_MAX_LENGTH="2")
    subscription = await bus.subscribe("small", ["task.*"], nothing)
    await subscription.cancel()
    await bus.publish("task.a", 1)
    await bus.publish("task.b", 2)
    with pytest.raises(MessageRejected, match="RABBITMQ_QUEUE_MAX_LENGTH=2"):
        await bus.publish("task.c", 3)
    assert await bus.queue_depth("small") == 2
    assert [message.body for message in await take_all(bus.queue_name("small"), expect=2)] == [b"1", b"2"]


async def test_an_expired_message_is_dead_lettered_not_dropped(broker):
    bus = await broker.bus(RABBITMQ_MESSAGE_TTL="100")
    subscription = await bus.subscribe("brief", ["task.*"], nothing)
    await subscription.cancel()
    await bus.publish("task.late", {"n": 1})
    [letter] = await take_all(bus.queue_name("brief") + ".dlq")
    assert letter.body == b'{"n": 1}'
    assert letter.headers["x-death"][0]["reason"] == "expired"
    assert await bus.queue_depth("brief") == 0


async def test_many_publishes_in_flight_are_confirmed_together(broker):
    bus = await broker.bus(RABBITMQ_POOL_SIZE="3")
    subscription = await bus.subscribe("burst", ["burst"], nothing)
    await subscription.cancel()
    await asyncio.gather(*(bus.publish("burst", number) for number in range(300)))
    assert await bus.queue_depth("burst") == 300


async def test_a_message_no_queue_is_bound_for_is_confirmed_and_not_sent_back(broker):
    # A completion event nobody subscribed to is dropped by RabbitMQ; with the 'mandatory' flag it would come
    # back whole to the publisher (a wasted round trip per task), so the bus does not set it.
    bus = await broker.bus(RABBITMQ_POOL_SIZE="1")
    returned = []
    [publisher] = bus._publishers
    channel = publisher.channel
    channel.return_callbacks.add(lambda sender, message: returned.append(message))
    subscription = await bus.subscribe("bound", ["bound.key"], nothing)
    await subscription.cancel()
    for number in range(5):
        await bus.publish("nobody.listens", {"n": number})
    await bus.publish("bound.key", {"n": 5})  # confirmed after any return of the messages before it
    assert returned == []
    assert await bus.queue_depth("bound") == 1


async def test_a_handled_message_is_acknowledged_before_the_connection_closes(broker):
    # the acknowledgement is queued, not awaited until written: stopping right after the handlers return
    # still sends it ahead of the close, so nothing is delivered again to the next consumer
    bus = await broker.bus()
    handled = []

    async def handle(event):
        handled.append(event.payload["n"])

    await bus.subscribe("acked", ["acked.key"], handle, concurrency=4)
    for number in range(8):
        await bus.publish("acked.key", {"n": number})
    await eventually(lambda: len(handled) == 8)
    await bus.stop()

    again = []

    async def collect(event):
        again.append(event)

    later = await broker.bus()
    await later.subscribe("acked", [], collect)
    await asyncio.sleep(0.5)
    assert again == [] and await later.queue_depth("acked") == 0
    assert sorted(handled) == list(range(8))


async def test_a_consumer_the_broker_cancelled_is_restored_and_consumes_again(broker):
    # deleting a queue makes RabbitMQ cancel its consumer; aio-pika restores the queue and the consumer,
    # which still gets each delivery as the bus reads it (settled once, not given back twice)
    bus = await broker.bus()
    got = []

    async def collect(event):
        got.append(event.payload["n"])

    await bus.subscribe("restored", ["restored.key"], collect)
    await bus.publish("restored.key", {"n": 0})
    await eventually(lambda: got == [0])
    connection = await aio_pika.connect(broker.url, timeout=5)
    try:
        await (await connection.channel()).queue_delete(bus.queue_name("restored"))
    finally:
        await connection.close()
    number = 0
    deadline = asyncio.get_running_loop().time() + 20
    while len(got) < 2:  # what is published before the queue is declared again is routed nowhere
        assert asyncio.get_running_loop().time() < deadline, "the consumer was not restored"
        number += 1
        with contextlib.suppress(BusUnavailable):
            await bus.publish("restored.key", {"n": number})
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.3)
    assert got[0] == 0 and got[1:] == sorted(set(got[1:])) and await bus.queue_depth("restored") == 0


async def test_a_message_whose_channel_closed_before_its_handler_started_is_left_to_the_broker():
    # aio-pika's wrapper (used when it restores a consumer) hands over a message whose channel may have closed
    # meanwhile: the broker delivers it again, so no handler starts for it here
    from aiormq.abc import DeliveredMessage
    from pamqp import commands
    from pamqp.header import ContentHeader

    class ClosedChannel:
        is_closed = True

    handled = []

    async def handle(event):
        handled.append(event)

    subscription = bus_module._Subscription(bus_module.RabbitMQEventBus(broker_settings("unused")), "q", handle,
                                            concurrency=1, exclusive=False, single_active=False)
    delivered = DeliveredMessage(delivery=commands.Basic.Deliver(consumer_tag="c", delivery_tag=1, routing_key="k"),
                                 header=ContentHeader(properties=commands.Basic.Properties(), body_size=2),
                                 body=b"{}", channel=ClosedChannel())
    assert await subscription._on_message(aio_pika.IncomingMessage(delivered)) is None  # awaitable, done at once
    await asyncio.sleep(0)
    assert handled == [] and not subscription._tasks


async def published_per_channel(bus) -> list[int]:
    """How many messages each publisher channel of ``bus`` has sent (its last delivery tag)."""
    return [(await publisher.channel.get_underlay_channel()).delivery_tag for publisher in bus._publishers]


async def test_publishes_share_the_first_channel_until_it_has_its_fill_of_unconfirmed_ones(broker, monkeypatch):
    # RabbitMQ writes the confirmations of one channel together and those of two channels apart: a moderate
    # load goes over one channel, and the rest of the pool takes only what is beyond CONFIRMS_PER_CHANNEL
    bus = await broker.bus(RABBITMQ_POOL_SIZE="3")
    subscription = await bus.subscribe("spread", ["spread.key"], nothing)
    await subscription.cancel()
    await asyncio.gather(*(bus.publish("spread.key", {"n": number}) for number in range(20)))
    assert await published_per_channel(bus) == [20, 0, 0]

    monkeypatch.setattr(bus_module, "CONFIRMS_PER_CHANNEL", 4)
    await asyncio.gather(*(bus.publish("spread.key", {"n": number}) for number in range(10)))
    assert await published_per_channel(bus) == [24, 4, 2]  # all at once: four awaiting on each, then the least busy
    assert all(publisher.in_flight == 0 for publisher in bus._publishers)
    assert await bus.queue_depth("spread") == 30


async def test_a_publish_skips_a_channel_of_the_pool_that_is_closed(broker):
    bus = await broker.bus(RABBITMQ_POOL_SIZE="2")
    subscription = await bus.subscribe("skip", ["skip.key"], nothing)
    await subscription.cancel()
    first = bus._publishers[0].channel
    await first.close()  # as the broker does on a channel error; a robust channel closed by hand stays closed
    for number in range(3):
        await bus.publish("skip.key", {"n": number})
    assert bus._publishers[1].in_flight == 0
    assert (await bus._publishers[1].channel.get_underlay_channel()).delivery_tag == 3
    assert await bus.queue_depth("skip") == 3


async def test_a_single_active_queue_keeps_order_across_two_processes(broker):
    seen: list[tuple[str, int]] = []
    running = 0
    most = 0

    def handler(owner):
        async def handle(event):
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.002)
            running -= 1
            if event.payload == 7 and event.headers["delivery_count"] == 1:
                raise RuntimeError("the first delivery of 7 fails")
            seen.append((owner, event.payload))
        return handle

    one, two = await broker.bus(), await broker.bus()
    first = await one.subscribe("ordered", ["o"], handler("one"), concurrency=4, single_active=True)
    await two.subscribe("ordered", ["o"], handler("two"), concurrency=4, single_active=True)
    for number in range(15):
        await one.publish("o", number)
    await eventually(lambda: len(seen) == 15)
    assert [number for _, number in seen] == list(range(15))
    assert {owner for owner, _ in seen} == {"one"}  # the first subscriber is the active one
    await first.cancel()  # the other process takes over, where the first one stopped
    for number in range(15, 30):
        await two.publish("o", number)
    await eventually(lambda: len(seen) == 30)
    assert [number for _, number in seen] == list(range(30))
    assert {owner for owner, _ in seen[15:]} == {"two"}
    assert most == 1


async def test_an_exclusive_queue_is_deleted_once_its_last_message_is_handled(broker):
    bus = await broker.bus()
    release = asyncio.Event()
    handled = []

    async def slow(event):
        await release.wait()
        handled.append(event.payload)

    subscription = await bus.subscribe("waiters.x", ["done"], slow, exclusive=True)
    await bus.publish("done", 1)
    await eventually(lambda: bus.queue_name("waiters.x") in bus.declared_queues and len(subscription._running) == 1)
    await subscription.cancel()
    await bus.publish("done", 2)  # unbound already: not routed to the queue
    release.set()
    await eventually(lambda: handled == [1] and bus.queue_name("waiters.x") not in bus.declared_queues)
    assert await bus.queue_depth("waiters.x") == 0


async def test_queue_arguments_are_fixed_and_a_change_says_how_to_apply_it(broker):
    bus = await broker.bus(RABBITMQ_QUEUE_MAX_LENGTH="5")
    await bus.subscribe("fixed", ["f"], nothing)
    other = await broker.bus(RABBITMQ_QUEUE_MAX_LENGTH="6")
    with pytest.raises(QueueConflict) as caught:
        await other.subscribe("fixed", ["f"], nothing)
    message = str(caught.value)
    assert "x-max-length" in message and "set_policy" in message and "delete_queue" in message
    assert "RABBITMQ_QUEUE_MAX_LENGTH" in message
    await other.health()  # the failed declaration cost a channel, not the connection


async def test_an_invalid_binding_is_refused(broker):
    bus = await broker.bus()
    with pytest.raises(ValueError, match="at most 255"):
        await bus.subscribe("q", ["a" * 300], nothing)


async def test_a_payload_that_is_not_json_fails_at_the_publisher(broker):
    bus = await broker.bus()
    with pytest.raises(TypeError):
        await bus.publish("k", {"when": object()})


async def test_a_body_that_is_not_json_is_dead_lettered(broker, caplog):
    import aio_pika

    bus = await broker.bus()
    got = []

    async def collect(event):
        got.append(event)

    await bus.subscribe("strict", ["s"], collect)
    connection = await aio_pika.connect(broker.url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(bus.exchange)
        await exchange.publish(aio_pika.Message(b"not json"), "s")
    [letter] = await take_all(bus.queue_name("strict") + ".dlq")
    assert letter.body == b"not json" and got == []
    # the operator is told where it went and why, counting the delivery that found it unreadable
    assert f"dead-lettered to {bus.queue_name('strict')}.dlq at delivery 1: its body is not JSON" in caplog.text


async def test_cancel_gives_back_the_messages_not_started_without_counting_a_delivery(broker):
    bus = await broker.bus(RABBITMQ_PREFETCH_COUNT="10")
    release = asyncio.Event()
    first: list = []

    async def slow(event):
        first.append(event.payload)
        await release.wait()

    subscription = await bus.subscribe("hand", ["h"], slow, concurrency=1)
    for number in range(3):
        await bus.publish("h", number)
    await eventually(lambda: first == [0])
    await subscription.cancel()  # 1 and 2 were prefetched and waited for the handler
    await eventually(lambda: True)
    assert await bus.queue_depth("hand") == 2
    release.set()

    later: list = []

    async def collect(event):
        later.append((event.payload, event.headers["delivery_count"]))

    await bus.subscribe("hand", [], collect)
    await eventually(lambda: sorted(later) == [(1, 1), (2, 1)])
    assert first == [0]


async def test_a_stopping_process_gives_back_the_message_in_hand(broker):
    one = await broker.bus()
    started = asyncio.Event()

    async def forever(event):
        started.set()
        await asyncio.Event().wait()

    subscription = await one.subscribe("stop", ["s"], forever)
    await one.publish("s", "in hand")
    await started.wait()
    await subscription.cancel()  # the handler keeps its message while it runs …
    await one.stop()  # … until the process stops: cancelled, the message goes back uncounted

    got: list = []

    async def collect(event):
        got.append((event.payload, event.headers["delivery_count"]))

    two = await broker.bus()
    await two.subscribe("stop", [], collect)
    await eventually(lambda: got == [("in hand", 1)])
