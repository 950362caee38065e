"""From what Slack sends to the event the platform publishes: routing key, payload, task input, idempotency key.

The payload (an agent's ``data.event``) is a flat mapping with the same keys for every kind:
``source`` (``"slack"``), ``type`` (``command``, ``message``, ``app_mention``, ``reaction_added``),
``team``, ``channel``, ``user``, ``text``, ``ts``, ``thread_ts``, ``event_id``, ``event_time``,
``command``, ``response_url``, ``trigger_id``, ``reaction``, ``channel_type``, ``api_app_id`` — a key
that does not apply is None. The gateway answers from it: in the thread of ``thread_ts`` or ``ts``
of ``channel``, or through ``response_url``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

COMMAND_KEY = "slack.command.{}"
EVENT_KEYS = {"message": "slack.event.message", "app_mention": "slack.event.app_mention",
              "reaction_added": "slack.event.reaction_added"}
#: Message subtypes that are a person writing; the others are edits, deletions, joins, bots' posts…
PERSON_SUBTYPES = frozenset({None, "thread_broadcast", "file_share", "me_message"})
_NOT_A_WORD = re.compile(r"[^a-z0-9_-]+")

_FIELDS = ("source", "type", "team", "channel", "user", "text", "ts", "thread_ts", "event_id", "event_time",
           "command", "response_url", "trigger_id", "reaction", "channel_type", "api_app_id")


def _payload(**values: Any) -> dict[str, Any]:
    payload = dict.fromkeys(_FIELDS)
    payload.update(values, source="slack")
    return payload


def command_routing_key(command: str) -> str | None:
    """``/ask`` → ``slack.command.ask``: the command's name as one routing-key word (None if it has none)."""
    word = _NOT_A_WORD.sub("_", command.strip().lstrip("/").lower()).strip("_")
    return COMMAND_KEY.format(word) if word else None


def command_payload(body: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of a slash command (its form fields)."""
    return _payload(type="command", team=body.get("team_id"), channel=body.get("channel_id"),
                    user=body.get("user_id"), text=body.get("text") or "", command=body.get("command"),
                    response_url=body.get("response_url"), trigger_id=body.get("trigger_id"),
                    api_app_id=body.get("api_app_id"))


def strip_mention(text: str, bot_user_id: str | None) -> str:
    """The text without the mentions of this bot (``<@U123> deploy`` → ``deploy``)."""
    if not bot_user_id:
        return text.strip()
    return re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text).strip()


def is_from_a_person(event: Mapping[str, Any], bot_user_id: str | None) -> bool:
    """Whether a message was written by a person: not by a bot (this one above all: no loops), not an edit."""
    if event.get("bot_id") or event.get("subtype") not in PERSON_SUBTYPES:
        return False
    user = event.get("user")
    return bool(user) and user != bot_user_id


def event_payload(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The payload of a ``message``, ``app_mention`` or ``reaction_added`` event (None for other events)."""
    event = body.get("event") or {}
    kind = event.get("type")
    common = {"team": body.get("team_id"), "event_id": body.get("event_id"), "event_time": body.get("event_time"),
              "api_app_id": body.get("api_app_id"), "user": event.get("user"), "type": kind}
    if kind in ("message", "app_mention"):
        return _payload(**common, channel=event.get("channel"), text=event.get("text") or "", ts=event.get("ts"),
                        thread_ts=event.get("thread_ts"), channel_type=event.get("channel_type"))
    if kind == "reaction_added":
        item = event.get("item") or {}
        if item.get("type") != "message":
            return None  # a reaction to a file: there is no thread to answer in
        return _payload(**common, channel=item.get("channel"), ts=item.get("ts"), reaction=event.get("reaction"))
    return None
