"""Fixtures: the tool type under test (closed after each test) and real MCP servers to point it at."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from agentrunner_mcp import MCPToolType
from mcp_harness import HTTP_TRANSPORTS, TRANSPORTS, Target
from mcp_servers import ServedApp


@pytest.fixture
async def tool_type() -> Any:
    tool_type = MCPToolType()
    yield tool_type
    await tool_type.aclose()


@pytest.fixture(scope="session")
def http_servers() -> Iterator[dict[str, ServedApp]]:
    """One HTTP MCP server per transport for the whole run (starting and stopping uvicorn costs time)."""
    apps: dict[str, ServedApp] = {}
    yield apps
    for app in apps.values():
        app.stop()


@pytest.fixture
def served(http_servers) -> Callable[[str], ServedApp]:
    """The server of a transport (``streamable-http`` or ``sse``), running, with a fresh request log.

    A test may stop or restart it; the next test that asks for it gets it running again on the same port.
    """

    def serve(transport: str) -> ServedApp:
        app = http_servers.get(transport)
        if app is None:
            app = http_servers[transport] = ServedApp(transport)
        if not app.running:
            app.start()
        app.log.reset()
        return app

    return serve


@pytest.fixture(params=TRANSPORTS)
def target(request, tmp_path, served) -> Target:
    return Target(request.param, tmp_path, served)


@pytest.fixture(params=HTTP_TRANSPORTS)
def http_target(request, tmp_path, served) -> Target:
    return Target(request.param, tmp_path, served)
