"""The in-memory event bus: a topic exchange inside one process.

Routing follows RabbitMQ's topic exchange exactly (``agentrunner.topics``):
each published message is copied to every queue with a matching binding, and
the consumers of one queue compete for its messages. Payloads are serialised
to JSON on publish, so what a consumer receives is what another bus would
deliver, and a routed payload that is not JSON-able fails at the publisher.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import agentrunner
from agentrunner.interfaces import Event
from agentrunner.records import new_id
from agentrunner.topics import TopicTrie, validate_pattern

log = logging.getLogger("agentrunner.bus.memory")

#: One encoder for every message: json.dumps with options builds a new encoder per call.
_encode = json.JSONEncoder(ensure_ascii=False).encode

#: Routing keys whose queues are remembered (events may bring any number of keys: forget them all then).
ROUTES_KEPT = 1024
#: Deliveries of one message before a handler that keeps failing has it dead-lettered.
MAX_DELIVERIES = 5


_Message = tuple[str, str, dict[str, Any], str, int]  # routing key, body, headers, message id, deliveries


class _Queue:
    """Messages waiting for a consumer, dealt to the subscriptions in turn as RabbitMQ deals them to
    competing consumers: the next subscription that has room in hand (its ``prefetch``) gets the next
    message. A single-active queue delivers only to its oldest subscription."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backlog: collections.deque[_Message] = collections.deque()
        self.patterns: set[str] = set()
        self.consumers: list[_Subscription] = []
        #: messages handed to a subscription and not finished, a cancelled subscription's included
        self.in_hand = 0
        self._turn = 0

    @property
    def subscriptions(self) -> int:
        return len(self.consumers)

    def put(self, message: _Message, *, first: bool = False) -> None:
        if first:
            self.backlog.appendleft(message)
        else:
            self.backlog.append(message)
        self.deal()

    def deal(self) -> None:
        """Hand waiting messages to subscriptions with room, in turn."""
        backlog, consumers = self.backlog, self.consumers
        while backlog and consumers:
            if consumers[0].single_active:
                # one at a time, also while a cancelled subscription finishes its last message
                if self.in_hand or not consumers[0].has_room():
                    return
                consumers[0].hand(backlog.popleft())
                continue
            count = len(consumers)
            for step in range(count):
                consumer = consumers[(self._turn + step) % count]
                if consumer.has_room():
                    self._turn = (self._turn + step + 1) % count
                    consumer.hand(backlog.popleft())
                    break
            else:
                return  # every subscription has its hands full: the rest waits here

    def depth(self) -> int:
        return len(self.backlog) + sum(consumer.inbox.qsize() for consumer in self.consumers)


class _Subscription:
    """A group of consumer tasks on one queue, holding at most ``prefetch`` messages in hand (handed
    to it and not yet finished); ``None`` takes every message dealt to it."""

    def __init__(self, bus: MemoryEventBus, queue: _Queue, handler: Any, concurrency: int, exclusive: bool,
                 single_active: bool = False, prefetch: int | None = None, auto_ack: bool = False) -> None:
        self._bus = bus
        self._auto_ack = auto_ack
        self._queue = queue
        self._handler = handler
        self._exclusive = exclusive
        self.single_active = single_active
        self._prefetch = 1 if single_active else prefetch
        self._closed = False
        self.inbox: asyncio.Queue[_Message] = asyncio.Queue()
        self._in_hand = 0
        self._idle: dict[asyncio.Task, bool] = {}
        for _ in range(1 if single_active else max(1, concurrency)):
            task = asyncio.ensure_future(self._consume())
            self._idle[task] = True
        queue.consumers.append(self)
        queue.deal()

    def has_room(self) -> bool:
        return not self._closed and (self._prefetch is None or self._in_hand < self._prefetch)

    def hand(self, message: _Message) -> None:
        self._in_hand += 1
        self._queue.in_hand += 1
        self.inbox.put_nowait(message)

    async def bind(self, pattern: str) -> None:
        self._bus._bind(self._queue, pattern)

    async def unbind(self, pattern: str) -> None:
        self._bus._unbind(self._queue, pattern)

    async def cancel(self) -> None:
        """Stop taking messages; handlers already running finish their message, and the messages in
        hand not yet started go back to the queue, in order, for the other subscriptions."""
        if self._closed:
            return
        self._closed = True
        waiting = [task for task, idle in self._idle.items() if idle]
        for task in waiting:
            task.cancel()
        # busy consumers end after their current message: waiting for them here could wait forever
        await asyncio.gather(*waiting, return_exceptions=True)
        queue = self._queue
        queue.consumers.remove(self)
        returned = []
        while not self.inbox.empty():
            returned.append(self.inbox.get_nowait())
        self._in_hand -= len(returned)
        queue.in_hand -= len(returned)
        queue.backlog.extendleft(reversed(returned))
        queue.deal()
        self._bus._subscriptions.remove(self)
        if self._exclusive:
            self._bus._delete_queue(queue)

    async def _consume(self) -> None:
        while not self._closed:
            await self._take_one()

    async def _take_one(self) -> None:
        task = asyncio.current_task()
        queue = self._queue
        routing_key, body, headers, message_id, deliveries = await self.inbox.get()
        self._idle[task] = False
        try:
            while True:
                event = Event(routing_key, json.loads(body), dict(headers, delivery_count=deliveries + 1), message_id)
                try:
                    await self._handler(event)
                    return
                except asyncio.CancelledError:
                    # stopped mid-message (the process is stopping): keep the message for another consumer,
                    # unless it was settled on delivery
                    if not self._auto_ack:
                        queue.put((routing_key, body, headers, message_id, deliveries), first=True)
                    raise
                except Exception:
                    if self._auto_ack:  # settled when it was delivered: not delivered again
                        log.warning("queue %s: handler failed on %s (%s); the message is dropped (auto_ack)",
                                    queue.name, routing_key, message_id, exc_info=True)
                        return
                    deliveries += 1
                    if deliveries >= MAX_DELIVERIES:
                        log.error("queue %s: message %s (%s) failed %d deliveries; dead-lettered", queue.name,
                                  message_id, routing_key, deliveries, exc_info=True)
                        self._bus.dead_letters.append(event)
                        return
                    log.warning("queue %s: handler failed on %s; delivering it again", queue.name, routing_key,
                                exc_info=True)
                    if not self.single_active:  # to the back of the queue; an ordered one retries it first
                        queue.put((routing_key, body, headers, message_id, deliveries))
                        return
        finally:
            self._idle[task] = True
            self._in_hand -= 1
            queue.in_hand -= 1
            queue.deal()


