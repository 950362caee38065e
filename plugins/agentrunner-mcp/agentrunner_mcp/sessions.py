"""Live MCP sessions, pooled: one per distinct server, each owned by a background task.

The SDK's transports are anyio context managers that must be entered and exited by
the same task, so a session cannot belong to whichever execution happened to open it.
Each ``Connection`` therefore runs in its own long-lived task that enters the
transport and the ``ClientSession``, initializes it, then waits to be told to stop;
executions call ``list_tools`` / ``call_tool`` on the session from their own tasks.

A session that turns out to be gone (the server restarted or went away, the stdio
process exited, a streamable-HTTP server forgot the session, a remote server refused
the credentials) is dropped and replaced once per operation; a second failure is the
tool's error. Messages and logs name the server by ``Server.where`` and are scrubbed
of its secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from agentrunner.interfaces import ToolError
from agentrunner.tool_auth import AuthError, ToolAuth
from agentrunner_mcp.redaction import REDACTOR
from agentrunner_mcp.servers import SSE, STDIO, Server
from agentrunner_mcp.stderr import StderrRelay

if TYPE_CHECKING:
    import aiohttp
    from mcp.client.session import ClientSession

log = logging.getLogger("agentrunner.tools.mcp")

T = TypeVar("T")

#: seconds an SSE stream may stay silent before the transport gives up on it (servers send pings)
SSE_READ_TIMEOUT = 300.0
#: seconds a session has to shut down (stdio: the SDK's stdin-close, SIGTERM, SIGKILL ladder) before it is cancelled
CLOSE_GRACE = 10.0
#: HTTP answers that mean the session or its credentials are no longer good
AUTH_REFUSED = 401
SESSION_UNKNOWN = 404


class ConnectFailed(Exception):
    """A new session could not be established; ``reason`` is safe to show, ``status`` the HTTP refusal if any."""

    def __init__(self, reason: str, status: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def describe(exc: BaseException | None) -> str:
    """A short account of a transport failure (the first of a group); callers scrub it of secrets."""
    from httpx2 import HTTPStatusError
    from mcp.shared.exceptions import MCPError

    if exc is None:
        return "the session ended"
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, HTTPStatusError):  # its text holds the full URL, query string included
        return _status_reason(exc.response.status_code)
    if isinstance(exc, MCPError):
        return exc.message or f"MCP error {exc.code}"
    if isinstance(exc, AuthError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return str(exc) or "no answer in time"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _status_reason(status: int) -> str:
    if status == AUTH_REFUSED:
        return "HTTP 401: the server refused the credentials"
    if status == SESSION_UNKNOWN:
        return "HTTP 404: the server does not know the session (or the URL)"
    return f"HTTP {status}"


class Connection:
    """One live MCP session to one server, owned by the background task that entered its transport."""

    def __init__(self, server: Server, headers: Callable[[], Awaitable[dict[str, str]]],
                 connect_timeout: float) -> None:
        self.server = server
        self.session: ClientSession | None = None
        #: the server's tool listing, cached for as long as this session lives
        self.tools: list[Any] | None = None
        #: why the session ended or could not start
        self.failure: BaseException | None = None
        #: a 401 or 404 seen on this session's HTTP traffic: the session or its credentials are gone
        self.refused_status: int | None = None
        self.closed = False
        self._headers = headers
        self._header_values: tuple[str, ...] = ()
        self._connect_timeout = connect_timeout
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._timed_out = False
        self._stderr: StderrRelay | None = None

    def start(self) -> None:
        """Start the background task; ``wait_ready`` tells when the session can be used."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._serve(), name=f"mcp session {self.server.where}")
        self._deadline = loop.call_later(self._connect_timeout, self._connect_expired)

    async def wait_ready(self) -> ClientSession:
        """The initialized session, or ``ConnectFailed`` saying why there is none."""
        await self._ready.wait()
        if self.session is None or self.closed:
            if self.refused_status:
                reason = _status_reason(self.refused_status)
            elif self.failure is None and self._stop.is_set():
                reason = "the session was closed while connecting"
            else:
                reason = describe(self.failure)
            raise ConnectFailed(self.scrub(reason), self.refused_status)
        return self.session

    def lost(self, exc: BaseException) -> str | None:
        """Why this session is gone, when ``exc`` says so; None when ``exc`` is the server's own answer."""
        import anyio
        import httpx2
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST

        if isinstance(exc, ToolError):  # our own verdict (a timeout), not the transport's
            return None
        if self.refused_status == AUTH_REFUSED:
            return _status_reason(AUTH_REFUSED)
        if self.refused_status == SESSION_UNKNOWN and (self.closed or (isinstance(exc, MCPError)
                                                       and exc.code in (CONNECTION_CLOSED, INVALID_REQUEST))):
            return "the server no longer knows the session (it restarted or expired it)"
        if self.closed:
            return self.scrub(describe(self.failure))
        if isinstance(exc, MCPError):
            return "the connection closed" if exc.code == CONNECTION_CLOSED else None
        if isinstance(exc, TimeoutError):  # an OSError, but a slow answer, not a lost session
            return None
        if isinstance(exc, anyio.ClosedResourceError | anyio.BrokenResourceError | anyio.EndOfStream | OSError
                      | httpx2.TransportError):
            return self.scrub(describe(exc))
        return None

    def scrub(self, text: str) -> str:
        return self.server.scrub(text, self._header_values)

    async def close(self) -> None:
        """Stop the session: its task leaves the ClientSession and the transport (a stdio child exits)."""
        self._stop.set()
        task = self._task
        if task is None:
            return
        if not self._ready.is_set():
            task.cancel()  # still connecting: nothing waits for the stop event yet
        _, pending = await asyncio.wait({task}, timeout=CLOSE_GRACE)
        if pending:
            log.warning("MCP session to %s did not shut down within %g s; cancelling it", self.server.where,
                        CLOSE_GRACE)
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_GRACE)

    def _connect_expired(self) -> None:
        if not self._ready.is_set() and self._task is not None:
            self._timed_out = True
            self._task.cancel()

    async def _serve(self) -> None:
        from mcp.client.session import ClientSession

        if self.server.transport != STDIO:  # httpx2 and the HTTP transports log URLs and exceptions about them
            REDACTOR.install()
            REDACTOR.register(self.server.secrets)
        try:
            async with contextlib.AsyncExitStack() as stack:
                transport = await self._transport(stack)
                read, write = await stack.enter_async_context(transport)
                if self._stderr is not None:
                    self._stderr.spawned()
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                if self._deadline is not None:
                    self._deadline.cancel()
                self.session = session
                self._ready.set()
                log.debug("MCP session to %s is open", self.server.where)
                await self._stop.wait()
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            self.failure = TimeoutError(f"no answer within {self._connect_timeout:g} s")
        except Exception as exc:  # any failure ends this session; callers read it from ``failure``
            self.failure = exc
            log.debug("MCP session to %s ended: %s", self.server.where, self.scrub(describe(exc)))
        finally:
            self.closed = True
            if self._deadline is not None:
                self._deadline.cancel()
            if self.server.transport != STDIO:
                REDACTOR.unregister((*self.server.secrets, *self._header_values))
            self._ready.set()

    async def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        """The SDK transport context manager for this server (an HTTP client it needs joins ``stack``)."""
        server = self.server
        if server.transport == STDIO:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            # The SDK starts the child with its default environment (PATH, HOME, …) plus ``env``.
            parameters = StdioServerParameters(command=server.command, args=list(server.args),
                                               env=dict(server.env) or None)
            self._stderr = StderrRelay(server.where, self.scrub)
            errlog = await self._stderr.open()
            stack.push_async_callback(self._stderr.aclose)  # after the transport has stopped the child
            return stdio_client(parameters, errlog=errlog)

        import httpx2

        headers = {**server.headers, **await self._headers()}
        self._header_values = tuple(value for value in headers.values() if value not in self.server.secrets)
        REDACTOR.register(self._header_values)
        hooks = {"response": [self._observe]}
        if server.transport == SSE:
            from mcp.client.sse import sse_client

            def client_factory(headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
                               auth: httpx2.Auth | None = None) -> httpx2.AsyncClient:
                return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, event_hooks=hooks)

            return sse_client(server.url, headers=headers, timeout=self._connect_timeout,
                              sse_read_timeout=SSE_READ_TIMEOUT, httpx_client_factory=client_factory)

        from mcp.client.streamable_http import streamable_http_client

        client = httpx2.AsyncClient(headers=headers, event_hooks=hooks,
                                    timeout=httpx2.Timeout(self._connect_timeout, read=SSE_READ_TIMEOUT))
        await stack.enter_async_context(client)  # the SDK closes only the clients it creates itself
        return streamable_http_client(server.url, http_client=client)

    async def _observe(self, response: Any) -> None:
        """Note a refusal (401) or a forgotten session (404), which the SDK reports only as plain MCP errors
        (or, over SSE, only in a log line while the request waits forever), and end the session: its
        pending requests then fail at once and the callers reconnect."""
        if response.status_code in (AUTH_REFUSED, SESSION_UNKNOWN):
            self.refused_status = response.status_code
            if self.session is not None:
                self._stop.set()


