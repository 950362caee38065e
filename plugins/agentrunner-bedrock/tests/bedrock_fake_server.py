"""A local Bedrock Runtime that speaks the real Converse wire protocol and records what it receives.

``POST /model/{modelId}/converse`` answers JSON; ``POST /model/{modelId}/converse-stream`` answers
``application/vnd.amazon.eventstream`` frames (prelude, headers, JSON payload, CRC32s). Errors are
answered the way Bedrock answers them: the status, an ``x-amzn-ErrorType`` header and
``{"message": ...}``. Each request takes the next reply of ``script`` (a default answer when empty).
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
from aiohttp import web

EVENTSTREAM = "application/vnd.amazon.eventstream"
DEFAULT_TEXT = "Hello from Bedrock."

# --- event-stream encoding -----------------------------------------------------------------------


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total length, headers length), prelude CRC32,
    string headers (type 7), payload, and the CRC32 of everything before it."""
    header_bytes = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        header_bytes += struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!BH", 7, len(raw_value)) + raw_value
    total = 12 + len(header_bytes) + len(payload) + 4
    prelude = struct.pack("!II", total, len(header_bytes))
    message = prelude + struct.pack("!I", zlib.crc32(prelude)) + header_bytes + payload
    return message + struct.pack("!I", zlib.crc32(message))


def event_frame(event_type: str, body: dict[str, Any]) -> bytes:
    """An event of the ConverseStream output (``contentBlockDelta``, ``metadata``…)."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_frame(headers, json.dumps(body).encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    """An exception event in the middle of a stream (``throttlingException``…)."""
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_frame(headers, json.dumps({"message": message}).encode())


# --- replies -----------------------------------------------------------------------------------------


@attrs.frozen
class ToolUse:
    """A tool call in an answer; ``input`` as a dict, or as raw text for a model that wrote bad JSON."""

    id: str
    name: str
    input: dict[str, Any] | str


@attrs.frozen
class Answer:
    """A successful answer, rendered as Converse JSON or as ConverseStream events."""

    text: Sequence[str] = (DEFAULT_TEXT,)
    tool_uses: Sequence[ToolUse] = ()
    stop_reason: str = "end_turn"
    input_tokens: int = 12
    output_tokens: int = 7

    def body(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"text": "".join(self.text)}] if self.text else []
        for use in self.tool_uses:
            content.append({"toolUse": {"toolUseId": use.id, "name": use.name, "input": use.input}})
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": self.stop_reason,
            "usage": self._usage(),
            "metrics": {"latencyMs": 42},
        }

    def _usage(self) -> dict[str, int]:
        return {"inputTokens": self.input_tokens, "outputTokens": self.output_tokens,
                "totalTokens": self.input_tokens + self.output_tokens}

    def frames(self) -> Iterator[bytes]:
        yield event_frame("messageStart", {"role": "assistant"})
        index = 0
        if self.text:
            for chunk in self.text:
                yield event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": chunk}})
            yield event_frame("contentBlockStop", {"contentBlockIndex": index})
            index += 1
        for use in self.tool_uses:
            yield event_frame("contentBlockStart", {"contentBlockIndex": index,
                                                    "start": {"toolUse": {"toolUseId": use.id, "name": use.name}}})
            raw = json.dumps(use.input) if isinstance(use.input, dict) else use.input
            middle = len(raw) // 2
            for fragment in (raw[:middle], raw[middle:]):
                yield event_frame("contentBlockDelta", {"contentBlockIndex": index,
                                                        "delta": {"toolUse": {"input": fragment}}})
            yield event_frame("contentBlockStop", {"contentBlockIndex": index})
            index += 1
        yield event_frame("messageStop", {"stopReason": self.stop_reason})
        yield event_frame("metadata", {"usage": self._usage(), "metrics": {"latencyMs": 42}})


@attrs.frozen
class Failure:
    """An error answer as Bedrock sends it."""

    status: int
    error_type: str
    message: str = ""
    headers: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class StreamFailure:
    """A stream that starts well and then carries an exception event."""

    exception_type: str
    message: str
    text: Sequence[str] = ("Partial ",)


@attrs.frozen
class Paused:
    """A stream that sends its first ``after`` frames, then waits for ``resume`` before the rest."""

    answer: Answer
    after: int
    resume: asyncio.Event = attrs.field(factory=asyncio.Event)


@attrs.frozen
class Hang:
    """Never answers (until the server stops): the client's read timeout must fire."""


Reply = Answer | Failure | StreamFailure | Paused | Hang


@attrs.frozen
class Recorded:
    """One request as the server received it."""

    operation: str
    model_id: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    peer: tuple[str, int]


class FakeBedrock:
    """The server: ``await start()``, point an endpoint at ``url``, read ``requests``, ``await stop()``."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[Recorded] = []
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def reply(self, *replies: Reply) -> FakeBedrock:
        """Queue replies for the next requests, in order."""
        self.script.extend(replies)
        return self

    async def start(self) -> FakeBedrock:
        app = web.Application()
        app.router.add_post("/model/{model_id}/{operation:converse|converse-stream}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.match_info["operation"]
        body = await request.json()
        self.requests.append(Recorded(operation=operation, model_id=request.match_info["model_id"],
                                      path=request.raw_path, headers={k.lower(): v for k, v in request.headers.items()},
                                      body=body, peer=request.transport.get_extra_info("peername")[:2]))
        reply = self.script.pop(0) if self.script else Answer()
        if isinstance(reply, Hang):
            await self._stopping.wait()
            return web.Response(status=503)
        if isinstance(reply, Failure):
            headers = {"x-amzn-ErrorType": f"{reply.error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                       "x-amzn-RequestId": "fake-request-id", **reply.headers}
            return web.json_response({"message": reply.message}, status=reply.status, headers=headers)
        if operation == "converse":
            answer = reply.answer if isinstance(reply, Paused) else reply
            if not isinstance(answer, Answer):
                raise web.HTTPInternalServerError(text="a stream failure needs converse-stream")
            return web.json_response(answer.body(), headers={"x-amzn-RequestId": "fake-request-id"})
        return await self._stream(request, reply)

    async def _until(self, event: asyncio.Event) -> None:
        """Wait for ``event``, or for the server to stop."""
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": EVENTSTREAM, "x-amzn-RequestId": "fake-request-id"})
        await response.prepare(request)
        if isinstance(reply, StreamFailure):
            await response.write(event_frame("messageStart", {"role": "assistant"}))
            for chunk in reply.text:
                await response.write(event_frame("contentBlockDelta", {"contentBlockIndex": 0,
                                                                       "delta": {"text": chunk}}))
            await response.write(exception_frame(reply.exception_type, reply.message))
        elif isinstance(reply, Paused):
            for number, frame in enumerate(reply.answer.frames()):
                if number == reply.after:
                    await self._until(reply.resume)
                await response.write(frame)
        else:
            for frame in reply.frames():
                await response.write(frame)
        await response.write_eof()
        return response


class ThreadedFakeBedrock:
    """A FakeBedrock in a thread of its own, for tests that run several event loops one after another."""

    def __init__(self) -> None:
        self.fake = FakeBedrock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeBedrock:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self._loop).result(10)
        return self.fake

    def __exit__(self, *exc_info: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
