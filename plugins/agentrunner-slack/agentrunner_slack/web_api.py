"""Outgoing calls to Slack: Web API methods and ``response_url`` posts, rate limited and retried.

Every call waits for the rate limiter (``SLACK_RATE_LIMIT_CALLS`` per ``SLACK_RATE_LIMIT_PERIOD``
seconds, when ``SLACK_RATE_LIMIT_ENABLED``), then is tried once and retried up to
``SLACK_MAX_RETRY_ATTEMPTS`` times when Slack answers 429 or 5xx (or ``ratelimited``, …) or cannot be
reached. Retry ``n`` waits ``SLACK_RETRY_DELAY × SLACK_RETRY_EXPONENTIAL_BASE^(n-1)`` seconds, or
the ``Retry-After`` Slack sent when that is longer. This is the only retry layer: the SDK clients are
built with no retry handlers of their own. An error retrying cannot fix (``channel_not_found``,
``not_in_channel``, an expired ``response_url``) is raised at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("agentrunner_slack.web_api")

#: Slack errors (in a 200 answer with ``"ok": false``) that a later attempt may not get.
RETRYABLE_ERRORS = frozenset({"ratelimited", "rate_limited", "service_unavailable", "fatal_error",
                              "internal_error", "request_timeout"})


class SlackCallError(Exception):
    """A call to Slack failed for good (after its retries, or with an error retrying cannot fix).

    ``error`` is Slack's error code when it sent one (``channel_not_found``…); the message names the
    method, never a token or a ``response_url``.
    """

    def __init__(self, message: str, *, error: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.status = status


class _Attempt(Exception):
    """One failed attempt: whether another may succeed, and how long Slack asked us to wait."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None,
                 error: str | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.retryable = retryable
        self.retry_after = retry_after
        self.error = error
        self.status = status


class RateLimiter:
    """At most ``calls`` calls in any ``period`` seconds (a sliding window), callers served in order."""

    def __init__(self, calls: int, period: float) -> None:
        self.calls = max(1, int(calls))
        self.period = float(period)
        self._started: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until one more call fits in the window, and count it."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            while True:
                now = loop.time()
                while self._started and now - self._started[0] >= self.period:
                    self._started.popleft()
                if len(self._started) < self.calls:
                    self._started.append(now)
                    return
                await asyncio.sleep(self.period - (now - self._started[0]))


def _retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` header (Slack sends whole seconds), or None."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


class SlackWebApi:
    """The gateway's way to Slack: ``call`` for Web API methods, ``respond`` for ``response_url``.

    ``client`` is a ``slack_sdk.web.async_client.AsyncWebClient`` (its token and ``base_url``,
    ``SLACK_API_URL``), ``session`` the aiohttp session the ``response_url`` posts share.
    """

    def __init__(self, settings: Any, client: Any, session: Any, sdk_log: logging.Logger) -> None:
        self._client = client
        self._session = session
        self._sdk_log = sdk_log
        self.max_retries = int(settings.slack_max_retry_attempts)
        self.retry_delay = float(settings.slack_retry_delay)
        self.exponential_base = float(settings.slack_retry_exponential_base)
        self.limiter = (RateLimiter(settings.slack_rate_limit_calls, settings.slack_rate_limit_period)
                        if settings.slack_rate_limit_enabled else None)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based): the backoff, or Slack's ``Retry-After``."""
        backoff = self.retry_delay * self.exponential_base ** (retry - 1)
        return max(backoff, retry_after or 0.0)

    async def call(self, method: str, **arguments: Any) -> dict[str, Any]:
        """Call one Web API method (``chat.postMessage``…) with JSON ``arguments``; returns Slack's answer."""
        return await self._with_retries(method, lambda: self._call_once(method, arguments))

    async def respond(self, response_url: str, body: dict[str, Any]) -> None:
        """Post a message to a slash command's ``response_url``."""
        await self._with_retries("response_url", lambda: self._respond_once(response_url, body))

    async def _with_retries(self, label: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        retry = 0
        while True:
            if self.limiter is not None:
                await self.limiter.acquire()
            try:
                return await attempt()
            except _Attempt as failure:
                if not failure.retryable:
                    raise SlackCallError(f"Slack {label} failed: {failure}", error=failure.error,
                                         status=failure.status) from None
                retry += 1
                if retry > self.max_retries:
                    raise SlackCallError(f"Slack {label} failed after {retry} attempt(s): {failure}",
                                         error=failure.error, status=failure.status) from None
                wait = self.delay(retry, failure.retry_after)
                log.warning("Slack %s: %s; retry %d of %d in %.1f s", label, failure, retry, self.max_retries, wait)
                await asyncio.sleep(wait)

    async def _call_once(self, method: str, arguments: dict[str, Any]) -> dict[str, Any]:
        import aiohttp
        from slack_sdk.errors import SlackApiError

        try:
            response = await self._client.api_call(method, json=arguments)
        except SlackApiError as exc:
            answer = exc.response
            status = getattr(answer, "status_code", None) or getattr(answer, "status", None)
            data = getattr(answer, "data", None)
            error = data.get("error") if isinstance(data, dict) else None
            retryable = status == 429 or (status or 0) >= 500 or error in RETRYABLE_ERRORS
            raise _Attempt(f"HTTP {status}" + (f", {error}" if error else ""), retryable=retryable,
                           retry_after=_retry_after(getattr(answer, "headers", None)), error=error,
                           status=status) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Attempt(f"Slack could not be reached ({type(exc).__name__})", retryable=True) from None
        return dict(response.data) if isinstance(response.data, dict) else {}

    async def _respond_once(self, response_url: str, body: dict[str, Any]) -> None:
        import aiohttp
        from slack_sdk.webhook.async_client import AsyncWebhookClient

        hook = AsyncWebhookClient(response_url, session=self._session, retry_handlers=[], logger=self._sdk_log)
        try:
            response = await hook.send_dict(body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Attempt(f"Slack could not be reached ({type(exc).__name__})", retryable=True) from None
        status = response.status_code
        if status == 200:
            return
        error = (response.body or "").strip()[:100] or None  # e.g. expired_url, used_url, no_text
        raise _Attempt(f"HTTP {status}" + (f", {error}" if error else ""), retryable=status == 429 or status >= 500,
                       retry_after=_retry_after(response.headers), error=error, status=status)
