"""What protects the HTTP services besides API keys: rate limits, CORS and TLS.

- Rate limiting (``RATE_LIMIT_ENABLED``): a token bucket per API key — or per client address
  without one — of ``RATE_LIMIT_BURST`` requests, refilled at ``RATE_LIMIT_PER_MINUTE`` a minute
  (aiolimiter's leaky bucket). Beyond it: **429** ``rate_limited`` with ``Retry-After``. ``/health``
  is never limited.
- CORS (``CORS_ENABLED``): the origins of ``CORS_ORIGINS`` may call the services from a browser with
  ``CORS_METHODS`` and ``CORS_HEADERS`` (which always admit ``API_KEY_HEADER``), through aiohttp-cors.
- TLS (``TLS_ENABLED``): every port serves HTTPS with ``TLS_CERT_PATH`` / ``TLS_KEY_PATH``, at least
  ``TLS_MIN_VERSION``, ``TLS_CIPHERS`` when set; with ``TLS_CA_PATH`` clients must present a
  certificate signed by that CA — except on the SlackGateway port, where Slack's signature protects
  the webhook and Slack presents no client certificate.
"""

from __future__ import annotations

import collections
import hashlib
import math
import ssl
from typing import Any

from aiohttp import web

from agentrunner.runtime import PlatformError

#: API keys and client addresses remembered at once; the least recently seen are forgotten first
MAX_BUCKETS = 10_000


class RateLimiter:
    """One token bucket per caller."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.per_minute = per_minute
        self.burst = burst
        self._buckets: collections.OrderedDict[str, Any] = collections.OrderedDict()

    async def allow(self, caller: str) -> bool:
        from aiolimiter import AsyncLimiter

        bucket = self._buckets.get(caller)
        if bucket is None:
            # `burst` requests per the time `burst` tokens take to refill: a bucket of size `burst`
            bucket = self._buckets[caller] = AsyncLimiter(self.burst, self.burst * 60.0 / self.per_minute)
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(caller)
        if not bucket.has_capacity():
            return False
        await bucket.acquire()  # there is capacity: this takes a token without waiting
        return True

    @property
    def retry_after(self) -> int:
        """Whole seconds until one more request is allowed."""
        return max(1, math.ceil(60.0 / self.per_minute))


def _caller(request: web.Request, header: str) -> str:
    key = request.headers.get(header)
    if key:  # never kept in clear: the bucket is named by a digest of the key
        return "key:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return "address:" + (request.remote or "unknown")


def rate_limit_middleware(settings: Any):
    """429 with Retry-After once a caller has spent its bucket (``/health`` is never limited)."""
    from agentrunner.web.common import ApiError

    limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    header = settings.api_key_header

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path != "/health" and not await limiter.allow(_caller(request, header)):
            raise ApiError(429, "rate_limited",
                           f"too many requests: at most {settings.rate_limit_burst} at once and "
                           f"{settings.rate_limit_per_minute} a minute (RATE_LIMIT_BURST, RATE_LIMIT_PER_MINUTE)",
                           headers={"Retry-After": str(limiter.retry_after)})
        return await handler(request)

    return middleware


def add_cors(app: web.Application, settings: Any) -> None:
    """Let ``CORS_ORIGINS`` call every route of ``app`` from a browser (preflights answered)."""
    import aiohttp_cors

    headers = tuple(dict.fromkeys([*settings.cors_headers, settings.api_key_header]))
    options = aiohttp_cors.ResourceOptions(allow_credentials=False, expose_headers=("Retry-After",),
                                           allow_headers=headers, allow_methods=tuple(settings.cors_methods),
                                           max_age=600)
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in settings.cors_origins})
    for route in list(app.router.routes()):
        cors.add(route)


def tls_context(settings: Any, *, client_certificates: bool = True) -> ssl.SSLContext | None:
    """The server's TLS context, or None when ``TLS_ENABLED`` is off. A certificate, key, CA or cipher
    list that cannot be loaded raises ``PlatformError`` naming the variable."""
    if not settings.tls_enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if settings.tls_min_version == "TLSv1.3" else \
        ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_path, settings.tls_key_path)
    except (OSError, ssl.SSLError) as exc:
        raise PlatformError(f"TLS_CERT_PATH / TLS_KEY_PATH: cannot load the certificate {settings.tls_cert_path} "
                         f"and its key: {exc}") from None
    if settings.tls_ciphers:
        try:
            context.set_ciphers(settings.tls_ciphers)
        except ssl.SSLError as exc:
            raise PlatformError(f"TLS_CIPHERS: {exc}") from None
    if settings.tls_ca_path and client_certificates:
        try:
            context.load_verify_locations(settings.tls_ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise PlatformError(f"TLS_CA_PATH: cannot load {settings.tls_ca_path}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
