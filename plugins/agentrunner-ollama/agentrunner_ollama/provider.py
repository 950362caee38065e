"""The ``ollama`` provider: Ollama's native chat API (``POST {base}/api/chat``) over aiohttp.

There is no SDK to wrap: the API is one endpoint and aiohttp is already a core
dependency. One ``aiohttp.ClientSession`` per event loop is reused across calls
and closed by ``aclose()``. Every call makes exactly one HTTP attempt, because
the agent's ``retry_config`` is the only retry layer.

Ollama needs no API key, but a base URL may carry ``user:password@`` for a
server behind an authenticating proxy: it is sent as basic auth and never
printed (messages show the URL without its userinfo).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs

from agentrunner.interfaces import (
    CompletionRequest,
    CompletionResponse,
    Message,
    ProviderError,
    ToolCall,
    ToolDefinition,
    Usage,
)
from agentrunner.schema import LLMConfig

if TYPE_CHECKING:
    import aiohttp

NAME = "ollama"
DEFAULT_BASE_URL = "http://localhost:11434"
#: The reference's Ollama example: local models need longer than the schema's 60 s default.
DEFAULT_TIMEOUT = 120.0
#: Bedrock's fields: Ollama has no region and no separate endpoint (``base_url`` is its endpoint).
UNSUPPORTED_OPTIONS = frozenset({"region", "endpoint_url"})
SUPPORTED_OPTIONS = frozenset(
    field.name for field in attrs.fields(LLMConfig) if field.name != "explicit_fields"
) - UNSUPPORTED_OPTIONS
#: Options with a schema default that is not Ollama's: sent only when the agent chose them,
#: so the model's Modelfile keeps its own values otherwise.
CHOSEN_OPTIONS = ("top_p", "frequency_penalty", "presence_penalty")
#: Options that default to None: sent whenever they are set.
OPTIONAL_OPTIONS = ("top_k", "num_ctx", "repeat_penalty", "seed")
USER_AGENT = "agentrunner-ollama"
#: How much of an error body is read and shown: enough for Ollama's ``{"error": ...}``.
MAX_ERROR_BYTES = 64 * 1024
MAX_DETAIL_CHARS = 500
RETRYABLE_STATUSES = frozenset({408, 429})
STATUS_WORDS = {
    400: "bad request",
    401: "authentication failed",
    403: "access denied",
    404: "not found",
    408: "request timed out",
    413: "request too large",
    422: "unprocessable request",
    429: "rate limited",
    500: "server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}

_SCHEMA_DEFAULTS = {field.name: field.default for field in attrs.fields(LLMConfig)}


# --- The request -------------------------------------------------------------------------


def chosen(llm_config: Any, field: str) -> bool:
    """Whether the agent chose ``field``: its YAML set it, or (a config built in code) it differs from the default."""
    explicit = getattr(llm_config, "explicit_fields", frozenset())
    return field in explicit or getattr(llm_config, field) != _SCHEMA_DEFAULTS[field]


def request_timeout(llm_config: Any) -> float:
    """``llm_config.timeout`` when the agent chose it, else the reference's 120 s for local models."""
    return float(llm_config.timeout) if chosen(llm_config, "timeout") else DEFAULT_TIMEOUT


def chat_options(llm_config: Any) -> dict[str, Any]:
    """Ollama's ``options``: sampling and generation settings, under Ollama's names.

    ``num_predict`` wins over ``max_tokens`` when the agent set both (DESIGN.md).
    """
    num_predict = llm_config.num_predict if llm_config.num_predict is not None else llm_config.max_tokens
    options: dict[str, Any] = {"temperature": llm_config.temperature, "num_predict": num_predict}
    for field in CHOSEN_OPTIONS:
        if chosen(llm_config, field):
            options[field] = getattr(llm_config, field)
    for field in OPTIONAL_OPTIONS:
        value = getattr(llm_config, field)
        if value is not None:
            options[field] = value
    return options


