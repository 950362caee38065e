"""Real MCP servers for the tests, written with the official SDK.

The same tools are served over stdio (this file run as a script: ``python mcp_servers.py``),
streamable HTTP and SSE (``ServedApp``: uvicorn on 127.0.0.1 in a background thread, restartable
on the same port). ``RequestLog`` records what reached an HTTP server: the headers the tests check
and how many MCP sessions were opened.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mcp_types
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

#: the stdio server appends one line to this file each time it starts
STARTS_FILE = "MCP_TEST_STARTS_FILE"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 24


def build_server(name: str = "test-tools") -> MCPServer:
    """An MCP server with a few tools that cover results, errors, structured content and slowness."""
    server = MCPServer(name, log_level="WARNING")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool()
    def echo_env(name: str = "MCP_TEST_VALUE") -> str:
        """Return the value of an environment variable of the server process."""
        return os.environ.get(name, "<unset>")

    @server.tool()
    def fail(reason: str = "the tool failed on purpose") -> str:
        """Always fail."""
        raise ToolError(reason)

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Answer after ``seconds``."""
        await asyncio.sleep(seconds)
        return "slept"

    @server.tool()
    def weather(city: str) -> dict[str, Any]:
        """Structured content: a JSON object."""
        return {"city": city, "temperature": 21}

    @server.tool()
    def picture() -> list[mcp_types.ContentBlock]:
        """Several content items: text, an image and an embedded resource."""
        return [
            mcp_types.TextContent(type="text", text="a picture"),
            Image(data=PNG_BYTES, format="png").to_image_content(),
            mcp_types.EmbeddedResource(type="resource", resource=mcp_types.TextResourceContents(
                uri="file:///notes.txt", text="resource text", mime_type="text/plain")),
            mcp_types.EmbeddedResource(type="resource", resource=mcp_types.BlobResourceContents(
                uri="file:///data.bin", blob="AAEC", mime_type="application/octet-stream")),
        ]

    # No description: the tool entry's own description stands in for it.
    @server.tool()
    def pid() -> int:
        return os.getpid()

    return server


# --- HTTP servers ---------------------------------------------------------------------------------


class RequestLog:
    """An ASGI middleware that records the headers the tests check and counts MCP sessions."""

    HEADERS = ("authorization", "x-api-key", "x-custom")

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        #: when set, a request without exactly this Authorization header is answered 401 (token revocation tests)
        self.required_authorization: str | None = None

    def wrap(self, app: Callable) -> Callable:
        async def logged(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            seen = {name: headers[name] for name in (*self.HEADERS, "mcp-session-id") if name in headers}
            self.requests.append((scope["method"], scope["path"], seen))
            required = self.required_authorization
            if required is not None and headers.get("authorization") != required:
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return None
            return await app(scope, receive, send)

        return logged

    def reset(self) -> None:
        """Forget what earlier tests sent and accept any credentials again."""
        self.requests.clear()
        self.required_authorization = None

    def sessions(self, transport: str) -> int:
        """How many MCP sessions clients opened: initialize POSTs (streamable HTTP) or SSE GETs."""
        if transport == "sse":
            return sum(1 for method, path, _ in self.requests if method == "GET" and path == "/sse")
        return sum(1 for method, _, headers in self.requests if method == "POST" and "mcp-session-id" not in headers)

    def header_values(self, name: str) -> set[str]:
        return {headers[name] for _, _, headers in self.requests if name in headers}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServedApp:
    """One MCP server on 127.0.0.1 over ``streamable-http`` or ``sse``, run by uvicorn in a thread.

    ``restart()`` stops it and serves a fresh server (no sessions) on the same port.
    """

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.port = free_port()
        self.log = RequestLog()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        path = "/sse" if self.transport == "sse" else "/mcp"
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        import uvicorn

        server = build_server()
        app = server.sse_app() if self.transport == "sse" else server.streamable_http_app()
        config = uvicorn.Config(self.log.wrap(app), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"mcp-{self.transport}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the {self.transport} test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        self._server.force_exit = True  # open SSE streams must not hold the restart up
        assert self._thread is not None
        self._thread.join(10)
        self._server = None

    def restart(self) -> None:
        self.stop()
        self.start()


# --- stdio ----------------------------------------------------------------------------------------


def main() -> None:
    starts = os.environ.get(STARTS_FILE)
    if starts:
        with Path(starts).open("a") as file:
            file.write(f"{os.getpid()}\n")
    # stdout carries the protocol; stderr is the server's log, which the client relays into its own
    # (the secret shows that it is scrubbed on the way).
    print(f"test server {os.getpid()} starting (token {os.environ.get('SECRET_TOKEN', 'none')})", file=sys.stderr,
          flush=True)
    build_server().run("stdio")


if __name__ == "__main__":
    sys.exit(main())
