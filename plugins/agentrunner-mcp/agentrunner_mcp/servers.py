"""Where an MCP server is, how to reach it, and how to talk about it without revealing a secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

import attrs

STDIO = "stdio"
STREAMABLE_HTTP = "streamable-http"
SSE = "sse"

#: shorter values are left in messages: replacing "1" or "on" everywhere would garble them and hides nothing
MIN_SECRET_LENGTH = 4


def public_url(url: str) -> str:
    """A URL as it may be shown: scheme, host, port and path; no user info, no query (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}{parts.path}"


def transport_of(url: str | None) -> str:
    """``stdio`` without a URL; SSE for a URL whose path ends in ``/sse``; streamable HTTP for any other URL."""
    if not url:
        return STDIO
    return SSE if urlsplit(url).path.rstrip("/").endswith("/sse") else STREAMABLE_HTTP


def auth_key(auth: Any) -> tuple:
    """The parts of an ``AuthConfig`` that make two servers' credentials differ (hashable)."""
    if auth is None:
        return ()
    return (auth.type, auth.token, auth.key, auth.header, auth.token_url, auth.client_id, auth.client_secret,
            tuple(auth.scopes or ()))


@attrs.frozen
class Server:
    """One MCP server as a tool entry describes it; ``key`` identifies the pooled session it shares.

    ``where`` names the server in messages and logs; ``secrets`` are the values that must never
    appear in them (header and env values, credentials, the URL's user info and query).
    ``timeout`` bounds each request to the server (a tool listing, a call).
    """

    transport: str
    where: str
    # repr=False: the key, the URL (its query), headers, args and env may all hold secrets
    key: tuple = attrs.field(repr=False)
    url: str | None = attrs.field(default=None, repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    auth: Any = None  # AuthConfig keeps its secrets out of its repr
    command: str | None = None
    args: tuple[str, ...] = attrs.field(default=(), repr=False)
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)
    timeout: float = 30.0

    @classmethod
    def from_tool(cls, tool: Any) -> Server:
        """The server of a validated ``mcp`` tool entry (``agentrunner.schema.ToolConfig``)."""
        if tool.command:
            env = dict(tool.env or {})
            args = tuple(tool.args or ())
            return cls(transport=STDIO, where=f"{tool.command} (stdio)",
                       key=(STDIO, tool.command, args, tuple(sorted(env.items()))),
                       command=tool.command, args=args, env=env, secrets=_secrets(env.values()), timeout=tool.timeout)
        url = tool.url
        headers = dict(tool.headers or {})
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        # the query as written, and each value as written and as an HTTP client re-encodes it
        credentials: list[str | None] = [*headers.values(), parts.password, parts.username, parts.query,
                                         *(value for _, value in query), *(quote(value) for _, value in query),
                                         *(quote_plus(value) for _, value in query)]
        if tool.auth is not None:
            credentials += [tool.auth.token, tool.auth.key, tool.auth.client_secret]
        return cls(transport=transport_of(url), where=public_url(url),
                   key=("url", url, tuple(sorted(headers.items())), auth_key(tool.auth)),
                   url=url, headers=headers, auth=tool.auth, secrets=_secrets(credentials), timeout=tool.timeout)

    def scrub(self, text: str, extra: tuple[str, ...] = ()) -> str:
        """``text`` with every secret of this server (and ``extra`` ones) replaced by ``***``."""
        for secret in sorted({*self.secrets, *_secrets(extra)}, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def _secrets(values: Any) -> tuple[str, ...]:
    unique = dict.fromkeys(value for value in values if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH)
    return tuple(unique)
