"""agentrunner-mcp: the ``mcp`` tool type (MCP servers over streamable HTTP, SSE or stdio).

Registered through the ``agentrunner`` entry point ``mcp = agentrunner_mcp``. The ``mcp`` SDK
is imported only when a session is opened, so ``agentrunner --help`` stays fast.
"""

from __future__ import annotations

import agentrunner
from agentrunner_mcp.tool_type import MCPToolType

__all__ = ["MCPToolType", "register_tool_types"]


@agentrunner.hookimpl
def register_tool_types(register):
    register(MCPToolType())
