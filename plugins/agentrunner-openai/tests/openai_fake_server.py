"""A local OpenAI Chat Completions server for the tests: the real wire protocol, scripted answers.

``POST /v1/chat/completions`` answers with the next scripted reply (JSON, or server-sent events
when the request asks to stream) and records every request it receives: path, headers, body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

import attrs
from aiohttp import web


@attrs.frozen
class Call:
    """A tool call the fake model makes; ``arguments`` is sent as given (a JSON string, valid or not)."""

    id: str
    name: str
    arguments: str


@attrs.frozen
class Answer:
    """A successful completion. Streamed, ``text`` is split into ``deltas`` (words by default);
    ``stream_error`` sends an error event after the deltas instead of the end of the answer, and
    ``drop`` cuts the connection there."""

    text: str | None = "Hello from the fake."
    calls: tuple[Call, ...] = ()
    model: str = "gpt-4-0613"
    prompt_tokens: int = 12
    completion_tokens: int = 5
    finish_reason: str | None = None
    deltas: tuple[str, ...] | None = None
    stream_error: str | None = None
    drop: bool = False


@attrs.frozen
class Failure:
    """An HTTP error answer in OpenAI's error shape (``body`` replaces it when given)."""

    status: int
    message: str = "Something went wrong."
    type: str = "invalid_request_error"
    headers: dict[str, str] = attrs.field(factory=dict)
    body: str | None = None


@attrs.frozen
class Raw:
    """Any HTTP answer, as given: what a server that is not OpenAI-compatible might send."""

    body: str
    content_type: str = "application/json"
    status: int = 200


@attrs.frozen
class Hang:
    """Never answer (until the server stops): the client's timeout has to fire."""


@attrs.frozen
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeOpenAI:
    """The server; ``replies`` are used in order, then ``default`` for every further request."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: deque[Answer | Failure | Raw | Hang] = deque()
        self.default: Answer | Failure | Raw | Hang = Answer()
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()
        self.base_url = ""
        self.port = 0

    def reply(self, *replies: Answer | Failure | Raw | Hang) -> None:
        """Script the next answers."""
        self.replies.extend(replies)

    async def start(self, port: int = 0) -> str:
        """Listen on 127.0.0.1 (a free port unless given); returns the base URL, ``.../v1``."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        return self.base_url

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(Recorded(request.method, request.path, {k.lower(): v for k, v in request.headers.items()},
                                      body))
        reply = self.replies.popleft() if self.replies else self.default
        if isinstance(reply, Hang):
            await self._released.wait()
            return web.Response(status=499)
        if isinstance(reply, Raw):
            return web.Response(status=reply.status, body=reply.body.encode(),
                                headers={"Content-Type": reply.content_type})
        if isinstance(reply, Failure):
            text = reply.body if reply.body is not None else json.dumps(
                {"error": {"message": reply.message, "type": reply.type, "param": None, "code": None}})
            return web.Response(status=reply.status, text=text, content_type="application/json",
                                headers=reply.headers)
        if isinstance(body, dict) and body.get("stream"):
            return await self._stream(request, reply, body)
        return web.json_response(completion(reply))

    async def _stream(self, request: web.Request, answer: Answer, body: dict) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        events = chunks(answer, include_usage=bool((body.get("stream_options") or {}).get("include_usage")))
        if answer.stream_error is not None or answer.drop:
            events = [event for event in events if any(choice["delta"].get("content") for choice in event["choices"])]
        for event in events:
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        if answer.drop:
            assert request.transport is not None
            request.transport.close()
            return response
        if answer.stream_error is not None:
            error = {"error": {"message": answer.stream_error, "type": "server_error", "param": None, "code": None}}
            await response.write(f"data: {json.dumps(error)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _finish_reason(answer: Answer) -> str:
    return answer.finish_reason or ("tool_calls" if answer.calls else "stop")


def _usage(answer: Answer) -> dict[str, int]:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def completion(answer: Answer) -> dict[str, Any]:
    """A ``chat.completion`` object as OpenAI sends it."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in answer.calls
        ]
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": answer.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(answer)}],
        "usage": _usage(answer), "system_fingerprint": "fp_fake",
    }


def chunks(answer: Answer, *, include_usage: bool) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer, in order."""

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        out = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
               "model": answer.model, "system_fingerprint": "fp_fake", "choices": choices}
        if include_usage:
            out["usage"] = usage
        return out

    def delta(**fields: Any) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": fields, "logprobs": None, "finish_reason": None}]

    out = [chunk(delta(role="assistant", content="", refusal=None))]
    text = answer.text or ""
    pieces = answer.deltas if answer.deltas is not None else [word + " " for word in text.split(" ")[:-1]] + (
        [text.split(" ")[-1]] if text else [])
    out += [chunk(delta(content=piece)) for piece in pieces if piece]
    for index, call in enumerate(answer.calls):
        half = len(call.arguments) // 2
        out.append(chunk(delta(tool_calls=[{"index": index, "id": call.id, "type": "function",
                                             "function": {"name": call.name, "arguments": ""}}])))
        for part in (call.arguments[:half], call.arguments[half:]):
            out.append(chunk(delta(tool_calls=[{"index": index, "function": {"arguments": part}}])))
    out.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": _finish_reason(answer)}]))
    if include_usage:
        out.append(chunk([], _usage(answer)))
    return out
