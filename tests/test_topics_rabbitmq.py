"""Parity of agentrunner.topics with a real RabbitMQ topic exchange.

For batches of (pattern, routing key) cases — the edge-case table of test_topics.py plus a few hundred
generated with a fixed seed — one exclusive queue is bound per pattern to a fresh auto-delete topic
exchange, every key is published once (with publisher confirms), and what each queue received is
compared, for every pattern x key pair of the batch, with ``topic_matches`` and ``TopicTrie.match``.

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest; ``AGENTRUNNER_TEST_RABBITMQ_URL`` overrides): without
it the test is skipped, or fails under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections import Counter
from typing import Any

from agentrunner.testing.pytest_plugin import service_missing
from agentrunner.topics import TopicTrie, topic_matches
from test_topics import EDGE_CASES

RABBITMQ_URL = os.environ.get("AGENTRUNNER_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
SEED = 0x70B1C
GENERATED = 320
BATCH_SIZE = 40  # cases per exchange: every pattern of a batch is checked against every key of it
WORKER_CHANNELS = 4

PATTERN_WORDS = ["", "a", "b", "*", "#"]
KEY_WORDS = ["", "a", "b", "c", "*", "#", "a*"]


def generated_cases(count: int, seed: int) -> list[tuple[str, str]]:
    """Random (pattern, key) pairs over a tiny alphabet; half of the keys are built to fit the pattern."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        words = [rng.choice(PATTERN_WORDS) for _ in range(rng.randint(0, 5))]
        if rng.random() < 0.5:
            key_words = [rng.choice(KEY_WORDS) for _ in range(rng.randint(0, 5))]
        else:  # instantiate the wildcards, then maybe spoil the key a little
            key_words = []
            for word in words:
                if word == "*":
                    key_words.append(rng.choice(KEY_WORDS))
                elif word == "#":
                    key_words.extend(rng.choice(KEY_WORDS) for _ in range(rng.randint(0, 2)))
                else:
                    key_words.append(word)
            if key_words and rng.random() < 0.3:
                key_words[rng.randrange(len(key_words))] = rng.choice(KEY_WORDS)
        cases.append((".".join(words), ".".join(key_words)))
    return cases


def all_cases() -> list[tuple[str, str]]:
    """The edge-case table first, then the generated cases."""
    return [(pattern, key) for pattern, key, _ in EDGE_CASES] + generated_cases(GENERATED, SEED)


async def connect() -> Any:
    """One connection to the broker, or skip/fail (under CI) with the reason."""
    try:
        import aio_pika
    except ImportError as exc:
        service_missing(f"RabbitMQ client library aio-pika (pip install aio-pika) is not importable: {exc!r}")
    try:
        return await asyncio.wait_for(aio_pika.connect(RABBITMQ_URL, timeout=5), 10)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        service_missing(f"RabbitMQ at {RABBITMQ_URL.split('@')[-1]} is not reachable: {exc!r}")


async def broker_routing(
    channel: Any, workers: list[Any], patterns: list[str], keys: list[str]
) -> dict[str, list[str]]:
    """Bind a queue per pattern on a fresh exchange, publish every key; return the keys each pattern got.

    ``channel`` (with publisher confirms) owns the exchange and publishes; queues are declared, bound,
    drained and deleted through the ``workers`` channels of the same connection, concurrently.
    """
    import aio_pika
    from pamqp.commands import Basic

    exchange = await channel.declare_exchange(
        f"agentrunner-test-topics-{uuid.uuid4().hex}", aio_pika.ExchangeType.TOPIC, durable=False, auto_delete=True
    )
    shares = [patterns[n :: len(workers)] for n in range(len(workers))]
    queues: dict[str, Any] = {}
    received: dict[str, list[str]] = {}

    async def bind(worker: Any, share: list[str]) -> None:
        for pattern in share:
            queue = queues[pattern] = await worker.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange.name, routing_key=pattern)

    async def drain(share: list[str]) -> None:
        for pattern in share:
            got = received[pattern] = []
            while (message := await queues[pattern].get(no_ack=True, fail=False)) is not None:
                got.append(message.body.decode())

    async def delete(share: list[str]) -> None:
        for pattern in share:
            if pattern in queues:
                await queues[pattern].delete(if_unused=False, if_empty=False)

    try:
        await asyncio.gather(*(bind(worker, share) for worker, share in zip(workers, shares, strict=True)))
        # Each publish returns once the broker confirmed it, i.e. after it was routed and enqueued
        # everywhere it goes (a nack raises), so after this nothing is still on its way to a queue.
        # Not mandatory: a key no pattern matches is simply dropped, not returned.
        confirms = await asyncio.gather(
            *(exchange.publish(aio_pika.Message(body=key.encode()), routing_key=key, mandatory=False) for key in keys)
        )
        assert all(isinstance(confirm, Basic.Ack) for confirm in confirms), confirms
        await asyncio.gather(*(drain(share) for share in shares))
        return received
    finally:
        await exchange.delete()  # first, or the auto-delete exchange vanishes with its last queue
        await asyncio.gather(*(delete(share) for share in shares))


async def test_topic_matching_parity_with_rabbitmq() -> None:
    cases = all_cases()
    mismatches: list[str] = []
    checked = matched = 0
    connection = await connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        workers = [await connection.channel(publisher_confirms=False) for _ in range(WORKER_CHANNELS)]
        for start in range(0, len(cases), BATCH_SIZE):
            batch = cases[start : start + BATCH_SIZE]
            patterns = sorted({pattern for pattern, _ in batch})
            keys = sorted({key for _, key in batch})
            received = await broker_routing(channel, workers, patterns, keys)

            trie = TopicTrie()
            for pattern in patterns:
                trie.add(pattern, pattern)
            trie_result = {key: trie.match(key) for key in keys}
            for pattern in patterns:
                counts = Counter(received[pattern])
                duplicated = sorted(key for key, n in counts.items() if n > 1)
                if duplicated:
                    mismatches.append(f"pattern {pattern!r} received {duplicated!r} more than once")
                for key in keys:
                    broker = key in counts
                    ours = topic_matches(pattern, key)
                    in_trie = pattern in trie_result[key]
                    checked += 1
                    matched += broker
                    if not broker == ours == in_trie:
                        mismatches.append(
                            f"pattern {pattern!r} key {key!r}: RabbitMQ={broker} topic_matches={ours} trie={in_trie}"
                        )
    print(f"{len(cases)} cases, {checked} pattern x key pairs checked, {matched} routed by RabbitMQ")
    assert checked >= len(cases) and 0 < matched < checked
    assert not mismatches, f"{len(mismatches)} of {checked} pairs differ:\n" + "\n".join(mismatches[:50])
