"""The AMQP connection: where it goes, the limits this client asks for, and errors that say what to check.

aiormq answers the broker's ``Connection.Tune`` with the broker's own channel and frame
limits and keeps the connection-level frames (``Blocked``, ``Close``) to itself. AMQP lets a
client lower those limits, which is what ``RABBITMQ_CHANNEL_MAX`` / ``RABBITMQ_FRAME_MAX`` ask
for, and the bus needs to know when the broker blocks publishers and why it refused a
connection. So the connection reads its frames through ``ConnectionWatch``: it lowers the
limits in ``Tune`` as the frame arrives (aiormq then answers with them and sizes its frames by
them) and notes ``Blocked``, ``Unblocked`` and ``Close``. Nothing else is touched. Its writes go
through ``_CoalescingWriter``, which sends the frames of a few turns of the event loop together.
"""

from __future__ import annotations

import asyncio
import errno
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import aio_pika
import aiormq
from aio_pika.abc import ConnectionParameter
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL

#: Seconds between two attempts to reconnect after the connection was lost.
RECONNECT_INTERVAL = 2.0

_METHOD_FRAME = 1
_FRAME_HEADER = 7  # type (1), channel (2), payload size (4)
#: Bytes asked of the socket's buffer at a time (asyncio's StreamReader holds up to 64 KiB before pausing).
_READ_SIZE = 65536
#: Turns of the event loop the frames written from a first one wait for others before they are sent together.
#: With bench/production.py --compare (throughput run by run): 16 turns against the next turn only 1.15× with 8 %
#: less CPU per task (12 runs of 3,000 tasks); in the search before (10 runs each), 17 turns against 5 1.16×, 9 or
#: 33 turns 0.97–0.98× of 17, 65 turns 0.92× (bench/README.md, the eighth session).
HOLD_TURNS = 16
#: Seconds a held frame waits at most, however long the turns: a loop blocked by slow callbacks turn after turn
#: (a tool computing in the loop) must not multiply the delay by HOLD_TURNS. Under full load in
#: bench/production.py a frame waited 30–37 ms at the 99th percentile, 70 ms at most.
HOLD_MAX_SECONDS = 0.05
_TUNE = (10, 30)
_CLOSE = (10, 50)
_BLOCKED = (10, 60)
_UNBLOCKED = (10, 61)
_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


class ConnectionWatch:
    """The limits asked of the broker, and what it said on the connection (blocked, closed)."""

    def __init__(self, channel_max: int, frame_max: int,
                 on_blocked: Callable[[str | None], None] | None = None) -> None:
        self.channel_max = channel_max
        self.frame_max = frame_max
        #: called with the broker's reason when it blocks publishing, with None when it lifts the block
        self.on_blocked = on_blocked
        self.blocked_reason: str | None = None
        self.unblocked = asyncio.Event()
        self.unblocked.set()
        #: the reply of the broker's last ``Connection.Close`` ("530 NOT_ALLOWED - vhost x not found")
        self.close_reason: str | None = None

    @property
    def blocked(self) -> bool:
        return not self.unblocked.is_set()

    def connecting(self) -> None:
        """A new connection starts unblocked and with nothing said yet."""
        self.close_reason = None
        self._set_blocked(None)

    def connection_method(self, payload: bytes) -> bytes:
        """A method frame of channel 0 (its payload and frame end), with the Tune limits lowered."""
        if len(payload) < 4:
            return payload
        method = struct.unpack_from(">HH", payload)
        if method == _TUNE and len(payload) >= 12:
            server_channels, server_frame = struct.unpack_from(">HI", payload, 4)
            channels = min(server_channels or 65535, self.channel_max)  # 0: the broker sets no limit
            frame = min(server_frame or self.frame_max, self.frame_max)
            return payload[:4] + struct.pack(">HI", channels, frame) + payload[10:]
        if method == _BLOCKED:
            self._set_blocked(_shortstr(payload, 4) or "no reason given")
        elif method == _UNBLOCKED:
            self._set_blocked(None)
        elif method == _CLOSE and len(payload) >= 6:
            (code,) = struct.unpack_from(">H", payload, 4)
            self.close_reason = f"{code} {_shortstr(payload, 6)}"
        return payload

    def _set_blocked(self, reason: str | None) -> None:
        was_blocked = self.blocked
        self.blocked_reason = reason
        if reason is None:
            self.unblocked.set()
        else:
            self.unblocked.clear()
        if self.on_blocked is not None and (reason is not None or was_blocked):
            self.on_blocked(reason)


