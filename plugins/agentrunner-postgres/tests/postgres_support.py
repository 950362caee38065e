"""Helpers of the plugin's tests: databases of their own, settings, and a TCP proxy to cut the path
to the real server (outages without stopping a server other test runs share)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agentrunner.settings import Settings, load_settings

#: The server the tests use, as a URL to its maintenance database (``postgres``).
SERVER_URL = os.environ.get("AGENTRUNNER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

#: The protocol message that starts the server's answer to a statement it executes.
BIND_COMPLETE = b"2\x00\x00\x00\x04"

#: Small pools: several test runs share the server's max_connections.
POOL = {"POSTGRES_MIN_POOL_SIZE": "1", "POSTGRES_MAX_POOL_SIZE": "4", "POSTGRES_POOL_MAX_OVERFLOW": "4"}


def database_url(server_url: str, database: str, *, host: str | None = None, port: int | None = None) -> str:
    """The server's URL pointed at ``database`` (and, optionally, at another address such as a proxy)."""
    parts = urlsplit(server_url)
    netloc = parts.netloc
    if host is not None or port is not None:
        userinfo = netloc.rpartition("@")[0]
        address = f"{host or parts.hostname}:{port or parts.port or 5432}"
        netloc = f"{userinfo}@{address}" if userinfo else address
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, parts.fragment))


async def create_database(server_url: str) -> str:
    """A new empty database named ``agentrunner_test_<random>``; returns its name."""
    import asyncpg

    name = f"agentrunner_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(server_url: str, name: str) -> None:
    """Drop a test database, disconnecting whatever still uses it."""
    import asyncpg

    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def store_settings(url: str, environ: Mapping[str, str] = ()) -> Settings:
    """Settings for a store on ``url`` (DATABASE_URL) with small pools; ``environ`` adds or overrides."""
    return load_settings(environ={"DATABASE_URL": url, **POOL, **dict(environ)}, env_file=None)


def parts_settings(server_url: str, database: str, environ: Mapping[str, str] = ()) -> Settings:
    """Settings for a store on ``database`` built from the POSTGRES_* parts instead of a URL."""
    parts = urlsplit(server_url)
    values = {"POSTGRES_HOST": parts.hostname or "127.0.0.1", "POSTGRES_PORT": str(parts.port or 5432),
              "POSTGRES_DB": database, "POSTGRES_USER": parts.username or "postgres", **POOL}
    if parts.password:
        values["POSTGRES_PASSWORD"] = parts.password
    return load_settings(environ={**values, **dict(environ)}, env_file=None)


async def connect(url: str) -> Any:
    """A plain asyncpg connection of the test's own (to inspect or lock rows behind the store's back)."""
    import asyncpg

    return await asyncpg.connect(url, timeout=10)


class TcpProxy:
    """A TCP proxy in front of the real server, which a test can stop (connection refused, and the
    connections through it cut), freeze (a black hole: nothing forwarded, nothing refused), or make
    cut a connection as the server answers a statement (its outcome unknown to the client)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut_on: bytes | None = None
        self.cuts = 0

    async def start(self) -> None:
        """Listen (again) on the same port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut every open one, as a server that went down."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut_next_answer(self) -> None:
        """Cut the connection that gets the next answer to a statement instead of forwarding that answer:
        the server did the work (and committed: it sends the answer at the end of the transaction), the
        client never hears of it. An answer is what follows a Bind (BindComplete), not a Parse."""
        self._cut_on = BIND_COMPLETE

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.frozen:
            await self._pump(reader, None)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(upstream_writer)
        pair = (writer, upstream_writer)
        for task in (asyncio.create_task(self._pump(reader, upstream_writer, pair)),
                     asyncio.create_task(self._pump(upstream_reader, writer, pair, from_server=True))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None,
                    pair: tuple[asyncio.StreamWriter, ...] = (), *, from_server: bool = False) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if self.frozen or writer is None:
                    continue
                if from_server and self._cut_on is not None and self._cut_on in data:
                    self._cut_on = None
                    self.cuts += 1
                    for end in pair:
                        end.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
        for end in pair:
            end.transport.abort()
