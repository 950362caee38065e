"""Results and questions of executions that came from Slack, posted back where the request came from.

The gateway consumes ``agent.execution.completed``, ``agent.execution.failed`` and
``agent.execution.awaiting_input`` on an exclusive queue of its own, so every gateway process sees
every one of them. An execution came from Slack when its ``data.routing_key`` is a ``slack.*`` key
and its ``data.event`` is a payload the gateway published (``source: slack``). Only one process
posts each answer or question: it first claims ``slack-answer:{execution_id}`` (at the execution's
``completed_at``) or ``slack-question:{execution_id}:{n}`` in the state store, whose unique key lets
exactly one claim win across processes and restarts (the store keeps claims at least 7 days). An answer
is therefore posted at most once: when Slack refuses it even after the retries, it is logged and
stays in the execution's result.
"""

from __future__ import annotations

import collections
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from agentrunner.interfaces import Event
from agentrunner_slack.messages import (
    MAX_PARTS,
    RESPONSE_URL_MAX_PARTS,
    cannot_ask_here,
    failure_text,
    limit_parts,
    question_text,
    render_result,
    split_text,
)
from agentrunner_slack.web_api import SlackCallError

log = logging.getLogger("agentrunner_slack.answers")

COMPLETED, FAILED, AWAITING_INPUT = ("agent.execution.completed", "agent.execution.failed",
                                     "agent.execution.awaiting_input")
ANSWER_EVENTS = (COMPLETED, FAILED, AWAITING_INPUT)
#: How long a thread stays linked to the execution that asked a question in it.
CONVERSATION_TTL = 24 * 3600.0
#: Threads this process remembers without the cache (bounded).
LOCAL_THREADS = 4096
#: Hosts a ``response_url`` may point at (besides the host of ``SLACK_API_URL``).
RESPONSE_URL_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def slack_origin(execution: Any) -> dict[str, Any] | None:
    """The Slack payload an execution was started from, or None when it did not come from Slack."""
    data = execution.data if isinstance(execution.data, dict) else {}
    routing_key = data.get("routing_key")
    event = data.get("event")
    if not isinstance(routing_key, str) or not routing_key.startswith("slack."):
        return None
    if not isinstance(event, dict) or event.get("source") != "slack" or not event.get("channel"):
        return None
    return event


