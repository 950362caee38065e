"""The ``api`` tool type: an HTTP call to a configured URL with JSON Schema parameters.

The model supplies only the arguments — never the host: the request goes to the
tool's ``url`` with its ``method`` (GET and DELETE send the arguments as the query
string, the others as a JSON body), its ``headers`` and its ``auth``; a redirect is
followed only to the same scheme, host and port. The answer (JSON when the server
says so, text otherwise) goes back to the model; a status of 400 or more is an error
result. A body larger than ``TOOL_MAX_RESPONSE_BYTES`` is refused, so one tool
cannot flood the model's context or the process's memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import agentrunner
from agentrunner.interfaces import Tool, ToolDefinition, ToolError
from agentrunner.tool_auth import AuthError, ToolAuth
from agentrunner.tool_schema import check_arguments, schema_problem

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: same-host redirects followed before giving up
MAX_REDIRECTS = 3
#: characters of an error body shown to the model
ERROR_BODY_CHARS = 500
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _shown(url: str) -> str:
    """The URL as a message may show it: no user info, no query string (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


class ApiToolType:
    """Calls ``url`` with ``method``; the model supplies only the arguments, never the host."""

    name = "api"
    required_fields = ("url",)

    def __init__(self) -> None:
        self.max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES
        self.auth = ToolAuth()
        self._sessions: dict[asyncio.AbstractEventLoop, Any] = {}

    def configure(self, settings: Any) -> None:
        self.max_response_bytes = getattr(settings, "tool_max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)

    def validate(self, tool) -> list[tuple[str, str]]:
        problems = []
        url = urlsplit(tool.url or "")
        if url.scheme not in ("http", "https") or not url.netloc:
            problems.append(("url", f"must be an http:// or https:// URL (got {_shown(tool.url or '')!r})"))
        if tool.method and tool.method.upper() not in METHODS:
            problems.append(("method", f"must be one of {', '.join(METHODS)} (got {tool.method!r})"))
        if tool.parameters is not None:
            if tool.parameters.get("type", "object") != "object":
                problems.append(("parameters.type", "the parameters schema must describe an object"))
            else:
                problem = schema_problem(tool.parameters)
                if problem:
                    problems.append(("parameters", f"not a valid JSON Schema: {problem}"))
        return problems

    async def open(self, tool) -> list[Tool]:
        schema = tool.parameters or EMPTY_PARAMETERS

        async def call(arguments: Mapping[str, Any]) -> Any:
            check_arguments(schema, arguments)
            return await self._request(tool, dict(arguments))

        description = tool.description or f"{tool.method} {_shown(tool.url)}"
        return [Tool(ToolDefinition(tool.name, description, schema), call, timeout=tool.timeout)]

    async def aclose(self) -> None:
        sessions, self._sessions = self._sessions, {}
        loop = asyncio.get_running_loop()
        for owner, session in sessions.items():
            if owner is loop:
                await session.close()

    def _session(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for owner in [owner for owner in self._sessions if owner.is_closed()]:
                del self._sessions[owner]
            session = self._sessions[loop] = aiohttp.ClientSession()
        return session

    async def _request(self, tool: Any, arguments: dict[str, Any]) -> Any:
        import aiohttp

        session = self._session()
        for attempt in (1, 2):  # a second time only with a fresh OAuth2 token after a 401
            try:
                headers = {**tool.headers, **await self.auth.headers(tool.auth, session)}
            except AuthError as exc:
                raise ToolError(str(exc)) from None
            try:
                status, content_type, body = await self._send(session, tool, arguments, headers)
            except aiohttp.ClientError as exc:
                raise ToolError(f"{tool.method} {_shown(tool.url)} failed: {type(exc).__name__}") from None
            if status == 401 and attempt == 1 and tool.auth is not None and tool.auth.type == "oauth2":
                self.auth.invalidate(tool.auth)
                continue
            break
        text = body.decode("utf-8", errors="replace")
        if status >= 400:
            raise ToolError(f"{tool.method} {_shown(tool.url)} answered HTTP {status}: {text[:ERROR_BODY_CHARS]}")
        if "json" in content_type and text.strip():
            try:
                return json.loads(text)
            except ValueError:
                return text
        return text

    async def _send(self, session: Any, tool: Any, arguments: dict[str, Any],
                    headers: dict[str, str]) -> tuple[int, str, bytes]:
        """One request, following same-origin redirects only; the status, content type and body."""
        from yarl import URL

        url, method = tool.url, tool.method.upper()
        in_query = method in ("GET", "DELETE")
        params = {key: value if isinstance(value, str) else json.dumps(value) for key, value in arguments.items()}
        for _ in range(MAX_REDIRECTS + 1):
            async with session.request(method, url, params=params if in_query else None,
                                       json=None if in_query else arguments, headers=headers,
                                       allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                    target = str(response.url.join(URL(response.headers["Location"])))
                    if _origin(target) != _origin(tool.url):
                        raise ToolError(f"{_shown(tool.url)} redirected to another host ({_shown(target)}); "
                                        "not followed")
                    url = target
                    if response.status == 303:
                        method, in_query = "GET", True
                    continue
                body = await _read_capped(response, self.max_response_bytes, tool)
                return response.status, response.content_type, body
        raise ToolError(f"{_shown(tool.url)} redirected more than {MAX_REDIRECTS} times")


async def _read_capped(response: Any, limit: int, tool: Any) -> bytes:
    length = response.content_length
    if length is not None and length > limit:
        raise ToolError(f"{_shown(tool.url)} answered {length} bytes, more than the {limit} allowed "
                        "(TOOL_MAX_RESPONSE_BYTES)")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ToolError(f"{_shown(tool.url)} answered more than the {limit} bytes allowed "
                            "(TOOL_MAX_RESPONSE_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


@agentrunner.hookimpl
def register_tool_types(register):
    register(ApiToolType())