class SessionPool:
    """The live sessions of one event loop, one per server key, and the HTTP session for OAuth2 tokens."""

    def __init__(self, auth: ToolAuth, connect_timeout: float) -> None:
        self._auth = auth
        self._connect_timeout = connect_timeout
        self._connections: dict[tuple, Connection] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def connections(self) -> list[Connection]:
        """The sessions currently pooled (live or being established)."""
        return list(self._connections.values())

    async def run(self, server: Server, operation: Callable[[Connection], Awaitable[T]]) -> T:
        """``operation`` on the server's session; a session found gone is replaced and the operation retried once."""
        retried = False
        while True:
            try:
                connection = await self._connection(server)
            except ConnectFailed as failed:
                if failed.status == AUTH_REFUSED and _oauth2(server.auth) and not retried:
                    log.info("MCP server %s refused the OAuth2 token; fetching a new one", server.where)
                    self._auth.invalidate(server.auth)
                    retried = True
                    continue
                raise ToolError(f"MCP server {server.where} is unreachable: {failed.reason}") from None
            try:
                return await operation(connection)
            except Exception as exc:
                reason = connection.lost(exc)
                if reason is None:
                    raise
                self._drop(connection)
                if retried:
                    raise ToolError(f"MCP server {server.where} is unreachable: {reason}") from None
                if connection.refused_status == AUTH_REFUSED:
                    self._auth.invalidate(server.auth)
                log.info("MCP session to %s is gone (%s); reconnecting", server.where, reason)
                retried = True

    async def aclose(self) -> None:
        """Stop every session and close the HTTP session; returns when their tasks have ended."""
        self._closed = True  # an operation still running must not open a session nobody would close
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(connection.close() for connection in connections), *self._closing)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _connection(self, server: Server) -> Connection:
        if self._closed:
            raise ConnectFailed("the platform is shutting down", None)
        connection = self._connections.get(server.key)
        if connection is None or connection.closed:
            connection = Connection(server, lambda: self._auth_headers(server),
                                    max(server.timeout, self._connect_timeout))
            self._connections[server.key] = connection
            connection.start()
        try:
            await connection.wait_ready()
        except ConnectFailed:
            self._drop(connection)
            raise
        return connection

    def _drop(self, connection: Connection) -> None:
        """Forget ``connection`` and shut it down in the background (the caller need not wait for it)."""
        if self._connections.get(connection.server.key) is connection:
            del self._connections[connection.server.key]
        if self._closed:
            return  # aclose is stopping it already
        task = asyncio.get_running_loop().create_task(connection.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _auth_headers(self, server: Server) -> dict[str, str]:
        if server.auth is None:
            return {}
        if self._http is None or self._http.closed:
            import aiohttp

            self._http = aiohttp.ClientSession()
        return await self._auth.headers(server.auth, self._http)


def _oauth2(auth: Any) -> bool:
    return auth is not None and auth.type == "oauth2"
