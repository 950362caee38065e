"""The ``mcp`` tool type: the tools an MCP server lists, offered to the model and called on the server."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from agentrunner.interfaces import Tool, ToolDefinition, ToolError
from agentrunner.tool_auth import ToolAuth
from agentrunner_mcp.servers import Server, public_url
from agentrunner_mcp.sessions import Connection, SessionPool

#: seconds a new session has at least to connect and initialize (``npx``-started stdio servers are slow)
CONNECT_TIMEOUT = 30.0
#: the largest answer handed to the model unless ``TOOL_MAX_RESPONSE_BYTES`` says otherwise
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024


class MCPToolType:
    """Tools of MCP servers: remote by ``url`` (streamable HTTP, or SSE when the path ends in ``/sse``)
    or local by ``command`` + ``args`` + ``env`` (stdio).

    Sessions are pooled per event loop, one per distinct server, and reused by every execution;
    a session found gone is re-established once per operation. ``aclose`` stops them all.
    """

    name = "mcp"
    required_fields = ()

    def __init__(self, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.connect_timeout = connect_timeout
        self._auth = ToolAuth()
        self._pools: dict[asyncio.AbstractEventLoop, SessionPool] = {}
        self._max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES

    def validate(self, tool: Any) -> list[tuple[str, str]]:
        """Exactly one of ``url`` or ``command``; the fields of the other kind of server are refused."""
        problems: list[tuple[str, str]] = []
        url, command = tool.url, tool.command
        if url and command is not None:
            problems.append(("command", "give either url (a remote server) or command (a stdio server), not both"))
        elif not url and command is None:
            problems.append(("url", "an mcp tool needs a url (streamable HTTP or SSE) or a command (a stdio server)"))
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(("url", f"must be an http:// or https:// URL (got {public_url(url)!r})"))
        if command is not None and not command.strip():
            problems.append(("command", "must not be blank"))
        if command is None:
            if tool.args:
                problems.append(("args", "only a stdio server (command) takes args"))
            if tool.env:
                problems.append(("env", "only a stdio server (command) takes env"))
        if not url:
            if tool.headers:
                problems.append(("headers", "only a remote server (url) takes headers"))
            if tool.auth is not None:
                problems.append(("auth", "only a remote server (url) takes auth"))
        if getattr(tool, "function", None):
            problems.append(("function", "not used by mcp tools: the server lists its tools"))
        if getattr(tool, "parameters", None) is not None:
            problems.append(("parameters", "not used by mcp tools: the server gives each tool's parameters"))
        return problems

    def configure(self, settings: Any) -> None:
        """Take ``TOOL_MAX_RESPONSE_BYTES``: the largest answer a tool may hand back to the model."""
        self._max_response_bytes = getattr(settings, "tool_max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)

    async def open(self, tool: Any) -> list[Tool]:
        """One ``Tool`` per tool the server lists (the listing is cached for the life of the session)."""
        server = Server.from_tool(tool)
        listed = await self._run(server, _listing, "listing its tools")
        return [
            Tool(definition=ToolDefinition(name=item.name, description=item.description or tool.description,
                                           parameters=dict(item.input_schema)),
                 call=partial(self._call, server, item.name), timeout=tool.timeout)
            for item in listed
        ]

    async def aclose(self) -> None:
        """Stop every session (their tasks end, stdio children exit) and close the HTTP session."""
        current = asyncio.get_running_loop()
        pools, self._pools = self._pools, {}
        for loop, pool in pools.items():
            if loop is current:
                await pool.aclose()
            elif loop.is_running():  # a session's task can only be stopped on its own loop
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(pool.aclose(), loop))
            # a closed loop took its sessions' tasks with it

    def sessions(self) -> list[Connection]:
        """The sessions pooled on the running event loop (for diagnostics and tests)."""
        pool = self._pools.get(asyncio.get_running_loop())
        return pool.connections if pool is not None else []

    async def _call(self, server: Server, name: str, arguments: Mapping[str, Any]) -> Any:
        """``Tool.call`` of one server tool: the pooled session calls it; the result is converted."""

        async def call(connection: Connection) -> Any:
            assert connection.session is not None
            return await connection.session.call_tool(name, dict(arguments))

        result = await self._run(server, call, f"calling {name!r}")
        return self._result(result)

    async def _run(self, server: Server, operation: Callable[[Connection], Awaitable[Any]], action: str) -> Any:
        """``operation`` on the server's pooled session, bounded by the tool entry's timeout.

        Connecting a new session is bounded separately (``connect_timeout``): a stdio server
        may take seconds to start, and the session outlives the call that started it.
        """
        from mcp.shared.exceptions import MCPError

        async def bounded(connection: Connection) -> Any:
            try:
                async with asyncio.timeout(server.timeout):
                    return await operation(connection)
            except TimeoutError:
                raise ToolError(f"MCP server {server.where} did not answer within {server.timeout:g} s "
                                f"({action})") from None

        try:
            return await self._pool().run(server, bounded)
        except MCPError as exc:  # the server's own JSON-RPC error, e.g. invalid params
            message = server.scrub(exc.message or f"error {exc.code}")
            raise ToolError(f"MCP server {server.where} refused {action}: {message}") from None

    def _pool(self) -> SessionPool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            for stale in [other for other in self._pools if other.is_closed()]:
                del self._pools[stale]
            pool = self._pools[loop] = SessionPool(self._auth, self.connect_timeout)
        return pool

    def _result(self, result: Any) -> Any:
        """An error result raises ``ToolError``; otherwise the structured content, else the text contents."""
        text = "\n".join(describe_content(item) for item in result.content)
        if result.is_error:
            raise ToolError(text or "the MCP tool failed without saying why")
        value = result.structured_content if result.structured_content is not None else text
        size = len((value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).encode())
        if size > self._max_response_bytes:
            raise ToolError(f"the MCP tool answered with {size} bytes, more than the "
                            f"{self._max_response_bytes} allowed (TOOL_MAX_RESPONSE_BYTES)")
        return value


async def _listing(connection: Connection) -> Sequence[Any]:
    """Every tool the server lists (all pages), once per session."""
    from mcp_types import PaginatedRequestParams

    if connection.tools is None:
        assert connection.session is not None
        tools: list[Any] = []
        cursor: str | None = None
        while True:
            page = await connection.session.list_tools(
                params=PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        connection.tools = tools
    return connection.tools


def describe_content(item: Any) -> str:
    """One content item as text: text as is, media and binary resources described in brackets."""
    kind = getattr(item, "type", "")
    if kind == "text":
        return item.text
    if kind in ("image", "audio"):
        return f"[{kind} {item.mime_type}, {_decoded_size(item.data)} bytes]"
    if kind == "resource":
        resource = item.resource
        text = getattr(resource, "text", None)
        if text is not None:
            return text
        mime = f" {resource.mime_type}" if resource.mime_type else ""
        return f"[resource {resource.uri}{mime}, {_decoded_size(getattr(resource, 'blob', ''))} bytes]"
    if kind == "resource_link":
        return f"[resource link {item.uri}" + (f": {item.description}]" if item.description else "]")
    return f"[{kind or 'unknown'} content]"


def _decoded_size(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        return len(data)