class MemoryEventBus:
    """Topic routing between the components of one process (the embedded default)."""

    name = "memory"
    #: Messages never leave this process: whoever waits for an execution here also runs it.
    process_local = True

    def __init__(self, settings: Any = None) -> None:
        self._queues: dict[str, _Queue] = {}
        self._trie = TopicTrie()
        #: routing key → the queues it reaches, until a binding changes (the same few keys come again and again)
        self._routes: dict[str, Any] = {}
        self._started = False
        self._subscriptions: list[_Subscription] = []
        #: messages whose handler kept failing (the bus-level dead letters)
        self.dead_letters: list[Event] = []

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        self._started = False

    async def health(self) -> None:
        if not self._started:
            raise ConnectionError("the in-memory event bus is not started")

    async def publish(self, routing_key: str, payload: Any, headers: Mapping[str, Any] | None = None, *,
                      persistent: bool = True, also: Sequence[str] = ()) -> None:
        """(``persistent`` changes nothing here: every message of this bus ends with its process.)"""
        targets = self._targets(routing_key)
        if also:
            targets = targets.union(*map(self._targets, also))
        if not targets:
            return  # unroutable, as on a topic exchange: dropped (and never serialised)
        body = _encode(payload)
        message_id = new_id()
        for queue_name in targets:
            self._queues[queue_name].put((routing_key, body, dict(headers or {}), message_id, 0))

    def _targets(self, routing_key: str) -> set[str]:
        """The queues whose bindings match ``routing_key`` (remembered until the bindings change)."""
        targets = self._routes.get(routing_key)
        if targets is None:
            if len(self._routes) >= ROUTES_KEPT:
                self._routes.clear()
            targets = self._routes[routing_key] = self._trie.match(routing_key)
        return targets

    async def subscribe(self, queue: str, patterns: Sequence[str], handler: Any, *, concurrency: int = 1,
                        exclusive: bool = False, single_active: bool = False,
                        prefetch: int | None = None, auto_ack: bool = False) -> _Subscription:
        """Messages are dealt to the subscriptions of a queue in turn, each holding at most ``prefetch``
        in hand (``None``: no limit, every subscription gets its turn however busy it is)."""
        target = self._queues.get(queue)
        if target is None:
            target = self._queues[queue] = _Queue(queue)
        for pattern in patterns:
            self._bind(target, pattern)
        subscription = _Subscription(self, target, handler, concurrency, exclusive, single_active, prefetch,
                                     auto_ack)
        self._subscriptions.append(subscription)
        return subscription

    async def queue_depth(self, queue: str) -> int:
        target = self._queues.get(queue)
        return target.depth() if target else 0

    def _bind(self, queue: _Queue, pattern: str) -> None:
        problem = validate_pattern(pattern)
        if problem:
            raise ValueError(f"cannot bind queue {queue.name!r}: {problem}")
        queue.patterns.add(pattern)
        self._trie.add(pattern, queue.name)
        self._routes.clear()

    def _unbind(self, queue: _Queue, pattern: str) -> None:
        queue.patterns.discard(pattern)
        self._trie.remove(pattern, queue.name)
        self._routes.clear()

    def _delete_queue(self, queue: _Queue) -> None:
        for pattern in list(queue.patterns):
            self._unbind(queue, pattern)
        self._queues.pop(queue.name, None)


@agentrunner.hookimpl
def register_event_buses(register):
    register(MemoryEventBus)
