"""A local Ollama for tests: ``POST /api/chat`` on 127.0.0.1, scripted replies, every request recorded.

It speaks Ollama's wire protocol: one JSON object for ``"stream": false``;
NDJSON with chunked transfer for ``"stream": true`` (Ollama's default when
``stream`` is left out), a line per piece of the answer and a last line with
``"done": true`` and the token counts; failures as an HTTP status with
``{"error": "..."}``. Other paths answer ``404 page not found`` in plain text,
as Ollama's router does.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
from aiohttp import web

DEFAULT_MODEL = "llama2"


@attrs.frozen
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    client_port: int | None = None


@attrs.frozen
class Reply:
    """What the server does with one request; build it with the functions below."""

    kind: str
    status: int = 200
    content: Sequence[str] = ()
    tool_calls: Sequence[Mapping[str, Any]] = ()
    model: str | None = None
    prompt_eval_count: int | None = 26
    eval_count: int | None = 12
    done_reason: str = "stop"
    error: str = ""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    text: str = ""
    content_type: str = "application/json"
    hold: asyncio.Event | None = None
    complete_stream: bool = True


def answer(*pieces: str, tool_calls: Sequence[Mapping[str, Any]] = (), model: str | None = None,
           prompt_eval_count: int | None = 26, eval_count: int | None = 12, done_reason: str = "stop",
           hold: asyncio.Event | None = None, complete_stream: bool = True) -> Reply:
    """A successful answer: its text in ``pieces`` (one NDJSON line each when streamed).

    ``hold`` makes a streamed answer wait after its first line until the event
    is set, so a test can see a delta arrive before the rest is sent;
    ``complete_stream=False`` ends the stream without its ``done`` line.
    """
    return Reply("answer", content=pieces, tool_calls=tool_calls, model=model, prompt_eval_count=prompt_eval_count,
                 eval_count=eval_count, done_reason=done_reason, hold=hold, complete_stream=complete_stream)


def tool_call(name: str, arguments: Any) -> dict[str, Any]:
    """One entry of Ollama's ``message.tool_calls`` (arguments are a JSON object, not a string)."""
    return {"function": {"name": name, "arguments": arguments}}


def error(status: int, message: str, *, headers: Mapping[str, str] | None = None) -> Reply:
    """Ollama's failure: ``status`` with ``{"error": message}``."""
    return Reply("error", status=status, error=message, headers=dict(headers or {}))


def raw(status: int, text: str, *, content_type: str = "text/plain") -> Reply:
    """Any body at all (a proxy's page, a server that is not Ollama)."""
    return Reply("raw", status=status, text=text, content_type=content_type)


def failing_stream(*pieces: str, message: str) -> Reply:
    """A streamed answer that breaks off with an ``{"error": ...}`` line, as Ollama does when the model fails."""
    return Reply("failing_stream", content=pieces, error=message)


def dropped_stream(*pieces: str) -> Reply:
    """A streamed answer whose connection is cut after ``pieces`` (a crash, a proxy giving up)."""
    return Reply("dropped_stream", content=pieces)


def hang() -> Reply:
    """Never answer (until the server stops)."""
    return Reply("hang")


def unused_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeOllama:
    """The fake server. Queue replies with ``push``; when the queue is empty ``default`` answers."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: deque[Reply] = deque()
        self.default: Reply = answer("Hello from Ollama")
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.url = ""

    def push(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    @property
    def bodies(self) -> list[Any]:
        return [request.body for request in self.requests]

    async def start(self) -> FakeOllama:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        text = await request.text()
        try:
            body: Any = json.loads(text) if text else None
        except ValueError:
            body = text
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), body,
                                      peer[1] if peer else None))
        if request.method != "POST" or request.path != "/api/chat":
            return web.Response(status=404, text="404 page not found")
        reply = self.replies.popleft() if self.replies else self.default
        streamed = not isinstance(body, dict) or body.get("stream", True) is not False
        model = reply.model or (body.get("model") if isinstance(body, dict) else None) or DEFAULT_MODEL
        if reply.kind == "hang":
            await self._stopping.wait()
            return web.Response(status=503)
        if reply.kind == "error":
            return web.json_response({"error": reply.error}, status=reply.status, headers=reply.headers)
        if reply.kind == "raw":
            return web.Response(status=reply.status, text=reply.text, content_type=reply.content_type)
        if reply.kind == "failing_stream":
            lines = [_chunk(model, piece) for piece in reply.content] + [{"error": reply.error}]
            return await _ndjson(request, lines)
        if reply.kind == "dropped_stream":
            return await _ndjson(request, [_chunk(model, piece) for piece in reply.content], drop=True)
        if not streamed:
            final = _done(model, reply)
            final["message"] = {"role": "assistant", "content": "".join(reply.content)}
            if reply.tool_calls:
                final["message"]["tool_calls"] = list(reply.tool_calls)
            return web.json_response(final)
        lines = [_chunk(model, piece) for piece in reply.content]
        if reply.tool_calls:
            lines.append(_chunk(model, "", tool_calls=reply.tool_calls))
        if reply.complete_stream:
            lines.append(_done(model, reply))
        return await _ndjson(request, lines, hold=reply.hold)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _chunk(model: str, content: str, *, tool_calls: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = list(tool_calls)
    return {"model": model, "created_at": _now(), "message": message, "done": False}


def _done(model: str, reply: Reply) -> dict[str, Any]:
    final: dict[str, Any] = {
        "model": model, "created_at": _now(), "message": {"role": "assistant", "content": ""}, "done": True,
        "done_reason": reply.done_reason, "total_duration": 5_191_566_416, "load_duration": 2_154_458,
        "prompt_eval_duration": 383_809_000, "eval_duration": 4_799_921_000,
    }
    if reply.prompt_eval_count is not None:
        final["prompt_eval_count"] = reply.prompt_eval_count
    if reply.eval_count is not None:
        final["eval_count"] = reply.eval_count
    return final


async def _ndjson(request: web.Request, lines: list[dict[str, Any]], *,
                  hold: asyncio.Event | None = None, drop: bool = False) -> web.StreamResponse:
    """Send ``lines`` as NDJSON with chunked transfer, one write (one HTTP chunk) per line.

    ``drop`` cuts the connection after the lines instead of ending the body.
    """
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for index, line in enumerate(lines):
        await response.write(json.dumps(line).encode() + b"\n")
        if index == 0 and hold is not None:
            await hold.wait()
        await asyncio.sleep(0.001)
    if drop:
        request.transport.abort()
        return response
    await response.write_eof()
    return response
