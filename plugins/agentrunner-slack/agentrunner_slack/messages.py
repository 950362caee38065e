"""What the gateway writes in Slack: answers cut to Slack's limits, questions, short failure notices.

Slack truncates a message's ``text`` after 40,000 characters, recommends at most 4,000, and a
section block holds 3,000; answers are cut into parts of at most ``MAX_PART_CHARS`` (3,000)
characters, at a blank line, a line end or a space when there is one, with code fences closed
at the end of a part and opened again at the start of the next. At most ``MAX_PARTS`` parts are
posted (``response_url`` takes five messages); the last one then says that the full result is
in the execution. Agent output is escaped (``&``, ``<``, ``>``), so an answer cannot ping
``@channel`` or forge a link.
"""

from __future__ import annotations

import json
from typing import Any

MAX_PART_CHARS = 3000
#: The most parts one answer is posted in (a thread); a ``response_url`` takes five messages at most.
MAX_PARTS = 10
RESPONSE_URL_MAX_PARTS = 5
FENCE = "```"


def escape(text: str) -> str:
    """Text as Slack shows it literally: ``&``, ``<`` and ``>`` are control characters in messages."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_result(result: Any) -> str:
    """An execution's result as message text: a string as it is, anything else as JSON in a code block."""
    if result is None or result == "":
        return "_(the agent finished without an answer)_"
    if isinstance(result, str):
        return escape(result)
    return f"{FENCE}\n{escape(json.dumps(result, indent=2, ensure_ascii=False, default=str))}\n{FENCE}"


def _cut_at(text: str, budget: int) -> tuple[int, int]:
    """Where to end a part of at most ``budget`` characters: (end of the part, start of the next)."""
    window = text[:budget + 1]
    for separator in ("\n\n", "\n", " "):
        index = window.rfind(separator, 0, budget + 1)
        if index > budget // 2:
            return index, index + len(separator)
    end = budget
    entity = text.rfind("&", max(0, end - 5), end)  # never cut an escape such as &amp; in two
    if entity != -1 and ";" not in text[entity:end]:
        end = entity
    return end, end


def split_text(text: str, limit: int = MAX_PART_CHARS) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, code fences balanced in each part."""
    if len(text) <= limit:
        return [text]
    budget = limit - 2 * (len(FENCE) + 1)  # room to close a fence and to open it again
    parts: list[str] = []
    reopen = False
    rest = text
    while rest:
        head = f"{FENCE}\n" if reopen else ""
        if len(head) + len(rest) <= limit:
            parts.append(head + rest)
            break
        end, start = _cut_at(rest, budget)
        if end == 0:  # nothing breakable before the budget: cut hard
            end = start = budget
        part = rest[:end]
        rest = rest[start:]
        open_fence = (reopen + part.count(FENCE)) % 2 == 1
        parts.append(head + part + (f"\n{FENCE}" if open_fence else ""))
        reopen = open_fence
    return parts


def limit_parts(parts: list[str], most: int, execution_id: str) -> list[str]:
    """At most ``most`` parts; when some are dropped the last one kept says where the whole answer is."""
    if len(parts) <= most:
        return parts
    dropped = sum(len(part) for part in parts[most:])
    note = (f"\n_(answer cut here: {dropped:,} more characters; the whole result is in execution "
            f"`{execution_id}`)_")
    return [*parts[:most - 1], parts[most - 1] + note]


def failure_text(agent_name: str, status: str, execution_id: str) -> str:
    """The short notice of a failed execution: what happened in plain words, never the error itself."""
    what = "ran out of time" if status == "timed_out" else "could not finish"
    return (f":warning: Sorry, *{escape(agent_name)}* {what} on this request. "
            f"Please try again later; if it keeps happening, give your administrator the reference "
            f"`{execution_id}`.")


#: The most characters of a question shown (a question is one message).
MAX_QUESTION_CHARS = 2500


def _shortened(text: str) -> str:
    return text if len(text) <= MAX_QUESTION_CHARS else text[:MAX_QUESTION_CHARS] + "…"


def question_text(agent_name: str, question: str, user: str | None) -> str:
    """A question an agent asks a person, inviting an answer in the thread."""
    mention = f"<@{user}> " if user else ""
    return (f"{mention}:raising_hand: *{escape(agent_name)}* asks: {escape(_shortened(question))}\n"
            f"_Reply in this thread to answer._")


def cannot_ask_here(agent_name: str, question: str) -> str:
    """A command's question the bot could not post in the channel (it is not a member)."""
    return (f":raising_hand: *{escape(agent_name)}* needs to ask: {escape(_shortened(question))}\n"
            f"_but I can't start a thread in this channel. Invite me (`/invite`) and run the command again._")


WORKING = ":hourglass_flowing_sand: Working on it…"
UNAVAILABLE = ":warning: Sorry, I can't take requests right now. Please try again in a minute."
NOT_HANDED_ON = (":warning: Sorry, I couldn't pass your answer on: the agent is no longer waiting for it here. "
                 "Please try again.")


def nobody_listens(command: str) -> str:
    """The answer to a slash command no agent subscribes to."""
    return f"No agent answers `{escape(command)}` yet."
