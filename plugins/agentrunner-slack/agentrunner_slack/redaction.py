"""Keeps Slack credentials out of the log lines the Slack SDKs write.

slack_sdk and slack_bolt log requests at DEBUG (URLs, bodies, the Socket Mode connection). The
gateway hands them the logger ``agentrunner_slack.sdk``, which carries ``SDK_REDACTOR``: the
configured tokens and signing secret, anything shaped like a Slack token, the paths of
``response_url``s and webhooks (each one is a credential for posting into a channel) and Socket Mode tickets
become ``***`` before any handler sees the line. The platform's own redaction filter on its
handlers covers the rest of the process.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

#: Slack tokens: bot (xoxb-), user (xoxp-), app-level (xapp-), configuration and refresh tokens, …
TOKEN = re.compile(r"\bx(?:ox[a-z]|app)-[A-Za-z0-9-]+")
#: A response_url (``…/commands/T…/…/…``, ``…/actions/…``) or an incoming webhook (``hooks.slack.com/services/…``):
#: whoever holds the path can post to the channel.
HOOK = re.compile(r"(https?://hooks\.slack(?:-gov)?\.com/|/(?:commands|actions|services)/)[^\s'\",]+")
#: The one-time ticket of a Socket Mode WebSocket URL.
TICKET = re.compile(r"(ticket=)[^&\s'\"]+")
MASK = "***"
SDK_LOGGER = "agentrunner_slack.sdk"


class SecretRedactor(logging.Filter):
    """Replaces secrets in the final text of a record (message, arguments and traceback)."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()

    def add(self, secrets: Iterable[str | None]) -> None:
        """Redact these values too (longest first, so one secret inside another is masked whole)."""
        known = set(self._secrets) | {secret for secret in secrets if secret}
        self._secrets = tuple(sorted(known, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        text = TOKEN.sub(MASK, text)
        text = HOOK.sub(rf"\g<1>{MASK}", text)
        return TICKET.sub(rf"\g<1>{MASK}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


#: One per process: Bolt copies the filters of the logger it is given onto its own loggers once, so the
#: filter they hold must stay the same object when a gateway starts again with other secrets.
SDK_REDACTOR = SecretRedactor()


def sdk_logger(secrets: Iterable[str | None]) -> logging.Logger:
    """The logger the Slack SDKs get, redacting ``secrets`` and every Slack token."""
    SDK_REDACTOR.add(secrets)
    logger = logging.getLogger(SDK_LOGGER)
    if SDK_REDACTOR not in logger.filters:
        logger.addFilter(SDK_REDACTOR)
    return logger
