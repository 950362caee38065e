"""Credentials of a tool's ``auth``: the headers a request to the tool carries.

``bearer_token`` sends ``Authorization: Bearer <token>``; ``api_key`` sends the
key in ``header`` (default ``X-API-Key``); ``oauth2`` runs the client-credentials
grant against ``token_url`` and sends the access token as a bearer token. OAuth2
tokens are cached until shortly before they expire and shared by every tool entry
with the same client; ``invalidate`` drops one after the tool answered 401, so the
next request fetches a new one (callers retry once).

Used by the ``api`` tool type and by tool plugins (``agentrunner-mcp``) for
remote servers. No message of this module ever holds a secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs

#: seconds before its expiry a cached token is replaced
EXPIRY_MARGIN = 30.0
#: a token answer without ``expires_in`` is kept this long
DEFAULT_TOKEN_LIFETIME = 300.0
#: the token endpoint must answer within this many seconds
TOKEN_TIMEOUT = 30.0


class AuthError(Exception):
    """The credentials could not be obtained (the token endpoint refused or failed)."""


@attrs.define
class _Token:
    value: str
    expires_at: float


def _where(url: str) -> str:
    """A URL as it may be shown: no user info, no query (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class ToolAuth:
    """Headers for tool requests, with an OAuth2 token cache. One per tool type (or per platform)."""

    def __init__(self) -> None:
        self._tokens: dict[tuple, _Token] = {}
        self._locks: dict[tuple, asyncio.Lock] = {}

    async def headers(self, auth: Any, session: aiohttp.ClientSession) -> dict[str, str]:
        """The headers ``auth`` (an ``AuthConfig`` or None) adds to a request."""
        if auth is None:
            return {}
        if auth.type == "bearer_token":
            return {"Authorization": f"Bearer {auth.token}"}
        if auth.type == "api_key":
            return {auth.header: auth.key}
        if auth.type == "oauth2":
            return {"Authorization": f"Bearer {await self.token(auth, session)}"}
        raise AuthError(f"unknown auth type {auth.type!r}")

    def invalidate(self, auth: Any) -> None:
        """Forget the cached OAuth2 token of ``auth`` (the tool answered 401 with it)."""
        if auth is not None and auth.type == "oauth2":
            self._tokens.pop(_key(auth), None)

    async def token(self, auth: Any, session: aiohttp.ClientSession) -> str:
        key = _key(auth)
        cached = self._tokens.get(key)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one fetch for all the callers that found no token
            cached = self._tokens.get(key)
            if cached is not None and cached.expires_at > time.monotonic():
                return cached.value
            token = await _fetch_token(auth, session)
            self._tokens[key] = token
            return token.value


def _key(auth: Any) -> tuple:
    return (auth.token_url, auth.client_id, auth.client_secret, tuple(auth.scopes or ()))


async def _fetch_token(auth: Any, session: aiohttp.ClientSession) -> _Token:
    """The client-credentials grant (RFC 6749 §4.4), client authenticated with HTTP Basic."""
    form: dict[str, str] = {"grant_type": "client_credentials"}
    if auth.scopes:
        form["scope"] = " ".join(auth.scopes)
    where = _where(auth.token_url)
    try:
        basic = base64.b64encode(f"{auth.client_id or ''}:{auth.client_secret or ''}".encode()).decode()
        async with session.post(auth.token_url, data=form,
                                headers={"Accept": "application/json", "Authorization": f"Basic {basic}"},
                                timeout=aiohttp.ClientTimeout(total=TOKEN_TIMEOUT)) as response:
            body = await response.read()
            status = response.status
    except TimeoutError:
        raise AuthError(f"the OAuth2 token endpoint {where} did not answer within {TOKEN_TIMEOUT:g} s") from None
    except aiohttp.ClientError as exc:
        raise AuthError(f"cannot reach the OAuth2 token endpoint {where}: {type(exc).__name__}") from None
    if status != 200:
        raise AuthError(f"the OAuth2 token endpoint {where} refused the client credentials (HTTP {status})")
    try:
        data = _json(body)
        value = data["access_token"]
        lifetime = float(data.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"the OAuth2 token endpoint {where} answered without an access_token") from None
    if not isinstance(value, str) or not value:
        raise AuthError(f"the OAuth2 token endpoint {where} answered without an access_token")
    return _Token(value, time.monotonic() + max(0.0, lifetime - EXPIRY_MARGIN))


def _json(body: bytes) -> Mapping[str, Any]:
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data
