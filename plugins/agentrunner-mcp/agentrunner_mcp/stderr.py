"""A stdio server's stderr, relayed line by line into agentrunner's log.

Left to itself the SDK hands the child our own stderr, so its output would bypass the
platform's log format (``LOG_FORMAT=json`` promises one JSON object a line). The child
writes into a pipe instead; a task reads it and logs each line under
``agentrunner.tools.mcp.server``, scrubbed of the server's secrets.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import IO

log = logging.getLogger("agentrunner.tools.mcp.server")

#: longest line logged; a longer one is left out (and the omission logged)
LINE_LIMIT = 64 * 1024
#: seconds to wait for the last lines once the child is gone (a grandchild may hold the pipe open)
DRAIN_TIMEOUT = 1.0


class StderrRelay:
    """Owns the pipe a stdio server writes its stderr into, and the task that logs what arrives."""

    def __init__(self, where: str, scrub: Callable[[str], str]) -> None:
        self._where = where
        self._scrub = scrub
        self._writer: IO[str] | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> IO[str]:
        """The write end, for the child; call ``spawned()`` once the child has its own copy."""
        read_fd, write_fd = os.pipe()
        self._writer = os.fdopen(write_fd, "w")
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        loop = asyncio.get_running_loop()
        try:
            self._transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                              os.fdopen(read_fd, "rb", buffering=0))
        except BaseException:
            os.close(read_fd)
            self.spawned()
            raise
        self._task = loop.create_task(self._relay(reader), name=f"mcp stderr {self._where}")
        return self._writer

    def spawned(self) -> None:
        """Close our copy of the write end: the pipe then ends when the child (and its children) exit."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def aclose(self) -> None:
        """Log what is left once the child is gone, then stop reading."""
        self.spawned()
        if self._task is not None:
            _, pending = await asyncio.wait({self._task}, timeout=DRAIN_TIMEOUT)
            for task in pending:
                task.cancel()
                await asyncio.wait({task})
        if self._transport is not None:
            self._transport.close()

    async def _relay(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # the reader has dropped a line longer than LINE_LIMIT
                log.info("%s: (a line longer than %d bytes was left out)", self._where, LINE_LIMIT)
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if text:
                log.info("%s: %s", self._where, self._scrub(text))
