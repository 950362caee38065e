"""Keeps the secrets of MCP servers out of the log records of the libraries the SDK uses.

httpx2 logs each request's URL at INFO (its query string and user info included), and the
SDK's HTTP transports log exceptions whose text holds the URL; a tool entry's URL may
carry a key in its query. ``REDACTOR`` filters those loggers and replaces the secrets of
every live session by ``***``. Our own messages never hold a secret in the first place.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

#: loggers whose records may hold a URL as configured (with its query) or a transport exception about it
LOGGERS = ("httpx2", "mcp.client.streamable_http", "mcp.client.sse")


class SecretRedactor(logging.Filter):
    """A logging filter that removes registered secrets from a record's message and traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: Counter[str] = Counter()

    def install(self) -> None:
        """Attach to the libraries' loggers (once)."""
        for name in LOGGERS:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)

    def register(self, secrets: Iterable[str]) -> None:
        """Redact ``secrets`` until as many ``unregister`` calls (sessions share servers, hence counts)."""
        self._secrets.update(secret for secret in secrets if secret)

    def unregister(self, secrets: Iterable[str]) -> None:
        self._secrets.subtract(secret for secret in secrets if secret)
        self._secrets = +self._secrets  # drop the ones no live session holds

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = sorted(self._secrets, key=len, reverse=True)
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: the handler will report it, unredacted args or not
            return True
        redacted = _redact(message, secrets)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _redact(record.exc_text, secrets)
        return True


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


#: the one redactor of the process (logging is process-wide too)
REDACTOR = SecretRedactor()
