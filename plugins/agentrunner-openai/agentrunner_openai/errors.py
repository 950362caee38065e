"""The SDK's exceptions as ``ProviderError``s: what happened in plain words, whether to retry,
how long the server asked to wait, and never a credential."""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agentrunner.interfaces import ProviderError

PREFIX = "openai"
MAX_DETAIL = 500

_STATUS_WORDS = {
    400: "bad request",
    401: "authentication failed",
    403: "permission denied",
    404: "not found",
    408: "request timed out on the server",
    409: "conflict",
    413: "request too large",
    422: "unprocessable request",
    429: "rate limited",
    500: "server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
    529: "overloaded",
}
# OpenAI asks clients to retry these; every other 4xx means the request itself must change.
_RETRYABLE_4XX = frozenset({408, 409, 429})
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@")
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*]{6,}")


def display_url(url: str) -> str:
    """``url`` fit for a message: no user, password, query or fragment (they may hold credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return _USERINFO.sub(r"\g<scheme>", url).split("?", 1)[0]
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given secrets, URL passwords or anything shaped like an OpenAI key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _USERINFO.sub(r"\g<scheme>", text)
    return _KEY_LIKE.sub("sk-***", text)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date."""
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return max(0.0, number) if math.isfinite(number) else None


def _detail(body: Any) -> str:
    """The server's own explanation: ``error.message`` of a JSON body, else the start of its text."""
    if isinstance(body, Mapping):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, Mapping) else error
        text = message if isinstance(message, str) else ""
    elif isinstance(body, str):
        text = body
    else:
        text = ""
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "…"


def _reason(exc: BaseException) -> str:
    """What the transport said, e.g. ``All connection attempts failed``."""
    cause = exc.__cause__ or exc.__context__
    if cause is None:
        return str(exc) or type(exc).__name__
    return " ".join(str(cause).split()) or type(cause).__name__


def provider_error(exc: Exception, *, base_url: str, timeout: float, secrets: Iterable[str] = ()) -> ProviderError:
    """The ``ProviderError`` for an exception of the ``openai`` SDK (or of its transport, ``httpx2``)."""
    import httpx2
    import openai

    secrets = tuple(secrets)
    url = display_url(base_url)
    status: int | None = None
    wait: float | None = None
    if isinstance(exc, openai.APITimeoutError):
        if isinstance(exc.__cause__, httpx2.ConnectTimeout):
            message, retryable = f"cannot connect to {url} within {timeout:g} s (timeout)", True
        else:
            message, retryable = f"no answer within {timeout:g} s (timeout)", True
    elif isinstance(exc, openai.APIConnectionError):
        if isinstance(exc.__cause__, httpx2.ConnectError):
            message = f"cannot connect to {url}: {_reason(exc)}"
        else:
            message = f"connection to {url} failed: {_reason(exc)}"
        retryable = True
    elif isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        words = _STATUS_WORDS.get(status) or ("server error" if status >= 500 else "request failed")
        retryable = status >= 500 or status in _RETRYABLE_4XX
        detail = _detail(exc.body)
        message = f"{words} ({status})" + (f": {detail}" if detail else "")
        if retryable:
            wait = retry_after(exc.response.headers)
            if wait is not None:
                message += f"; retry after {wait:g} s"
    elif isinstance(exc, openai.APIResponseValidationError):
        message, retryable = f"unexpected answer from {url}: {exc.message}", False
    elif isinstance(exc, openai.APIError):
        # An error event inside a streamed answer: the server gave up part-way.
        detail = _detail(exc.body) or exc.message
        message, retryable = f"the answer was interrupted: {detail}", True
    elif isinstance(exc, httpx2.TimeoutException):
        message, retryable = f"no answer within {timeout:g} s (timeout)", True
    elif isinstance(exc, httpx2.RequestError):
        message, retryable = f"connection to {url} failed: {' '.join(str(exc).split()) or type(exc).__name__}", True
    else:
        message, retryable = f"{type(exc).__name__}: {exc}", False
    return ProviderError(scrub(f"{PREFIX}: {message}", secrets), retryable=retryable, retry_after=wait,
                         status=status)


def unexpected_answer(base_url: str, why: str) -> ProviderError:
    """A 200 that is not a Chat Completions answer: usually a base URL that names another kind of server."""
    return ProviderError(f"{PREFIX}: unexpected answer from {display_url(base_url)}: {why} "
                         "(is the base URL an OpenAI-compatible /v1 endpoint?)", retryable=False)
