"""What every HTTP service shares: JSON errors, API-key auth, strict JSON request bodies, /health."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from agentrunner.interfaces import StoreUnavailable
from agentrunner.redaction import Redactor
from agentrunner.runtime import Platform

log = logging.getLogger("agentrunner.http")

#: Largest request body any service accepts (agent YAML included).
MAX_BODY_BYTES = 1024 * 1024
#: Deepest JSON nesting a request body may have.
MAX_JSON_DEPTH = 32

PLATFORM: web.AppKey[Platform] = web.AppKey("platform", Platform)
SERVICE: web.AppKey[str] = web.AppKey("service", str)


class ApiError(web.HTTPException):
    """An error answered as ``{"error": {"code": ..., "message": ...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(headers=headers, text=json.dumps({"error": {"code": code, "message": message}}),
                         content_type="application/json")


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", what)


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 429: "too_many_requests",
                 503: "unavailable"}


@web.middleware
async def metrics_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Counts every answer by service and status (the outermost middleware: errors are counted too)."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = getattr(request.app[PLATFORM], "metrics", None)
        if metrics is not None:
            metrics.http_request(request.app[SERVICE], status)


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Every failure becomes a JSON error; an unexpected one is logged, never shown."""
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "payload_too_large",
                       f"the request body is larger than {MAX_BODY_BYTES} bytes") from None
    except StoreUnavailable:
        log.exception("%s %s: the state store is unavailable", request.method, request.path)
        raise ApiError(503, "unavailable", "the state store is unavailable; try again later",
                       headers={"Retry-After": "5"}) from None
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        raise ApiError(exc.status, code, exc.reason, headers={k: v for k, v in exc.headers.items()
                                                              if k.lower() in ("allow", "retry-after")}) from None
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        raise ApiError(500, "internal_error", "the request could not be completed; see the server log") from None


def auth_middleware(settings: Any):
    """Require ``API_KEY_HEADER`` to hold one of the keys in ``API_KEY`` (comma-separated, for rotation).

    Keys are compared in constant time; ``/health`` stays open. ``exempt`` paths
    (the Slack webhook, which Slack's signature protects) are skipped too.
    """
    header = settings.api_key_header
    raw = settings.api_key.get_secret_value() if settings.api_key else ""
    keys = [key.strip().encode() for key in raw.split(",") if key.strip()]

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path == "/health" or request.path in request.app.get(AUTH_EXEMPT, ()):
            return await handler(request)
        # surrogateescape: a header with non-UTF-8 bytes is a wrong key (401), not a server error
        given = request.headers.get(header, "").encode("utf-8", "surrogateescape")
        # compare with every key, whatever matches, so timing says nothing about which one
        valid = False
        for key in keys:
            valid |= hmac.compare_digest(given, key)
        if not given or not valid:
            raise ApiError(401, "unauthorized", f"a valid API key is required in the {header} header")
        return await handler(request)

    return middleware


AUTH_EXEMPT: web.AppKey[tuple[str, ...]] = web.AppKey("auth_exempt", tuple)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, stopping early past ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; accepted, they would make the responses invalid JSON too
    raise ValueError(f"{name} is not a JSON value")


#: JSON type names used in body schemas.
_TYPES: dict[str, tuple[type, ...]] = {
    "any": (object,), "object": (dict,), "string": (str,), "number": (int, float), "array": (list,),
    "boolean": (bool,),
}


#: one decoder for every request (json.loads with options builds a new one per call)
_DECODER = json.JSONDecoder(parse_constant=lambda name: _refuse_constant(name))


async def read_json(request: web.Request, fields: Mapping[str, str], required: tuple[str, ...] = ()) -> dict:
    """The request's JSON object, checked: content type, size, depth, known fields and their types.

    ``fields`` maps each accepted field to its JSON type (``any``, ``object``,
    ``string``, ``number``, ``array``, ``boolean``); ``null`` is accepted for an
    optional field and means "not given".
    """
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"request bodies must be application/json (got {request.content_type or 'none'})")
    try:
        text = (await request.read()).decode("utf-8")
        body = _DECODER.decode(text) if text.strip() else None
    except RecursionError:  # the C decoder gives up long before 1 MiB of "[" ends
        raise ApiError(400, "bad_request", f"the request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise ApiError(400, "invalid_json", f"the request body is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the request body must be a JSON object")
    if _depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ApiError(400, "bad_request", f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
    for name, value in body.items():
        if name not in fields:
            raise ApiError(400, "unknown_field",
                           f"unknown field {name!r} in request body (accepted: {', '.join(fields)})")
        expected = _TYPES[fields[name]]
        is_bool = isinstance(value, bool)
        if value is not None and (not isinstance(value, expected) or (is_bool and bool not in expected)):
            raise ApiError(400, "bad_request", f"field {name!r} must be of type {fields[name]}")
    for name in required:
        if body.get(name) is None:
            raise ApiError(400, "bad_request", f"field {name!r} is required")
    return {name: value for name, value in body.items() if value is not None}


async def health(request: web.Request) -> web.Response:
    """``GET /health``: each dependency's status; 503 when the store or the bus is down.

    The AgentOrchestrator also reports the StateManager and the ConfigurationService when they run in
    other processes (``serve --service``), at ``STATE_MANAGER_HOST`` / ``CONFIG_SERVICE_HOST`` and their
    ports: one that does not answer makes it ``degraded`` (it still runs tasks: every service reads
    the store itself).
    """
    platform = request.app[PLATFORM]
    report = await platform.health()
    report["service"] = request.app[SERVICE]
    peers = getattr(platform, "peer_services", {}) if request.app[SERVICE] == "AgentOrchestrator" else {}
    if peers:
        report["services"] = {name: await _peer_health(url) for name, url in sorted(peers.items())}
        if report["status"] == "ok" and any(peer["status"] != "ok" for peer in report["services"].values()):
            report["status"] = "degraded"
    return web.json_response(report, status=503 if report["status"] == "down" else 200)


#: seconds a peer service gets to answer its /health
PEER_TIMEOUT = 2.0


async def _peer_health(url: str) -> dict[str, Any]:
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT)) as session:
            async with session.get(f"{url}/health") as response:
                status = "ok" if response.status == 200 else "down"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"status": "down", "url": url, "error": type(exc).__name__}
    return {"status": status, "url": url}


# --- Keeping secrets out of responses (agentrunner.redaction) -------------------

REDACTOR: web.AppKey[Redactor] = web.AppKey("redactor", Redactor)


def make_app(platform: Any, service: str) -> web.Application:
    """An application with the shared middlewares and ``GET /health``."""
    from agentrunner.web.security import rate_limit_middleware

    middlewares = [metrics_middleware, error_middleware]
    if platform.settings.rate_limit_enabled:  # before auth: floods of bad keys are limited too
        middlewares.append(rate_limit_middleware(platform.settings))
    if platform.settings.api_auth_enabled:
        middlewares.append(auth_middleware(platform.settings))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[PLATFORM] = platform
    app[SERVICE] = service
    app[REDACTOR] = Redactor.from_settings(platform.settings)
    app.router.add_get("/health", health)
    return app