def output_format(response_format: Mapping[str, Any] | None) -> str | dict[str, Any] | None:
    """Ollama's ``format``: ``"json"`` for ``json_object``, the schema itself for ``json_schema``."""
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return plain(schema) if isinstance(schema, Mapping) else "json"
    return None


def tool_definition(tool: ToolDefinition) -> dict[str, Any]:
    """A tool as Ollama's ``tools`` entry (the OpenAI function shape)."""
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": plain(tool.parameters)},
    }


def chat_messages(system_prompt: str, messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The conversation in Ollama's shape: the system prompt first, tool calls and results in its format.

    A tool result names the tool it answers (``tool_name``), found from the
    assistant message that made the call; a failed tool's result says so,
    since Ollama has no error flag.
    """
    chat: list[dict[str, Any]] = []
    if system_prompt:
        chat.append({"role": "system", "content": system_prompt})
    call_names: dict[str, str] = {}
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            call_names.update((call.id, call.name) for call in message.tool_calls)
            chat.append({
                "role": "assistant",
                "content": message.content,
                "tool_calls": [
                    {"function": {"name": call.name, "arguments": plain(call.arguments)}}
                    for call in message.tool_calls
                ],
            })
        elif message.role == "tool":
            entry = {"role": "tool", "content": f"Error: {message.content}" if message.is_error else message.content}
            name = call_names.get(message.tool_call_id or "")
            if name:
                entry["tool_name"] = name
            chat.append(entry)
        else:
            chat.append({"role": message.role, "content": message.content})
    return chat


def chat_body(request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
    """The JSON body of one ``POST /api/chat``."""
    llm_config = request.llm_config
    body: dict[str, Any] = {
        "model": llm_config.model,
        "messages": chat_messages(request.system_prompt, request.messages),
        "stream": stream,
        "options": chat_options(llm_config),
    }
    if request.tools:
        body["tools"] = [tool_definition(tool) for tool in request.tools]
    answer_format = output_format(llm_config.response_format)
    if answer_format is not None:
        body["format"] = answer_format
    return body


def plain(value: Any) -> Any:
    """``value`` with every mapping a dict and every sequence a list, so it serialises as JSON."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


# --- The answer --------------------------------------------------------------------------


def tool_arguments(value: Any) -> dict[str, Any]:
    """Arguments as a dict; text that is not a JSON object is kept as ``{"_raw": text}`` for the tool layer."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return plain(value)
    text = value if isinstance(value, str) else json.dumps(value)
    if not text.strip():
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_raw": text}


def tool_call(raw: Any, index: int) -> ToolCall:
    """One of Ollama's ``message.tool_calls``. Ollama gives no id (older servers): make a stable one."""
    raw = raw if isinstance(raw, Mapping) else {}
    function = raw.get("function") if isinstance(raw.get("function"), Mapping) else {}
    name = str(function.get("name") or "")
    call_id = raw.get("id")
    return ToolCall(id=str(call_id) if call_id else f"call_{index}_{name}", name=name,
                    arguments=tool_arguments(function.get("arguments")))


@attrs.define
class Answer:
    """An answer put together from one JSON object (``stream: false``) or from NDJSON chunks."""

    text: list[str] = attrs.field(factory=list)
    tool_calls: list[ToolCall] = attrs.field(factory=list)
    model: str = ""
    done: bool = False
    done_reason: str = "stop"
    usage: Usage = attrs.field(factory=Usage)

    def add(self, chunk: Mapping[str, Any]) -> str:
        """Take one chunk and return its text delta; the ``done`` chunk brings the counts."""
        message = chunk.get("message")
        message = message if isinstance(message, Mapping) else {}
        delta = message.get("content") if isinstance(message.get("content"), str) else ""
        if delta:
            self.text.append(delta)
        calls = message.get("tool_calls")
        for raw in calls if isinstance(calls, list) else ():
            self.tool_calls.append(tool_call(raw, len(self.tool_calls)))
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        if chunk.get("done"):
            self.done = True
            self.done_reason = str(chunk.get("done_reason") or "stop")
            self.usage = Usage(_count(chunk.get("prompt_eval_count")), _count(chunk.get("eval_count")))
        return delta

    @property
    def started(self) -> bool:
        return bool(self.text or self.tool_calls)

    def response(self, requested_model: str) -> CompletionResponse:
        return CompletionResponse(text="".join(self.text), tool_calls=tuple(self.tool_calls), usage=self.usage,
                                  model=self.model or requested_model, finish_reason=self.done_reason)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# --- Where the request goes ----------------------------------------------------------------


@attrs.frozen
class Endpoint:
    """An Ollama server: its URL without userinfo (safe to print) and the basic auth the userinfo held."""

    url: str
    login: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        from yarl import URL

        url = URL(base_url)
        safe = url.with_user(None).with_query(None).with_fragment(None)
        return cls(str(safe).rstrip("/"), url.user, url.password)

    @property
    def chat_url(self) -> str:
        return self.url + "/api/chat"

    def headers(self) -> dict[str, str]:
        if self.login is None:
            return {}
        token = base64.b64encode(f"{self.login}:{self.password or ''}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    def redact(self, text: str) -> str:
        """``text`` (from the server or the network) with the userinfo's secret masked."""
        secret = self.password or self.login
        if secret:
            for form in {secret, quote(secret, safe=""), quote(secret)}:
                text = text.replace(form, "***")
        return text

    def shown(self, text: str) -> str:
        """Text from the server as a message may show it: masked (before and after), on one short line."""
        text = " ".join(self.redact(text).split())
        return self.redact(text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "…")


@attrs.frozen
class ChatCall:
    """One ``/api/chat`` call: where it goes, how long it may take, the model it asks for."""

    endpoint: Endpoint
    timeout: float
    model: str


# --- Errors ------------------------------------------------------------------------------


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds, from delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def error_text(error: Any) -> str:
    """The text of an ``error`` value: Ollama's string, or the ``message`` of an OpenAI-style object."""
    if isinstance(error, Mapping) and error.get("message"):
        error = error["message"]
    return error if isinstance(error, str) else json.dumps(error)


def error_detail(body: str) -> str:
    """What the server said: Ollama's ``{"error": ...}`` text, else the body itself."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, Mapping) and payload.get("error"):
        return error_text(payload["error"])
    return body


def status_error(status: int, body: str, retry_after: str | None, call: ChatCall) -> ProviderError:
    """The ProviderError of an HTTP error status: retryable for 408, 429 and 5xx."""
    detail = call.endpoint.shown(error_detail(body))
    retryable = status in RETRYABLE_STATUSES or status >= 500
    url = call.endpoint.url
    lowered = detail.lower()
    if status == 404 and "model" in lowered and "not found" in lowered:
        message = f"ollama: model '{call.model}' not found (404) on {url}: run `ollama pull {call.model}` there first"
    else:
        words = STATUS_WORDS.get(status) or ("server error" if status >= 500 else "request failed")
        message = f"ollama: {words} ({status})" + (f": {detail}" if detail else "")
        if status == 404:
            message += f" (is {url} an Ollama server? its chat API is {call.endpoint.chat_url})"
        elif status in (401, 403) and call.endpoint.login is not None:
            message += " (check the user and password in the base URL)"
        elif status in (401, 403):
            message += (" (a protected Ollama server takes its credentials in the base URL: "
                        f"http://user:password@{_host(url)})")
    return ProviderError(message, retryable=retryable,
                         retry_after=retry_after_seconds(retry_after) if retryable else None, status=status)


def transport_error(exc: BaseException, call: ChatCall, *, started: bool = False) -> ProviderError:
    """The ProviderError of a network failure; the message names the URL without its userinfo."""
    import aiohttp

    url = call.endpoint.url
    if isinstance(exc, TimeoutError):
        if started:
            return ProviderError(f"ollama: the answer from {url} stalled for {call.timeout:g} s (timeout)",
                                 retryable=True)
        return ProviderError(f"ollama: no answer within {call.timeout:g} s (timeout) from {url}", retryable=True)
    if isinstance(exc, aiohttp.InvalidURL):
        return ProviderError(f"ollama: invalid base URL {url}", retryable=False)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ProviderError(f"ollama: the TLS certificate of {url} is not trusted: "
                             f"{call.endpoint.shown(str(exc.certificate_error))}", retryable=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = call.endpoint.shown(exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__)
        return ProviderError(f"ollama: cannot connect to {url}: {reason} (is Ollama running at {url}?)",
                             retryable=True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ProviderError(f"ollama: the connection to {url} broke off in the middle of the answer", retryable=True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ProviderError(f"ollama: {url} closed the connection before answering", retryable=True)
    reason = call.endpoint.shown(str(exc) or type(exc).__name__)
    return ProviderError(f"ollama: the connection to {url} failed: {reason}", retryable=True)


def model_error(error: Any, call: ChatCall) -> ProviderError:
    """An ``{"error": ...}`` in a 200 answer (a stream's line, mostly): the model failed while answering.

    Worth another try: it is the server's failure (a crashed runner, memory), not the request's.
    """
    detail = call.endpoint.shown(error_text(error))
    return ProviderError(f"ollama: the model failed while answering: {detail}", retryable=True)


def _host(url: str) -> str:
    return url.split("://", 1)[-1]


def decode_json(data: bytes, call: ChatCall) -> dict[str, Any]:
    """One JSON object of Ollama's answer; anything else means the URL is not an Ollama server."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        snippet = call.endpoint.shown(data.decode("utf-8", errors="replace"))
        raise ProviderError(f"ollama: {call.endpoint.chat_url} did not answer with Ollama's JSON: {snippet}",
                            retryable=False)
    return value


async def _error_body(response: aiohttp.ClientResponse) -> str:
    """The start of an error response's body; a body that cannot be read is just left out."""
    import aiohttp

    data = b""
    try:
        while len(data) < MAX_ERROR_BYTES:
            piece = await response.content.read(MAX_ERROR_BYTES - len(data))
            if not piece:
                break
            data += piece
    except (aiohttp.ClientError, TimeoutError):
        pass
    return data.decode("utf-8", errors="replace")


async def _ndjson(content: aiohttp.StreamReader, call: ChatCall) -> AsyncIterator[dict[str, Any]]:
    """The objects of an NDJSON body, one per line, as their bytes arrive (lines may be split anywhere)."""
    buffer = b""
    async for data in content.iter_any():
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield decode_json(line, call)
    if buffer.strip():
        yield decode_json(buffer, call)


# --- The provider ------------------------------------------------------------------------


class OllamaProvider:
    """Chat with a model served by Ollama, with native tool calling and streaming."""

    name = NAME
    supported_options = SUPPORTED_OPTIONS

    def __init__(self) -> None:
        self._base_url = DEFAULT_BASE_URL
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def configure(self, settings: Any) -> None:
        """Remember ``OLLAMA_BASE_URL``; nothing is opened before the first request."""
        self._base_url = getattr(settings, "ollama_base_url", None) or DEFAULT_BASE_URL

    def validate(self, llm_config: Any) -> list[tuple[str, str]]:
        """Values the schema accepts that cannot work with Ollama."""
        problems: list[tuple[str, str]] = []
        response_format = llm_config.response_format
        if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema")
            if not (isinstance(spec, Mapping) and isinstance(spec.get("schema"), Mapping)):
                problems.append(("response_format.json_schema.schema",
                                 "required by provider 'ollama': the JSON Schema the answer must follow"))
        if llm_config.base_url:
            from yarl import URL

            path = URL(llm_config.base_url).path.strip("/")
            if path == "v1" or path.endswith("/v1"):
                problems.append(("base_url", "ends with /v1, Ollama's OpenAI-compatible API; provider 'ollama' "
                                             "uses the native API at the server's root (e.g. http://localhost:11434)"))
            elif path in ("api", "api/chat") or path.endswith(("/api", "/api/chat")):
                problems.append(("base_url", "provider 'ollama' adds /api/chat itself: give the server's root "
                                             "(e.g. http://localhost:11434)"))
        return problems

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """One ``POST /api/chat`` with ``stream: false``; the whole answer at once."""
        import aiohttp

        call = self._call(request)
        session = await self._session()
        failure: ProviderError | None = None
        try:
            async with session.post(call.endpoint.chat_url, json=chat_body(request, stream=False),
                                    headers=call.endpoint.headers(),
                                    timeout=aiohttp.ClientTimeout(total=call.timeout)) as response:
                if response.status >= 400:
                    raise status_error(response.status, await _error_body(response),
                                       response.headers.get("Retry-After"), call)
                data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Built here, raised below: the aiohttp exception is not chained to what reaches the logs.
            failure = transport_error(exc, call)
        if failure is not None:
            raise failure
        payload = decode_json(data, call)
        if "error" in payload:
            raise model_error(payload["error"], call)
        answer = Answer()
        answer.add(payload)
        return answer.response(call.model)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | CompletionResponse]:
        """One ``POST /api/chat`` with ``stream: true``: text deltas as the NDJSON lines arrive, then the answer.

        ``timeout`` bounds each wait for the server (the first line included),
        not the whole answer, so a long answer that keeps coming is not cut off.
        """
        import aiohttp

        call = self._call(request)
        session = await self._session()
        answer = Answer()
        failure: ProviderError | None = None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=call.timeout, sock_read=call.timeout)
        try:
            async with session.post(call.endpoint.chat_url, json=chat_body(request, stream=True),
                                    headers=call.endpoint.headers(), timeout=timeout) as response:
                if response.status >= 400:
                    raise status_error(response.status, await _error_body(response),
                                       response.headers.get("Retry-After"), call)
                async with contextlib.aclosing(_ndjson(response.content, call)) as chunks:
                    async for chunk in chunks:
                        if answer.done:  # read to the end all the same, so the connection can be reused
                            continue
                        if "error" in chunk:
                            raise model_error(chunk["error"], call)
                        delta = answer.add(chunk)
                        if delta:
                            yield delta
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = transport_error(exc, call, started=answer.started)
        if failure is not None:
            raise failure
        if not answer.done:
            raise ProviderError(f"ollama: the answer from {call.endpoint.url} ended before it was complete",
                                retryable=True)
        yield answer.response(call.model)

    async def aclose(self) -> None:
        """Close the pooled connections of every event loop that used this provider."""
        current = asyncio.get_running_loop()
        sessions, self._sessions = self._sessions, {}
        for loop, session in sessions.items():
            if loop is current or loop.is_closed():
                await session.close()
            elif loop.is_running():
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(session.close(), loop))
            else:  # an idle loop of another owner: its session can only be closed from that loop
                self._sessions[loop] = session

    def _call(self, request: CompletionRequest) -> ChatCall:
        llm_config = request.llm_config
        source = "llm_config.base_url" if llm_config.base_url else "OLLAMA_BASE_URL"
        try:
            endpoint = Endpoint.parse(llm_config.base_url or self._base_url)
        except (TypeError, ValueError):
            endpoint = None
        if endpoint is None:
            raise ProviderError(f"ollama: {source} is not a valid URL", retryable=False)
        return ChatCall(endpoint=endpoint, timeout=request_timeout(llm_config), model=llm_config.model)

    async def _session(self) -> aiohttp.ClientSession:
        """This event loop's session, created on first use; sessions of closed loops are dropped, never reused."""
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for other, stale in list(self._sessions.items()):
                if other.is_closed():
                    del self._sessions[other]
                    await stale.close()  # with its loop gone this only marks it closed; nothing of the dead loop runs
            session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
            self._sessions[loop] = session
        return session
