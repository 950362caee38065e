"""System (c) of bench/production.py: the stack a user would build instead — aiohttp + Celery 5.

    celery -A production_celery worker --pool=prefork --concurrency=2   # with bench/ on PYTHONPATH
    python bench/production_celery.py intake PORT

The intake calls ``record.apply_async`` on RabbitMQ (in a thread: Celery's client is synchronous)
and waits for the result with ``AsyncResult.get`` (in a thread too) from the Redis result backend;
the HTTP request is answered when the worker has written the row and stored the result.

The worker writes the row with asyncpg (psycopg is not installed here): each prefork child opens
one connection, and one event loop to drive it, when it starts (``worker_process_init``).

Celery settings are its defaults except: ``task_acks_late`` (ack after the row is written, as (b)
and agentrunner do), JSON only, remote control and events off (no pidbox or event exchanges on
the shared broker), and this run's queue/exchange names and Redis key prefix.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from celery import Celery, signals

sys.path.insert(0, str(Path(__file__).resolve().parent))

from production_common import AMQP_URL, DATABASE_URL, INSERT, PREFIX, REDIS_URL, echo, serve_intake

QUEUE = f"{PREFIX}.celery"

app = Celery("production_celery", broker=AMQP_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    result_expires=3600,
    result_backend_transport_options={"global_keyprefix": f"{PREFIX}:"},
    broker_connection_retry_on_startup=True,
)

_child: dict[str, Any] = {}


@signals.worker_process_init.connect
def _open_connection(**_: Any) -> None:
    import asyncpg

    loop = asyncio.new_event_loop()
    _child["loop"] = loop
    _child["db"] = loop.run_until_complete(asyncpg.connect(DATABASE_URL, server_settings={"search_path": "celery"}))


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    print("bench worker ready", flush=True)  # production.py waits for this line


@signals.worker_process_shutdown.connect
def _close_connection(**_: Any) -> None:
    if "db" in _child:
        _child["loop"].run_until_complete(_child.pop("db").close())


@app.task(name="bench.record")
def record(execution_id: str, agent_name: str, text: Any) -> Any:
    """Echo the input and write the execution's row; the return value is the task's result."""
    result, arguments = echo(execution_id, agent_name, text)
    _child["loop"].run_until_complete(_child["db"].execute(INSERT, *arguments))
    return result


def intake(port: int, threads: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    async def start(web_app: Any) -> None:
        # every request in flight holds a thread in AsyncResult.get: enough threads for all of them
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(threads))

    async def submit(execution_id: str, agent_name: str, text: Any, wait: float) -> Any:
        result = await asyncio.to_thread(record.apply_async, (execution_id, agent_name, text), task_id=execution_id)
        return await asyncio.to_thread(result.get, timeout=wait)

    serve_intake(port, submit, start)


if __name__ == "__main__":
    if sys.argv[1:2] != ["intake"]:
        sys.exit(__doc__)
    intake(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 64)
