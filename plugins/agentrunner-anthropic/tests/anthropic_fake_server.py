"""A local stand-in for the Anthropic Messages API: ``POST /v1/messages``, as JSON or as server-sent events.

It speaks the wire protocol of api.anthropic.com (message bodies, error bodies, the SSE event
sequence ``message_start`` … ``message_stop``) and records every request it receives, so the
tests run the real SDK against it. Replies are scripted in order; once the script is used up
every request gets ``default``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error",
    529: "overloaded_error",
}
JSON_CHUNK = 7


@dataclass
class ToolUse:
    """A ``tool_use`` block; ``input`` given as a string is sent as that raw text (what a model wrote)."""

    id: str
    name: str
    input: dict[str, Any] | str


@dataclass
class Reply:
    """One scripted answer: a message (text and tool uses), an HTTP error, or no answer at all.

    When streaming, ``stream_error`` (error type, message) replaces the rest of the answer after
    the first text delta, ``cut`` ends the response there, and ``hold`` keeps the rest back until set.
    """

    text: str = ""
    tool_uses: list[ToolUse] = field(default_factory=list)
    stop_reason: str | None = None
    model: str | None = None
    input_tokens: int = 21
    output_tokens: int = 9
    cache_read_tokens: int | None = None
    status: int = 200
    error_message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    stream_error: tuple[str, str] | None = None
    cut: bool = False
    hold: asyncio.Event | None = None
    hang: bool = False


def answer(text: str = "", *tool_uses: ToolUse, **options: Any) -> Reply:
    return Reply(text=text, tool_uses=list(tool_uses), **options)


def error(status: int, message: str = "", headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, error_message=message or f"error {status}", headers=dict(headers or {}))


def hang() -> Reply:
    """Never answer (until the server stops): the client's timeout must end the call."""
    return Reply(hang=True)


def text_chunks(text: str) -> list[str]:
    """The text deltas the fake streams for ``text``: one per word, with the spaces before it."""
    return re.findall(r"\s*\S+", text)


@dataclass
class Recorded:
    """A request as the server received it (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    peer: Any


class FakeAnthropic:
    """``async with FakeAnthropic() as fake:`` serves on ``fake.url`` until the block ends."""

    def __init__(self, default: Reply | None = None, *, port: int = 0) -> None:
        self.default = default or answer("Hello from the fake Claude.")
        self.requests: list[Recorded] = []
        self._script: deque[Reply] = deque()
        self._port = port
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order."""
        self._script.extend(replies)

    async def __aenter__(self) -> FakeAnthropic:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._released.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        headers = {name.lower(): value for name, value in request.headers.items()}
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(Recorded(request.method, request.path, headers, body, peer))
        reply = self._script.popleft() if self._script else self.default
        if reply.hang:
            await self._until()
            return _error_response(529, "the server was stopped", {})
        refusal = _check(request, body)
        if refusal:
            return _error_response(*refusal, {})
        if reply.status >= 400:
            return _error_response(reply.status, reply.error_message, reply.headers)
        message = self._message(reply, body)
        if body.get("stream"):
            return await self._stream(request, reply, message)
        return web.json_response(message, headers={"request-id": f"req_{message['id']}", **reply.headers})

    async def _until(self, *events: asyncio.Event) -> None:
        """Wait for one of ``events``, or for the server to stop (so a held handler never blocks shutdown)."""
        waiters = [asyncio.ensure_future(event.wait()) for event in (*events, self._released)]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _message(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        content += [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input} for use in reply.tool_uses]
        return {
            "id": f"msg_{next(self._ids):04d}", "type": "message", "role": "assistant",
            "model": reply.model or body["model"], "content": content,
            "stop_reason": reply.stop_reason or ("tool_use" if reply.tool_uses else "end_turn"),
            "stop_sequence": None,
            "usage": _usage(reply, reply.output_tokens),
        }

    async def _stream(self, request: web.Request, reply: Reply, message: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "request-id": f"req_{message['id']}", **reply.headers})
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        start = {**message, "content": [], "stop_reason": None, "usage": _usage(reply, 1)}
        await send("message_start", {"type": "message_start", "message": start})
        await send("ping", {"type": "ping"})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                await send("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "text", "text": ""}})
                for chunk in text_chunks(block["text"]):
                    await send("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": {"type": "text_delta", "text": chunk}})
                    if reply.hold is not None:
                        await self._until(reply.hold)
                    if reply.stream_error:
                        error_type, error_message = reply.stream_error
                        await send("error", {"type": "error", "error": {"type": error_type, "message": error_message}})
                    if reply.stream_error or reply.cut:
                        await response.write_eof()
                        return response
            else:
                await send("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
                raw = block["input"] if isinstance(block["input"], str) else json.dumps(block["input"])
                for offset in range(0, len(raw), JSON_CHUNK):
                    await send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                        "type": "input_json_delta", "partial_json": raw[offset:offset + JSON_CHUNK]}})
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": reply.output_tokens}})
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response


def _usage(reply: Reply, output_tokens: int) -> dict[str, Any]:
    usage = {"input_tokens": reply.input_tokens, "output_tokens": output_tokens}
    if reply.cache_read_tokens is not None:
        usage.update(cache_creation_input_tokens=0, cache_read_input_tokens=reply.cache_read_tokens)
    return usage


def _check(request: web.Request, body: Any) -> tuple[int, str] | None:
    """The checks api.anthropic.com makes before it reads a request."""
    if not (request.headers.get("Authorization") or request.headers.get("X-Api-Key")):
        return 401, "x-api-key header is required"
    if not request.headers.get("anthropic-version"):
        return 400, "anthropic-version: header is required"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return 400, f"{name}: Field required"
    return None


def _error_response(status: int, message: str, headers: dict[str, str]) -> web.Response:
    body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": "req_error"}
    return web.json_response(body, status=status, headers={"request-id": "req_error", **headers})