def _shortstr(payload: bytes, offset: int) -> str:
    if len(payload) <= offset:
        return ""
    length = payload[offset]
    return payload[offset + 1:offset + 1 + length].decode("utf-8", "replace")


class _WatchedReader:
    """The connection's stream reader, showing each method frame of channel 0 to the watch.

    aiormq reads a frame as its 7-byte header (in two reads), then its payload and frame end: three
    reads a frame, nine for a delivered message. Each is served here from what one read of the socket
    brought (all the frames that had arrived), without a pass through asyncio's ``StreamReader`` —
    whose ``readexactly`` checks its state, slices its buffer and moves the rest of it down on every call.
    """

    def __init__(self, reader: asyncio.StreamReader, watch: ConnectionWatch) -> None:
        self._reader = reader
        self._watch = watch
        self._buffer = b""
        self._offset = 0  # where the unread part of the buffer starts
        self._header = b""

    def at_eof(self) -> bool:
        return self._offset >= len(self._buffer) and self._reader.at_eof()

    async def read(self, n: int = -1) -> bytes:
        if self._offset < len(self._buffer):
            data = self._buffer[self._offset:] if n < 0 else self._buffer[self._offset:self._offset + n]
            self._offset += len(data)
            return data
        return await self._reader.read(n)

    async def readexactly(self, n: int) -> bytes:
        end = self._offset + n
        if end > len(self._buffer):
            await self._fill(n)
            end = n
        data = self._buffer[self._offset:end]
        self._offset = end
        if len(self._header) < _FRAME_HEADER:
            self._header += data
            return data
        header, self._header = self._header, b""
        if header[0] == _METHOD_FRAME and header[1:3] == b"\x00\x00":
            data = self._watch.connection_method(data)
        return data

    async def _fill(self, n: int) -> None:
        """Read until ``n`` bytes are buffered (and whatever else has arrived)."""
        chunks = [self._buffer[self._offset:]]
        buffered = len(chunks[0])
        while buffered < n:
            chunk = await self._reader.read(_READ_SIZE)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(chunks), n)
            chunks.append(chunk)
            buffered += len(chunk)
        self._buffer = b"".join(chunks)
        self._offset = 0


class _CoalescingWriter:
    """The connection's stream writer, sending what aiormq writes over a few turns of the event loop at once.

    aiormq writes every frame (a publish, an ack) with its own ``write``, and a socket with nothing
    queued sends each at once: under load, one ``send`` system call — and one TCP segment for the broker
    to read, and a wake-up of its scheduler — per frame. Here the frames written from one write until
    ``HOLD_TURNS`` turns of the loop later (or ``HOLD_MAX_SECONDS``, if that comes first) are joined and
    sent together, in the order written. An idle loop runs those turns in microseconds (nothing else is
    ready); a busy one takes longer over them (milliseconds when saturated), and the busier it is the more
    frames go in one ``send`` — a batch that grows with the load, as a group commit does. ``drain`` keeps
    the transport's flow control (it waits while the socket's buffer is above its high-water mark);
    closing sends what is pending first.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._hold, HOLD_TURNS, time.monotonic() + HOLD_MAX_SECONDS)
        self._pending.append(data)

    def _hold(self, turns: int, deadline: float) -> None:
        if turns > 1 and time.monotonic() < deadline:
            self._loop.call_soon(self._hold, turns - 1, deadline)
        else:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def write_eof(self) -> None:
        self._flush()
        self._writer.write_eof()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class _WatchingTransport(TransportFactory):
    """aiormq's TCP or TLS transport, read through a ``ConnectionWatch``, its writes coalesced."""

    def __init__(self, watch: ConnectionWatch) -> None:
        self._watch = watch

    async def create(self, url: URL, **kwargs: Any) -> tuple[Any, asyncio.StreamWriter]:
        inner = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        self._watch.connecting()
        reader, writer = await inner.create(url, **kwargs)
        return _WatchedReader(reader, self._watch), _CoalescingWriter(writer)


def _as_is(value: Any) -> Any:
    return value


class WatchedConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection (it reconnects and restores channels, queues and consumers),
    with a transport factory passed on to aiormq."""

    PARAMETERS = (*aio_pika.RobustConnection.PARAMETERS,
                  ConnectionParameter(name="transport_factory", parser=_as_is, is_kwarg=True))


async def open_connection(url: str, *, name: str, timeout: float, watch: ConnectionWatch) -> WatchedConnection:
    """Connect (the first attempt fails at once); later losses reconnect by themselves."""
    connection = WatchedConnection(URL(url), client_properties={"connection_name": name},
                                   transport_factory=_WatchingTransport(watch),
                                   reconnect_interval=str(RECONNECT_INTERVAL))
    try:
        await connection.connect(timeout=timeout)
    except BaseException:
        await connection.close()
        raise
    return connection


def negotiated(connection: aio_pika.abc.AbstractConnection) -> aiormq.spec.Connection.Tune | None:
    """The channel max, frame max and heartbeat of the connection as it is now (None while reconnecting)."""
    transport = connection.transport
    return getattr(transport.connection, "connection_tune", None) if transport is not None else None


def server_version(connection: aio_pika.abc.AbstractConnection) -> tuple[int, ...]:
    """The broker's version, e.g. ``(3, 10, 8)``; ``()`` when it did not say."""
    transport = connection.transport
    properties = (getattr(transport.connection, "server_properties", None) if transport is not None else None) or {}
    version = properties.get("version", "")
    if isinstance(version, bytes):
        version = version.decode("ascii", "replace")
    parts = []
    for part in str(version).split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


class BrokerAddress:
    """Where the bus connects, for messages: never the password."""

    def __init__(self, url: str, *, from_url: bool, management_port: int) -> None:
        parsed = URL(url)
        self.scheme = parsed.scheme
        self.host = parsed.host or "localhost"
        self.port = parsed.explicit_port or _DEFAULT_PORTS.get(parsed.scheme, 5672)
        self.user = parsed.user or "guest"
        raw = parsed.raw_path[1:] if parsed.raw_path not in ("", "/") else "/"
        self.vhost = unquote(raw) or "/"
        self._password = parsed.password or ""
        self._from_url = from_url
        self._management_port = management_port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def variables(self, *parts: str) -> str:
        """The variables to check for these parts of the address (RABBITMQ_URL when it is the source)."""
        return "RABBITMQ_URL" if self._from_url else ", ".join(f"RABBITMQ_{part}" for part in parts)

    def scrub(self, text: str) -> str:
        """``text`` without the password, should a library have put it there."""
        return text.replace(self._password, "******") if self._password else text

    def explain(self, error: BaseException, *, timeout: float, close_reason: str | None) -> str:
        """What went wrong connecting, and which variables to check."""
        where = f"RabbitMQ at {self} (virtual host {self.vhost!r})"
        if isinstance(error, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError):
            reason = self.scrub(" ".join(str(arg) for arg in error.args) or type(error).__name__).rstrip(".")
            return (f"{where} refused the login of user {self.user!r} ({self.variables('USER', 'PASSWORD')}): "
                    f"{reason}. Verify: curl -u {self.user} http://{self.host}:{self._management_port}/api/overview")
        if close_reason is not None:
            hint = self.variables("VHOST") if close_reason.startswith(("530", "403")) else self.variables(
                "HOST", "PORT", "VHOST")
            return f"{where} closed the connection ({hint}): {self.scrub(close_reason)}"
        if isinstance(error, TimeoutError):
            return (f"cannot connect to {where} ({self.variables('HOST', 'PORT')}): no answer within "
                    f"{timeout:g} s (RABBITMQ_CONNECTION_TIMEOUT)")
        reason = self.scrub(_reason(error))
        hint = self.variables("HOST", "PORT")
        if "SSL" in reason or "TLS" in reason or self.scheme == "amqps":
            hint = self.variables("HOST", "PORT", "SSL") + "; RabbitMQ's TLS port is usually 5671"
        return f"cannot connect to {where} ({hint}): {reason}"


def _reason(error: BaseException) -> str:
    args = getattr(error, "args", ())
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):  # (errno, strerror)
        return "connection refused" if args[0] == errno.ECONNREFUSED else args[1]
    text = str(error)
    return text if text else type(error).__name__
