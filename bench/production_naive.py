"""System (b) of bench/production.py: a naive hand-written pipeline doing agentrunner's job.

    python bench/production_naive.py intake PORT      # aiohttp POST → aio-pika publish (confirmed) → await reply
    python bench/production_naive.py consumer         # consume → one asyncpg INSERT → ack → reply

The intake publishes each task (persistent, publisher confirms) to a durable queue with a
correlation id and ``reply_to`` set to its own reply queue (one per intake process), and answers
the HTTP request when the consumer's reply arrives (the RPC pattern). A consumer process takes up
to ``BENCH_PREFETCH`` tasks at once; for each it inserts one row, acks the task, then publishes the
reply. Settings come from the ``BENCH_*`` variables of production_common.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent))

from production_common import AMQP_URL, DATABASE_URL, INSERT, PREFIX, echo, serve_intake

TASK_QUEUE = f"{PREFIX}.naive.tasks"
PREFETCH = int(os.environ.get("BENCH_PREFETCH", "16"))


def intake(port: int) -> None:
    pending: dict[str, asyncio.Future] = {}
    state: dict[str, Any] = {}

    async def start(app: Any) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()  # aio-pika's default: publisher confirms on
        await channel.declare_queue(TASK_QUEUE, durable=True)
        replies = await channel.declare_queue(f"{PREFIX}.naive.replies.{os.getpid()}", exclusive=True,
                                              auto_delete=True)

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            future = pending.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(json.loads(message.body))

        await replies.consume(on_reply, no_ack=True)
        state.update(connection=connection, channel=channel, replies=replies.name)

        async def stop(app: Any) -> None:
            await connection.close()

        app.on_cleanup.append(stop)

    async def submit(execution_id: str, agent_name: str, text: Any, wait: float) -> Any:
        future = asyncio.get_running_loop().create_future()
        pending[execution_id] = future
        try:
            body = json.dumps({"execution_id": execution_id, "agent_name": agent_name, "input": text}).encode()
            await state["channel"].default_exchange.publish(
                aio_pika.Message(body, content_type="application/json", correlation_id=execution_id,
                                 reply_to=state["replies"], delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=TASK_QUEUE)
            reply = await asyncio.wait_for(future, wait)
        finally:
            pending.pop(execution_id, None)
        return reply["result"]

    serve_intake(port, submit, start)


async def consumer() -> None:
    import asyncpg

    pool = await asyncpg.create_pool(DATABASE_URL, min_size=2, max_size=PREFETCH,
                                     server_settings={"search_path": "naive"})
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.declare_queue(TASK_QUEUE, durable=True)

    async def on_task(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        task = json.loads(message.body)
        result, arguments = echo(task["execution_id"], task["agent_name"], task["input"])
        await pool.execute(INSERT, *arguments)
        await message.ack()
        if message.reply_to:
            await channel.default_exchange.publish(
                aio_pika.Message(json.dumps({"result": result}).encode(), correlation_id=message.correlation_id),
                routing_key=message.reply_to)

    await queue.consume(on_task)
    print(f"consumer {os.getpid()} ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await connection.close()
    await pool.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["intake"]:
        intake(int(sys.argv[2]))
    elif sys.argv[1:2] == ["consumer"]:
        asyncio.run(consumer())
    else:
        sys.exit(__doc__)
