"""The ``anthropic`` provider: the Messages API (``POST /v1/messages``) through the official SDK.

Each call makes one HTTP attempt (the SDK's retries are off: the agent's ``retry_config``
is the only retry layer). Failures become ``ProviderError`` in words a user understands,
with no credential in them and no SDK exception chained to them.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from agentrunner.interfaces import (
    CompletionRequest,
    CompletionResponse,
    Message,
    ProviderError,
    ToolCall,
    ToolDefinition,
    Usage,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_KEY_VARIABLE = "ANTHROPIC_API_KEY"
MAX_TEMPERATURE = 1.0

#: The ``llm_config`` fields this provider honours; ``agentrunner validate`` reports any other one an agent sets.
SUPPORTED_OPTIONS = frozenset({"model", "temperature", "max_tokens", "top_p", "top_k", "timeout", "base_url"})

# Anthropic's stop reasons in the common vocabulary; the others (refusal, pause_turn, …) pass through as they are.
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}

STATUS_WORDS = {
    400: "bad request", 401: "authentication failed", 402: "payment required", 403: "permission denied",
    404: "not found", 408: "request timed out at the server", 409: "conflict", 413: "request too large",
    422: "unprocessable request", 429: "rate limited", 500: "server error", 502: "bad gateway",
    503: "service unavailable", 504: "gateway timeout", 529: "overloaded",
}
# Besides 429 and 5xx, Anthropic answers 408 and 409 (a lock timeout) to requests worth sending again.
RETRYABLE_STATUSES = frozenset({408, 409, 429})

# An ``error`` event inside a stream that began with 200 names only the error's type.
STREAM_ERROR_STATUSES = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
}

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")
_REDACTED = "**********"
_DETAIL_LIMIT = 300


class AnthropicProvider:
    """Claude through the Messages API: system prompt, chat, native tool use and streaming."""

    name = "anthropic"
    supported_options = SUPPORTED_OPTIONS

    def __init__(self, settings: Any = None) -> None:
        self._settings = settings
        # (event loop, base URL, API key, timeout) → AsyncAnthropic: a client's connections belong to its loop.
        self._clients: dict[tuple[Any, str, str, float], Any] = {}

    def configure(self, settings: Any) -> None:
        """Remember the settings (``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``); clients come with the first call."""
        self._settings = settings

    def validate(self, llm_config: Any) -> list[tuple[str, str]]:
        """Values the schema accepts that Anthropic refuses: its temperature range is 0.0–1.0."""
        if llm_config.temperature > MAX_TEMPERATURE:
            return [("temperature", f"must be between 0.0 and {MAX_TEMPERATURE} for provider 'anthropic' "
                                    f"(got {llm_config.temperature})")]
        return []

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """Send the conversation once and return the whole answer."""
        llm_config = request.llm_config
        base_url = self._base_url(llm_config)
        client = self._client(llm_config, base_url)
        try:
            message = await client.messages.create(**request_params(request))
        except _sdk_failures() as exc:
            error = self._error(exc, llm_config, base_url)
        else:
            return _response(message, llm_config.model)
        raise error  # outside the handler, so the SDK exception (and its request) is not chained to it

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | CompletionResponse]:
        """Yield the answer's text deltas as they arrive, then one ``CompletionResponse`` for the whole answer."""
        llm_config = request.llm_config
        base_url = self._base_url(llm_config)
        client = self._client(llm_config, base_url)
        answer = _StreamedAnswer(llm_config.model)
        error: ProviderError | None = None
        try:
            events = await client.messages.create(**request_params(request), stream=True)
            async with events:
                async for event in events:
                    delta = answer.add(event)
                    if delta:
                        yield delta
        except _sdk_failures() as exc:
            error = self._error(exc, llm_config, base_url)
        if error is None and not answer.finished:
            error = ProviderError("anthropic: the answer stopped before its end (no message_stop event)",
                                  retryable=True)
        if error is not None:
            raise error
        yield answer.response()

    async def aclose(self) -> None:
        """Close the clients of the running loop; those of ended loops are only forgotten (their sockets are gone)."""
        clients, self._clients = self._clients, {}
        loop = asyncio.get_running_loop()
        for (client_loop, *_), client in clients.items():
            if client_loop is loop:
                await client.close()

    # --- helpers ---------------------------------------------------------------------------------

    def _api_key(self) -> str:
        value = self._configured_key()
        if not value:
            raise ProviderError(f"anthropic: {API_KEY_VARIABLE} is not set (the Anthropic API needs a key)")
        return value

    def _configured_key(self) -> str:
        secret = getattr(self._settings, "anthropic_api_key", None)
        return (secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret) or ""

    def _base_url(self, llm_config: Any) -> str:
        return llm_config.base_url or getattr(self._settings, "anthropic_base_url", None) or DEFAULT_BASE_URL

    def _client(self, llm_config: Any, base_url: str) -> Any:
        """This loop's client for this configuration, made on first use and reused after."""
        import anthropic

        api_key = self._api_key()
        loop = asyncio.get_running_loop()
        for key in [key for key in self._clients if key[0].is_closed()]:
            del self._clients[key]
        timeout = float(llm_config.timeout)
        key = (loop, base_url, api_key, timeout)
        client = self._clients.get(key)
        if client is None:
            client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)
            self._clients[key] = client
        return client

    def _error(self, exc: Exception, llm_config: Any, base_url: str) -> ProviderError:
        """The SDK's exception as a ``ProviderError``: retryable or not, in plain words, with no secret."""
        import anthropic
        import httpx2

        secrets = [self._configured_key(), urlsplit(base_url).password or ""]
        if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
            return ProviderError(f"anthropic: no answer within {llm_config.timeout:g} s (timeout)", retryable=True)
        if isinstance(exc, anthropic.APIStatusError):
            return _status_error(exc, secrets)
        if isinstance(exc, anthropic.APIConnectionError):
            message = f"anthropic: cannot connect to {base_url}: {_reason(exc.__cause__) or exc.message}"
            return ProviderError(redact(message, secrets), retryable=True)
        if isinstance(exc, httpx2.TransportError):  # the SDK does not wrap failures while a stream is read
            message = f"anthropic: the connection to {base_url} broke during the answer: {_reason(exc)}"
            return ProviderError(redact(message, secrets), retryable=True)
        return ProviderError(redact(f"anthropic: {getattr(exc, 'message', '') or _reason(exc)}", secrets))


