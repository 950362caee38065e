"""Helpers of the tests: settings for the real broker, a raw AMQP peek, and ``rabbitmqctl`` on our own connections."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika

from agentrunner.settings import load_settings

RABBITMQ_URL = os.environ.get("AGENTRUNNER_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def broker_environ(exchange: str, **extra: str) -> dict[str, str]:
    """RABBITMQ_* variables (the parts, not a URL) for the test broker, with the test's own exchange."""
    parts = urlsplit(RABBITMQ_URL)
    vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"
    environ = {
        "EVENT_BUS_BACKEND": "rabbitmq",
        "RABBITMQ_HOST": parts.hostname or "127.0.0.1",
        "RABBITMQ_PORT": str(parts.port or 5672),
        "RABBITMQ_USER": unquote(parts.username or "guest"),
        "RABBITMQ_PASSWORD": unquote(parts.password or "guest"),
        "RABBITMQ_VHOST": vhost,
        "RABBITMQ_EXCHANGE": exchange,
        "RABBITMQ_CONNECTION_TIMEOUT": "5",
        "RABBITMQ_POOL_SIZE": "2",
    }
    environ.update(extra)
    return environ


def broker_settings(exchange: str, **extra: str) -> Any:
    return load_settings(environ=broker_environ(exchange, **extra), env_file=None)


async def eventually(predicate, timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` is true, failing after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def take_all(queue: str, expect: int = 1, timeout: float = 10.0) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Read (and acknowledge) at least ``expect`` messages of ``queue`` with a connection of the test's own."""
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    try:
        channel = await connection.channel()
        target = await channel.get_queue(queue, ensure=True)
        taken: list = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            message = await target.get(fail=False)
            if message is not None:
                await message.ack()
                taken.append(message)
                continue
            if len(taken) >= expect or asyncio.get_running_loop().time() > deadline:
                return taken
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


def rabbitmqctl_available() -> bool:
    return shutil.which("rabbitmqctl") is not None


async def rabbitmqctl(*args: str) -> str:
    result = await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                                     timeout=30, check=True)
    return result.stdout


async def broker_view_of(connection_name: str) -> dict[str, Any]:
    """What ``rabbitmqctl list_connections`` says of the connection with this ``connection_name``."""
    listed = json.loads(await rabbitmqctl("list_connections", "pid", "name", "timeout", "frame_max", "channel_max",
                                          "client_properties", "--formatter", "json"))
    for connection in listed:
        properties = {key: value for key, _type, value in connection["client_properties"]}
        if properties.get("connection_name") == connection_name:
            return connection
    raise AssertionError(f"no connection named {connection_name!r} on the broker")


async def prefetch_counts(connection_pid: str) -> list[int]:
    listed = json.loads(await rabbitmqctl("list_channels", "connection", "prefetch_count", "--formatter", "json"))
    return sorted(channel["prefetch_count"] for channel in listed if channel["connection"] == connection_pid)


async def close_connection_of(connection_name: str) -> None:
    """Close one connection of ours from the broker's side (as a broker restart would), no one else's."""
    peer = (await broker_view_of(connection_name))["name"]
    for line in (await rabbitmqctl("list_connections", "pid", "name")).splitlines():
        pid, _, name = line.partition("\t")
        if name.strip() == peer:
            await rabbitmqctl("close_connection", pid.strip(), "agentrunner-rabbitmq test: simulated broker restart")
            return
    raise AssertionError(f"connection {peer} went away before it could be closed")


class BrokerLink:
    """A TCP relay to the broker that a test cuts (every connection dropped, new ones refused), as an outage
    of the broker would look to the bus, and restores; the broker itself is shared and never touched."""

    def __init__(self, url: str = RABBITMQ_URL) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.cut()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            self._tasks.discard(task)
            self._writers.difference_update((writer, upstream_writer))


async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            target.write(data)
            await target.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        target.transport.abort()


async def queue_arguments(queue: str) -> dict[str, Any]:
    """The arguments RabbitMQ holds for ``queue`` (``rabbitmqctl list_queues``)."""
    listed = json.loads(await rabbitmqctl("list_queues", "name", "arguments", "durable", "--formatter", "json"))
    for entry in listed:
        if entry["name"] == queue:
            arguments = entry["arguments"]
            if isinstance(arguments, list):  # [[name, type, value], ...]
                arguments = {name: value for name, _type, value in arguments}
            return dict(arguments, durable=entry["durable"])
    raise AssertionError(f"no queue {queue!r} on the broker")
