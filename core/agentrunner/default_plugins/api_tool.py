"""The ``api`` tool type: an HTTP call to a configured URL with JSON Schema parameters."""

from __future__ import annotations

from urllib.parse import urlsplit

import agentrunner

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class ApiToolType:
    """Calls ``url`` with ``method``; the model supplies only the arguments, never the host."""

    name = "api"
    required_fields = ("url",)

    def validate(self, tool) -> list[tuple[str, str]]:
        problems = []
        url = urlsplit(tool.url or "")
        if url.scheme not in ("http", "https") or not url.netloc:
            problems.append(("url", f"must be an http:// or https:// URL (got {tool.url!r})"))
        if tool.method and tool.method.upper() not in METHODS:
            problems.append(("method", f"must be one of {', '.join(METHODS)} (got {tool.method!r})"))
        if tool.parameters is not None and tool.parameters.get("type", "object") != "object":
            problems.append(("parameters.type", "the parameters schema must describe an object"))
        return problems


@agentrunner.hookimpl
def register_tool_types(register):
    register(ApiToolType())