# --- the request ---------------------------------------------------------------------------------


def request_params(request: CompletionRequest) -> dict[str, Any]:
    """The ``messages.create`` arguments: each ``llm_config`` field Anthropic reads, under its name there."""
    llm_config = request.llm_config
    system, messages = _conversation(request.system_prompt, request.messages)
    params: dict[str, Any] = {"model": llm_config.model, "max_tokens": llm_config.max_tokens, "messages": messages}
    if system:
        params["system"] = system
    if request.tools:
        params["tools"] = [_tool(tool) for tool in request.tools]
    # anthropic 2.x has no keyword arguments for the sampling options; the API reads them from the body.
    sampling: dict[str, Any] = {"temperature": llm_config.temperature, "top_p": llm_config.top_p}
    if llm_config.top_k is not None:
        sampling["top_k"] = llm_config.top_k
    params["extra_body"] = sampling
    return params


def _conversation(system_prompt: str, messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """The top-level ``system`` text and the turns, merged so that user and assistant alternate."""
    system = [system_prompt] if system_prompt else []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            if message.content:
                system.append(message.content)
            continue
        role, content = _turn(message)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = _blocks(turns[-1]["content"]) + _blocks(content)
        else:
            turns.append({"role": role, "content": content})
    return "\n\n".join(system), turns


def _turn(message: Message) -> tuple[str, str | list[dict[str, Any]]]:
    if message.role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id or "",
                                  "content": message.content}
        if message.is_error:
            result["is_error"] = True
        return "user", [result]
    if message.role == "assistant":
        if not message.tool_calls:
            return "assistant", message.content
        uses = [{"type": "tool_use", "id": call.id, "name": call.name, "input": _plain(call.arguments)}
                for call in message.tool_calls]
        return "assistant", _blocks(message.content) + uses
    return "user", message.content


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []  # the API refuses empty text blocks
    return content


def _tool(tool: ToolDefinition) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.description, "input_schema": _plain(tool.parameters)}


