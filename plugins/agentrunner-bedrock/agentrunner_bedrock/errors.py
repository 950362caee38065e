"""Bedrock failures as ``ProviderError``: what happened in plain words, and whether retrying can help.

botocore and aiohttp are imported inside :func:`provider_error` so that importing the plugin
stays cheap (``agentrunner --help`` loads every plugin).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agentrunner.interfaces import ProviderError

PREFIX = "bedrock: "

#: Bedrock error codes (lower-cased: exception events in a stream spell them camelCase)
#: → (HTTP status Bedrock gives them, what happened, whether a retry can succeed).
ERROR_CODES: dict[str, tuple[int, str, bool]] = {
    "throttlingexception": (429, "rate limited", True),
    "modelnotreadyexception": (429, "model not ready", True),
    "servicequotaexceededexception": (400, "service quota exceeded", False),
    "internalserverexception": (500, "server error", True),
    "serviceunavailableexception": (503, "service unavailable", True),
    "modeltimeoutexception": (408, "the model did not answer in time", True),
    "modelstreamerrorexception": (424, "the model's stream failed", True),
    "modelerrorexception": (424, "the model failed", False),
    "validationexception": (400, "bad request", False),
    "accessdeniedexception": (403, "access denied", False),
    "unrecognizedclientexception": (403, "authentication failed", False),
    "invalidsignatureexception": (403, "authentication failed", False),
    "signaturedoesnotmatch": (403, "authentication failed", False),
    "incompletesignature": (403, "authentication failed", False),
    "missingauthenticationtoken": (403, "authentication failed", False),
    "expiredtokenexception": (403, "authentication failed", False),
    "resourcenotfoundexception": (404, "not found", False),
}

_STATUS_WORDS = {
    400: "bad request", 401: "authentication failed", 403: "access denied", 404: "not found",
    408: "request timeout", 413: "request too large", 422: "unprocessable request", 429: "rate limited",
    500: "server error", 502: "bad gateway", 503: "service unavailable", 504: "gateway timeout",
    529: "overloaded",
}

_AUTH_HINT = "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


def safe_url(url: str) -> str:
    """``url`` without user name and password, fit for a message."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every credential replaced by ``***``, whatever a server chose to echo."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def provider_error(exc: Exception, *, endpoint: str, timeout: float, secrets: Iterable[str]) -> ProviderError | None:
    """The ``ProviderError`` for an SDK or network failure, or None for anything else (a bug to surface).

    The message is built from the error's parts, never from ``str(exc)`` alone, and credentials
    are redacted from whatever text the server sent back.
    """
    import aiohttp
    from botocore import exceptions as boto
    from botocore.eventstream import ParserError

    secrets = [s for s in secrets if s]
    endpoint = safe_url(endpoint)
    if isinstance(exc, boto.ClientError):
        return _client_error(exc, secrets)
    if isinstance(exc, boto.ReadTimeoutError | asyncio.TimeoutError):
        return ProviderError(f"{PREFIX}no answer within {timeout:g} s (timeout)", retryable=True)
    if isinstance(exc, boto.ConnectTimeoutError):
        return ProviderError(f"{PREFIX}cannot connect to {endpoint}: no connection within {timeout:g} s (timeout)",
                             retryable=True)
    if isinstance(exc, boto.SSLError):
        reason = redact(str(exc.kwargs.get("error", "")), secrets)
        return ProviderError(f"{PREFIX}TLS handshake with {endpoint} failed: {reason}")
    if isinstance(exc, boto.ConnectionClosedError | aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return ProviderError(f"{PREFIX}the connection to {endpoint} closed before the answer was complete",
                             retryable=True)
    if isinstance(exc, boto.ConnectionError | boto.HTTPClientError | aiohttp.ClientError):
        reason = exc.kwargs.get("error") if isinstance(exc, boto.BotoCoreError) else exc
        reason = redact(str(reason or "") or type(exc).__name__, secrets)
        return ProviderError(f"{PREFIX}cannot connect to {endpoint}: {reason}", retryable=True)
    if isinstance(exc, boto.NoCredentialsError):
        return ProviderError(f"{PREFIX}no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set "
                             "and the AWS credential chain (environment, shared files, instance role) found none")
    if isinstance(exc, boto.PartialCredentialsError):
        return ProviderError(f"{PREFIX}incomplete AWS credentials: {redact(str(exc), secrets)}")
    if isinstance(exc, boto.ParamValidationError):
        return ProviderError(f"{PREFIX}invalid request: {redact(str(exc.kwargs.get('report', exc)), secrets)}")
    if isinstance(exc, ParserError):
        return ProviderError(f"{PREFIX}malformed event stream from {endpoint}: {type(exc).__name__}",
                             retryable=True)
    return None


def _client_error(exc: Any, secrets: list[str]) -> ProviderError:
    """A Bedrock error answer (HTTP status or exception event of a stream)."""
    error = exc.response.get("Error", {}) or {}
    metadata = exc.response.get("ResponseMetadata", {}) or {}
    code = str(error.get("Code") or "")
    known = ERROR_CODES.get(code.lower())
    status = metadata.get("HTTPStatusCode")
    if not isinstance(status, int) or status == 200:  # an exception event inside a 200 stream
        status = known[0] if known else None
    if known is not None and (status is None or status == known[0]):
        _, words, retryable = known
    else:
        words = _STATUS_WORDS.get(status or 0, "error")
        retryable = status is not None and (status in (408, 429) or status >= 500)
    detail = redact(str(error.get("Message") or error.get("message") or "").strip(), secrets)
    if words == "authentication failed":
        detail = f"{detail} ({_AUTH_HINT})" if detail else _AUTH_HINT
    where = ", ".join(str(part) for part in (status, code) if part) or "no status"
    message = f"{PREFIX}{words} ({where})" + (f": {detail}" if detail else "")
    headers = metadata.get("HTTPHeaders") or {}
    return ProviderError(message, retryable=retryable, retry_after=retry_after(headers) if retryable else None,
                         status=status)