def ts_time(ts: Any) -> datetime:
    """A Slack message timestamp (``"1712345678.000200"``) as a datetime (the epoch when it is not one)."""
    try:
        return datetime.fromtimestamp(float(ts), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return _EPOCH


def response_url_allowed(url: str, slack_api_url: str) -> bool:
    """Whether to post to this ``response_url``: Slack's hooks host, or the host of ``SLACK_API_URL``.

    A payload published by someone else (``POST /events`` with a ``slack.*`` key) must not make the
    gateway post to an arbitrary address.
    """
    try:
        parts, api = urlsplit(url), urlsplit(slack_api_url)
    except ValueError:
        return False
    if parts.scheme == "https" and parts.hostname in RESPONSE_URL_HOSTS:
        return True
    return bool(parts.netloc) and (parts.scheme, parts.netloc) == (api.scheme, api.netloc)


class Conversations:
    """Which execution waits for an answer in which thread, and the thread a command's conversation moved to.

    Kept in the platform's cache (shared by every gateway process when the cache is Redis), and in
    this process as well, so a cache outage does not lose the threads this process started.
    """

    def __init__(self, cache: Any) -> None:
        self._cache = cache
        self._local: collections.OrderedDict[str, Any] = collections.OrderedDict()

    async def _set(self, key: str, value: Any) -> None:
        self._local[key] = value
        self._local.move_to_end(key)
        while len(self._local) > LOCAL_THREADS:
            self._local.popitem(last=False)
        try:
            await self._cache.set(key, value, ttl=CONVERSATION_TTL)
        except Exception as exc:  # the local copy still serves this process
            log.warning("could not remember a Slack thread in the cache: %s", type(exc).__name__)

    async def _get(self, key: str) -> Any:
        try:
            value = await self._cache.get(key)
        except Exception as exc:
            log.warning("could not read a Slack thread from the cache: %s", type(exc).__name__)
            value = None
        return value if value is not None else self._local.get(key)

    async def _delete(self, key: str) -> None:
        self._local.pop(key, None)
        try:
            await self._cache.delete(key)
        except Exception as exc:
            log.warning("could not forget a Slack thread in the cache: %s", type(exc).__name__)

    async def remember_question(self, channel: str, thread_ts: str, execution_id: str) -> None:
        """A question of ``execution_id`` waits for its answer in this thread."""
        await self._set(f"slack:question:{channel}:{thread_ts}", execution_id)

    async def waiting_in(self, channel: str, thread_ts: str) -> str | None:
        """The execution that asked a question in this thread, if any."""
        return await self._get(f"slack:question:{channel}:{thread_ts}")

    async def forget_question(self, channel: str, thread_ts: str) -> None:
        await self._delete(f"slack:question:{channel}:{thread_ts}")

    async def mark_answer(self, channel: str, ts: str, execution_id: str) -> None:
        """The message ``ts`` answered a question of ``execution_id`` (its other deliveries are the same answer)."""
        await self._set(f"slack:answer:{channel}:{ts}", execution_id)

    async def is_answer(self, channel: str, ts: str) -> bool:
        return bool(await self._get(f"slack:answer:{channel}:{ts}"))

    async def move_to_thread(self, execution_id: str, channel: str, thread_ts: str) -> None:
        """The conversation of a slash command goes on in this thread (a question was asked there)."""
        await self._set(f"slack:thread:{execution_id}", [channel, thread_ts])

    async def thread_of(self, execution_id: str) -> tuple[str, str] | None:
        value = await self._get(f"slack:thread:{execution_id}")
        return (value[0], value[1]) if isinstance(value, list | tuple) and len(value) == 2 else None

    async def forget_execution(self, execution_id: str) -> None:
        await self._delete(f"slack:thread:{execution_id}")


class AnswerPoster:
    """Posts the results, failures and questions of executions started from Slack (a bus handler)."""

    def __init__(self, platform: Any, api: Any, conversations: Conversations) -> None:
        self._store = platform.store
        self._settings = platform.settings
        self._api = api
        self._conversations = conversations

    async def on_event(self, event: Event) -> None:
        """Handle one execution event; never raises (an answer that cannot be posted is logged)."""
        execution_id = (event.payload or {}).get("execution_id") if isinstance(event.payload, dict) else None
        if not execution_id:
            return
        try:
            execution = await self._store.get_execution(execution_id)
            origin = slack_origin(execution) if execution is not None else None
            if origin is None:
                return
            if event.routing_key == AWAITING_INPUT:
                await self._ask(execution, origin, str(event.payload.get("question") or ""))
            else:
                await self._answer(execution, origin)
        except SlackCallError as exc:
            log.error("could not post to Slack for execution %s: %s", execution_id, exc,
                      extra={"execution_id": execution_id})
        except Exception:  # a bug or a store outage must not stop the answers of other executions
            log.exception("could not answer execution %s in Slack", execution_id,
                          extra={"execution_id": execution_id})

    async def _answer(self, execution: Any, origin: dict[str, Any]) -> None:
        if not execution.terminal or execution.completed_at is None or execution.status == "cancelled":
            return  # it runs again (a retried dead letter): its next ending is answered
        claimed = await self._store.claim_schedule_tick(f"slack-answer:{execution.execution_id}",
                                                        execution.completed_at)
        if not claimed:
            return  # another gateway process posts it, or already did
        if execution.status == "completed":
            parts = split_text(render_result(execution.result))
        else:
            parts = [failure_text(execution.agent_name, execution.status, execution.execution_id)]
        await self._deliver(execution, origin, parts)
        thread = await self._conversations.thread_of(execution.execution_id)
        channel, thread_ts = thread or (origin["channel"], origin.get("thread_ts") or origin.get("ts"))
        if thread_ts:
            await self._conversations.forget_question(channel, thread_ts)
        if thread is not None:
            await self._conversations.forget_execution(execution.execution_id)
        log.info("answered execution %s of %s in Slack (%d message(s))", execution.execution_id,
                 execution.agent_name, len(parts), extra={"execution_id": execution.execution_id,
                                                          "agent": execution.agent_name})

    async def _deliver(self, execution: Any, origin: dict[str, Any], parts: list[str]) -> None:
        """Post ``parts`` where the request came from: the command's ``response_url`` or the thread."""
        ephemeral = bool(self._settings.slack_ephemeral_responses and origin.get("user"))
        thread = await self._conversations.thread_of(execution.execution_id)
        if thread is None and origin.get("type") == "command":
            url = origin.get("response_url")
            if url and response_url_allowed(url, self._settings.slack_api_url):
                response_type = "ephemeral" if ephemeral else "in_channel"
                for part in limit_parts(parts, RESPONSE_URL_MAX_PARTS, execution.execution_id):
                    await self._api.respond(url, {"text": part, "response_type": response_type})
                return
            thread = (origin["channel"], None)  # no usable response_url: a message in the channel
        channel, thread_ts = thread or (origin["channel"], origin.get("thread_ts") or origin.get("ts"))
        for part in limit_parts(parts, MAX_PARTS, execution.execution_id):
            await self._post(channel, thread_ts, part, user=origin.get("user") if ephemeral else None)

    async def _post(self, channel: str, thread_ts: str | None, text: str, *, user: str | None = None) -> dict:
        """One message in ``channel`` (in the thread of ``thread_ts``); ephemeral, for ``user`` only, when given."""
        arguments: dict[str, Any] = {"channel": channel, "text": text}
        if thread_ts:
            arguments["thread_ts"] = thread_ts
        if user:
            return await self._api.call("chat.postEphemeral", user=user, **arguments)
        return await self._api.call("chat.postMessage", unfurl_links=False, unfurl_media=False, **arguments)

    async def _ask(self, execution: Any, origin: dict[str, Any], question: str) -> None:
        if execution.status != "awaiting_input":
            return  # answered already (this event arrived late)
        asked = len((execution.details or {}).get("answers", []))
        claimed = await self._store.claim_schedule_tick(f"slack-question:{execution.execution_id}:{asked}",
                                                        execution.started_at or execution.created_at)
        if not claimed:
            return
        text = question_text(execution.agent_name, question, origin.get("user"))
        if origin.get("type") == "command":
            # A command has no thread to answer in: the question starts one in the channel, and the
            # rest of the conversation (further questions, the answer) happens there.
            thread = await self._conversations.thread_of(execution.execution_id)
            if thread is None:
                try:
                    posted = await self._post(origin["channel"], None, text)
                except SlackCallError as exc:  # e.g. not_in_channel: the bot cannot start a thread there
                    url = origin.get("response_url")
                    if url and response_url_allowed(url, self._settings.slack_api_url):
                        await self._api.respond(url, {"response_type": "ephemeral",
                                                      "text": cannot_ask_here(execution.agent_name, question)})
                    raise exc
                thread = (posted.get("channel") or origin["channel"], posted.get("ts"))
                if not thread[1]:
                    log.error("Slack did not say where the question of execution %s was posted",
                              execution.execution_id)
                    return
                await self._conversations.move_to_thread(execution.execution_id, *thread)
                await self._conversations.remember_question(thread[0], thread[1], execution.execution_id)
                return
            channel, thread_ts = thread
            user = None
        else:
            channel, thread_ts = origin["channel"], origin.get("thread_ts") or origin.get("ts")
            user = origin.get("user") if self._settings.slack_ephemeral_responses else None
        await self._conversations.remember_question(channel, thread_ts, execution.execution_id)
        await self._post(channel, thread_ts, text, user=user)
