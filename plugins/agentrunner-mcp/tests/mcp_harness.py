"""Test harness shared by the test modules: the stdio server script, a server per transport
(``Target``), and a look at this process's child processes."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp_servers import STARTS_FILE, ServedApp

from agentrunner.schema import ToolConfig

SERVER_SCRIPT = str(Path(__file__).with_name("mcp_servers.py"))
TRANSPORTS = ("stdio", "streamable-http", "sse")
HTTP_TRANSPORTS = ("streamable-http", "sse")
#: a stdio "server" that reads its stdin and never answers: initialize waits forever; closing stdin ends it
SILENT = ["-c", "import sys; sys.stdin.read()"]


def child_processes() -> list[int]:
    """Live (not zombie) child processes of this test process."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == os.getpid() and state != "Z":
            children.append(int(entry.name))
    return children


class Target:
    """One MCP test server over one transport, with the tool entries that reach it.

    ``sessions()`` counts the MCP sessions clients opened on it; ``restart()`` makes the
    current session unusable the way a real restart does (a new HTTP server on the same
    port; a killed stdio process).
    """

    def __init__(self, transport: str, tmp_path: Path, served: Callable[[str], ServedApp]) -> None:
        self.transport = transport
        self.starts = tmp_path / "starts"
        self.app = None if transport == "stdio" else served(transport)

    def entry(self, **fields: Any) -> ToolConfig:
        fields.setdefault("name", "calc")
        if self.app is not None:
            return ToolConfig(type="mcp", url=self.app.url, **fields)
        env = {STARTS_FILE: str(self.starts), **fields.pop("env", {})}
        return ToolConfig(type="mcp", command=sys.executable, args=[SERVER_SCRIPT], env=env, **fields)

    def sessions(self) -> int:
        if self.app is not None:
            return self.app.log.sessions(self.transport)
        return len(self.pids())

    def pids(self) -> list[int]:
        return [int(line) for line in self.starts.read_text().split()] if self.starts.exists() else []

    def restart(self) -> None:
        if self.app is not None:
            self.app.restart()
        else:
            os.kill(self.pids()[-1], signal.SIGKILL)
