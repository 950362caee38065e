"""Small tools for the example agents (``config/agents/tool-agent.yaml``).

They show how a ``function`` tool is written: type annotations become the JSON
Schema the model sees, the docstring's first paragraph its description.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def word_count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


def current_time(timezone: str = "UTC") -> str:
    """The current date and time in an IANA time zone such as Europe/Paris, as ISO 8601."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None
    return datetime.now(UTC).astimezone(zone).isoformat(timespec="seconds")