def _plain(value: Any) -> Any:
    """Mappings and sequences as the dicts and lists a JSON body is made of."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


# --- the answer ----------------------------------------------------------------------------------


def _response(message: Any, requested_model: str) -> CompletionResponse:
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in message.content or ():
        if block.type == "text":
            text.append(block.text)
        elif block.type == "tool_use":
            calls.append(ToolCall(block.id, block.name, _arguments(block.input)))
    counts = {field: getattr(message.usage, field, None) or 0 for field in _USAGE_FIELDS}
    return CompletionResponse(text="".join(text), tool_calls=tuple(calls), usage=_usage(counts),
                              model=message.model or requested_model, finish_reason=_finish_reason(message.stop_reason))


_USAGE_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def _usage(counts: Mapping[str, int]) -> Usage:
    # Anthropic counts cached prompt tokens apart from input_tokens; all of them were read by the model.
    inputs = counts["input_tokens"] + counts["cache_creation_input_tokens"] + counts["cache_read_input_tokens"]
    return Usage(input_tokens=inputs, output_tokens=counts["output_tokens"])


def _finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "end_turn", stop_reason or "stop")


def _arguments(value: Any) -> dict[str, Any]:
    """A tool's input as a dict; text that is not a JSON object is kept as ``{"_raw": text}`` for the tool layer."""
    if isinstance(value, Mapping):
        return _plain(value)
    if value is None:
        return {}
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"_raw": text}
    return parsed if isinstance(parsed, dict) else {"_raw": text}


class _StreamedAnswer:
    """The whole answer, built from the Messages API's stream events as they arrive."""

    def __init__(self, requested_model: str) -> None:
        self.model = requested_model
        self.stop_reason: str | None = None
        self.finished = False
        self._counts = dict.fromkeys(_USAGE_FIELDS, 0)
        self._text: dict[int, list[str]] = {}
        self._tools: dict[int, tuple[str, str, list[str], Any]] = {}

    def add(self, event: Any) -> str:
        """Take one event; return the text it adds to the answer (``""`` for none)."""
        kind = event.type
        if kind == "message_start":
            self.model = event.message.model or self.model
            self._count(event.message.usage)
        elif kind == "content_block_start":
            block = event.content_block
            if block.type == "text":
                self._text[event.index] = [block.text]
                return block.text
            if block.type == "tool_use":
                self._tools[event.index] = (block.id, block.name, [], block.input)
        elif kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta" and event.index in self._text:
                self._text[event.index].append(delta.text)
                return delta.text
            if delta.type == "input_json_delta" and event.index in self._tools:
                self._tools[event.index][2].append(delta.partial_json)
        elif kind == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self._count(event.usage)
        elif kind == "message_stop":
            self.finished = True
        return ""

    def _count(self, usage: Any) -> None:
        # Counts in message_delta are running totals; a count it leaves out keeps its message_start value.
        for field in _USAGE_FIELDS:
            value = getattr(usage, field, None)
            if value is not None:
                self._counts[field] = value

    def response(self) -> CompletionResponse:
        text = "".join("".join(parts) for _, parts in sorted(self._text.items()))
        calls = tuple(
            ToolCall(call_id, name, _arguments("".join(parts)) if "".join(parts).strip() else _arguments(start))
            for _, (call_id, name, parts, start) in sorted(self._tools.items())
        )
        return CompletionResponse(text=text, tool_calls=calls, usage=_usage(self._counts), model=self.model,
                                  finish_reason=_finish_reason(self.stop_reason))


# --- errors --------------------------------------------------------------------------------------


def _sdk_failures() -> tuple[type[Exception], ...]:
    """What a call may raise that is the API's or the network's doing (imported only once a call failed)."""
    import anthropic
    import httpx2

    return anthropic.APIError, httpx2.TransportError


def _status_error(exc: Any, secrets: Sequence[str]) -> ProviderError:
    status = exc.status_code
    during = ""
    if status < 400:  # an error event inside a stream whose response was 200
        status = STREAM_ERROR_STATUSES.get(exc.type or "", 500)
        during = " during the answer"
    words = STATUS_WORDS.get(status) or ("server error" if status >= 500 else "request refused")
    detail = " ".join(str(exc.api_message or _body_detail(exc.body)).split())[:_DETAIL_LIMIT]
    message = f"anthropic: {words} ({status}){during}" + (f": {detail}" if detail else "")
    retryable = status in RETRYABLE_STATUSES or status >= 500
    retry_after = retry_after_seconds(exc.response.headers) if retryable else None
    return ProviderError(redact(message, secrets), retryable=retryable, retry_after=retry_after, status=status)


def _body_detail(body: Any) -> str:
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("type"):
            return str(error["type"])
        return json.dumps(body)
    return str(body or "")


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    return str(exc) or type(exc).__name__


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``; None without one."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            seconds = float(milliseconds) / 1000
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each secret masked and the user-info (``user:password@``) of any URL removed."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return _USERINFO.sub(r"\1", text)
