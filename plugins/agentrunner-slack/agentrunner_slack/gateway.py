"""The Slack gateway: slack-bolt's async app behind ``POST $SLACK_WEBHOOK_PATH`` on the SlackGateway port,
or Socket Mode when ``SLACK_APP_TOKEN`` is set.

Intake. A request's signature is checked on its raw body before anything parses it (401 and
nothing started when it is missing, forged or older than 300 s); then Bolt dispatches it:

- a slash command publishes ``slack.command.{name}`` and is acknowledged at once, before any
  agent runs (Slack waits 3 s at most);
- ``message``, ``app_mention`` and ``reaction_added`` events publish ``slack.event.message``,
  ``slack.event.app_mention`` and ``slack.event.reaction_added``; messages written by bots (this one
  above all) and edits are ignored;
- the task's input is the text (without the mention of the bot), or the reaction's name, and
  ``data.event`` is the payload of ``agentrunner_slack.intake``; the idempotency key is
  ``slack:{event_id}`` (``slack:{trigger_id}`` for a command), so a delivery Slack retries starts
  no second execution, whichever process receives it, before or after a restart;
- a message in a thread where an agent asked a question answers it (``provide_input``) instead of
  starting a task.

Answers are posted by ``agentrunner_slack.answers``; every outgoing call goes through
``agentrunner_slack.web_api``. The SDKs are imported when the gateway starts, never at import.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from aiohttp import web

from agentrunner.records import new_id
from agentrunner.topics import topic_matches
from agentrunner_slack import signature
from agentrunner_slack.answers import ANSWER_EVENTS, AnswerPoster, Conversations, response_url_allowed, ts_time
from agentrunner_slack.intake import (
    EVENT_KEYS,
    command_payload,
    command_routing_key,
    event_payload,
    is_from_a_person,
    strip_mention,
)
from agentrunner_slack.messages import NOT_HANDED_ON, UNAVAILABLE, WORKING, nobody_listens
from agentrunner_slack.redaction import sdk_logger
from agentrunner_slack.web_api import SlackCallError, SlackWebApi

log = logging.getLogger("agentrunner_slack.gateway")

DEFAULT_WEBHOOK_PATH = "/slack/events"
#: Seconds one Web API call may take before it counts as failed (and is retried).
CALL_TIMEOUT = 30
#: Seconds between the pings that keep a Socket Mode connection alive.
SOCKET_PING_INTERVAL = 10.0
#: How many execution events the gateway handles at once.
ANSWER_CONCURRENCY = 8


class IntakeUnavailable(Exception):
    """The event bus did not take an event from Slack; Slack is asked to deliver it again later."""


class _ClientWithoutToken(logging.Filter):
    """Drops Bolt's warning that ``SLACK_BOT_TOKEN`` (read from the environment) goes unused beside ``client``:
    the gateway gives Bolt a client without the token on purpose (calls with the token go through SlackWebApi)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


_CLIENT_WITHOUT_TOKEN = _ClientWithoutToken()


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value else None


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class SlackGateway:
    """The ``slack`` gateway (``agentrunner.interfaces.Gateway``)."""

    name = "slack"

    def __init__(self) -> None:
        self._settings: Any = None
        self._platform: Any = None
        self._bolt: Any = None
        self._api: SlackWebApi | None = None
        self._session: Any = None
        self._socket: Any = None
        self._socket_task: asyncio.Task | None = None
        self._subscription: Any = None
        self._conversations: Conversations | None = None
        self._background: set[asyncio.Future] = set()
        self._webhook_problem: str | None = "the Slack gateway has not started"
        self._mounted_at: str | None = None
        self._bot_token: str | None = None
        self._identity: dict[str, Any] | None = None  # auth.test: who the bot is
        self._identity_lock = asyncio.Lock()

    # --- configuration and lifecycle ----------------------------------------------------

    def configure(self, settings: Any) -> None:
        """Take the platform's settings (the ``startup`` hook calls this before the routes are added)."""
        self._settings = settings

    @property
    def webhook_path(self) -> str:
        return self._settings.slack_webhook_path if self._settings is not None else DEFAULT_WEBHOOK_PATH

    @property
    def public_paths(self) -> tuple[str, ...]:
        """The webhook authenticates by Slack's signature, not by API key."""
        return (self.webhook_path,)

    def routes(self, app: web.Application) -> None:
        self._mounted_at = self.webhook_path
        app.router.add_post(self._mounted_at, self.webhook)

    async def start(self, platform: Any) -> None:
        """Build the Bolt app and its Web API client, subscribe to execution events, connect Socket Mode."""
        settings = platform.settings
        if self._mounted_at is not None and settings.slack_webhook_path != self._mounted_at:
            # routes() ran before the startup hook gave the gateway its settings
            log.warning("SLACK_WEBHOOK_PATH is %s but the webhook was mounted at %s", settings.slack_webhook_path,
                        self._mounted_at)
        self._settings, self._platform = settings, platform
        bot_token = _secret(settings.slack_bot_token)
        app_token = _secret(settings.slack_app_token)
        signing_secret = _secret(settings.slack_signing_secret)
        if not bot_token:
            self._webhook_problem = "the Slack gateway is not configured (SLACK_BOT_TOKEN is not set)"
            log.warning("Slack gateway off: SLACK_BOT_TOKEN is not set; %s answers 503", self.webhook_path)
            return

        import aiohttp
        from slack_sdk.web.async_client import AsyncWebClient

        sdk_log = sdk_logger([bot_token, app_token, signing_secret])
        # the SDKs build their DEBUG lines when their logger's own level allows it: give it the gateway's
        sdk_log.setLevel(settings.slack_gateway_log_level)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT))
        # retry_handlers=[]: SlackWebApi is the only retry layer (SLACK_MAX_RETRY_ATTEMPTS…)
        client = AsyncWebClient(token=bot_token, base_url=settings.slack_api_url, timeout=CALL_TIMEOUT,
                                session=self._session, logger=sdk_log, retry_handlers=[])
        self._api = SlackWebApi(settings, client, self._session, sdk_log)
        self._bot_token, self._identity = bot_token, None
        self._conversations = Conversations(platform.cache)
        # Bolt's own client holds no token: every call with the bot token goes through SlackWebApi (auth.test
        # too, see _authorize); Socket Mode uses it for apps.connections.open with the app-level token.
        bolt_client = AsyncWebClient(base_url=settings.slack_api_url, timeout=CALL_TIMEOUT, session=self._session,
                                     logger=sdk_log, retry_handlers=[])
        self._bolt = self._build_app(bolt_client, sdk_log)
        answers = AnswerPoster(platform, self._api, self._conversations)
        self._subscription = await platform.bus.subscribe(
            f"agentrunner.slack.{new_id()}", list(ANSWER_EVENTS), answers.on_event,
            concurrency=ANSWER_CONCURRENCY, exclusive=True)

        if settings.slack_verify_signature and not signing_secret:
            self._webhook_problem = "the Slack webhook is not configured (SLACK_SIGNING_SECRET is not set)"
            log.warning("SLACK_SIGNING_SECRET is not set: %s answers 503 (Socket Mode does not need it)",
                        self.webhook_path)
        else:
            self._webhook_problem = None
            if not settings.slack_verify_signature:
                log.warning("SLACK_VERIFY_SIGNATURE=false: %s accepts requests nobody signed; "
                            "only for a local test", self.webhook_path)
        if app_token:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            self._socket = AsyncSocketModeHandler(self._bolt, app_token, logger=sdk_log, web_client=bolt_client,
                                                  ping_interval=SOCKET_PING_INTERVAL)
            # connect() retries until Slack answers; the service does not wait for it
            self._socket_task = asyncio.ensure_future(self._connect_socket())
        log.info("Slack gateway ready: webhook %s%s", self.webhook_path, ", Socket Mode" if app_token else "")

    async def _connect_socket(self) -> None:
        await self._socket.connect_async()
        if not self._socket.client.closed:
            log.info("Slack Socket Mode connected")

    async def stop(self) -> None:
        """Disconnect Socket Mode, stop consuming execution events, close the HTTP session."""
        self._webhook_problem = "the Slack gateway has stopped"
        if self._socket_task is not None:
            self._socket_task.cancel()
        if self._socket is not None:
            try:
                await self._socket.close_async()
            except Exception as exc:  # best effort: the process is stopping
                log.warning("Slack Socket Mode did not close cleanly: %s", type(exc).__name__)
            self._socket = None
        if self._subscription is not None:
            await self._subscription.cancel()
            self._subscription = None
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._socket_task is not None:
            await asyncio.gather(self._socket_task, return_exceptions=True)
            self._socket_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._bolt = None

    # --- the Bolt app -------------------------------------------------------------------

    def _build_app(self, client: Any, sdk_log: logging.Logger) -> Any:
        from slack_bolt.async_app import AsyncApp

        # process_before_response: a listener's publish finishes before Slack is answered, so an event
        # the bus refused gets 503 and Slack delivers it again (the listeners take milliseconds).
        # Signatures are checked by the webhook on the raw body, before Bolt parses it.
        async def authorize(enterprise_id: str | None, team_id: str | None) -> Any:
            return await self._authorize(enterprise_id, team_id)  # Bolt passes arguments by name, self included

        if _CLIENT_WITHOUT_TOKEN not in sdk_log.filters:
            sdk_log.addFilter(_CLIENT_WITHOUT_TOKEN)
        app = AsyncApp(client=client, logger=sdk_log, name="agentrunner-slack", process_before_response=True,
                       request_verification_enabled=False, authorize=authorize)
        app.command(re.compile(r".+"))(self._on_command)
        app.event(re.compile(r".+"))(self._on_event)
        app.error(self._on_error)
        return app

    async def _authorize(self, enterprise_id: str | None, team_id: str | None) -> Any:
        """Bolt's authorization: who the bot is, from ``auth.test`` asked once (rate limited and retried).

        Bolt ignores the bot's own events with it; when Slack cannot say, the request fails (503) and
        Slack delivers it again.
        """
        from slack_bolt.authorization import AuthorizeResult

        async with self._identity_lock:
            if self._identity is None:
                self._identity = await self._api.call("auth.test")
                log.info("Slack bot %s (%s) of team %s", self._identity.get("user_id"), self._identity.get("bot_id"),
                         self._identity.get("team_id"))
        identity = self._identity
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id or identity.get("team_id"),
                               bot_token=self._bot_token, bot_id=identity.get("bot_id"),
                               bot_user_id=identity.get("user_id"))

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        """``POST $SLACK_WEBHOOK_PATH``: verify the signature on the raw body, then let Bolt dispatch."""
        if self._bolt is None or self._webhook_problem:
            return _error(503, "unavailable", self._webhook_problem or "the Slack gateway has not started")
        body = await request.read()
        settings = self._settings
        if settings.slack_verify_signature:
            try:
                signature.verify(_secret(settings.slack_signing_secret) or "",
                                 request.headers.get(signature.TIMESTAMP_HEADER),
                                 request.headers.get(signature.SIGNATURE_HEADER), body,
                                 version=settings.slack_signature_version)
            except signature.SignatureError as exc:
                log.warning("refused a Slack request from %s: %s", request.remote, exc)
                return _error(401, "unauthorized", "the request does not carry a valid Slack signature")
        from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

        try:
            bolt_request = await to_bolt_request(request)
            if not isinstance(bolt_request.body, dict):
                raise ValueError("the body is not an object")
        except Exception as exc:  # signed, but not what Slack sends
            log.warning("refused a Slack request whose body cannot be read: %s", type(exc).__name__)
            return _error(400, "bad_request", "the body is not a Slack request")
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry:
            log.info("Slack delivers event %s again (retry %s, %s)", bolt_request.body.get("event_id"), retry,
                     request.headers.get("X-Slack-Retry-Reason", "no reason given"))
        try:
            bolt_response = await self._bolt.async_dispatch(bolt_request)
        except Exception:
            log.exception("a Slack request could not be handled")
            return _error(503, "unavailable", "the request could not be handled now; Slack may send it again")
        return await to_aiohttp_response(bolt_response)

    async def _on_error(self, error: Exception) -> Any:
        """A listener or the authorization failed: 503 when the bus refused the event or Slack's Web API did not
        answer (Slack delivers it again), 500 for anything else."""
        from slack_bolt.response import BoltResponse

        if isinstance(error, IntakeUnavailable):
            return BoltResponse(status=503, body=json.dumps({"error": {
                "code": "unavailable", "message": "the event could not be queued; deliver it again later"}}))
        if isinstance(error, SlackCallError):  # auth.test: Slack could not say who the bot is
            log.error("a Slack request waits for Slack: %s", error)
            return BoltResponse(status=503, body=json.dumps({"error": {
                "code": "unavailable", "message": "Slack's Web API cannot be reached; deliver it again later"}}))
        log.error("a Slack request could not be handled: %s", type(error).__name__, exc_info=error)
        return BoltResponse(status=500, body="")

    # --- intake -------------------------------------------------------------------------

    def _subscribed(self, routing_key: str) -> bool:
        """Whether any loaded agent subscribes to ``routing_key``."""
        return any(topic_matches(pattern, routing_key) for agent in self._platform.config.agents.values()
                   for pattern in agent.event_subscriptions)

    async def _on_command(self, ack: Any, body: dict) -> None:
        payload = command_payload(body)
        command = payload["command"] or ""
        routing_key = command_routing_key(command)
        if routing_key is None or not self._subscribed(routing_key):
            await ack(response_type="ephemeral", text=nobody_listens(command))
            return
        trigger = payload["trigger_id"]
        try:
            await self._publish(routing_key, payload, task_input=payload["text"],
                                idempotency_key=f"slack:{trigger}" if trigger else None)
        except IntakeUnavailable:
            await ack(response_type="ephemeral", text=UNAVAILABLE)
            return
        await ack(response_type="ephemeral", text=WORKING)

    async def _on_event(self, body: dict, context: Any) -> None:
        event = body.get("event") or {}
        routing_key = EVENT_KEYS.get(event.get("type"))
        payload = event_payload(body) if routing_key else None
        if payload is None:
            return  # another event the app subscribes to: acknowledged, nothing to do
        bot_user_id = context.get("bot_user_id")
        if payload["type"] == "reaction_added":
            if not payload["user"] or payload["user"] == bot_user_id:
                return
            task_input = payload["reaction"]
        else:
            if not is_from_a_person(event, bot_user_id):
                return  # a bot's message (our own answers above all: no loops), an edit, a join…
            task_input = strip_mention(payload["text"], bot_user_id)
            if await self._answers_a_question(payload, task_input):
                return
        event_id = payload["event_id"]
        await self._publish(routing_key, payload, task_input=task_input,
                            idempotency_key=f"slack:{event_id}" if event_id else None)

    async def _answers_a_question(self, payload: dict, text: str) -> bool:
        """Hand a reply in a thread where an agent asked a question to that agent; True when it was one.

        While the execution that asked is still running, the thread is its conversation: messages there
        start no new task. Once it has finished, they are ordinary messages again.
        """
        channel, ts, thread_ts = payload["channel"], payload["ts"], payload["thread_ts"]
        if not channel or not thread_ts or thread_ts == ts:
            return False
        if await self._conversations.is_answer(channel, ts):
            return True  # the same reply again: its app_mention after its message, or a retried delivery
        execution_id = await self._conversations.waiting_in(channel, thread_ts)
        if not execution_id:
            return False
        platform = self._platform
        execution = await platform.store.get_execution(execution_id)
        if execution is None or execution.terminal:
            await self._conversations.forget_question(channel, thread_ts)
            return False
        if execution.status != "awaiting_input":
            log.info("a message in the thread of execution %s, which is %s: neither an answer nor a new task",
                     execution_id, execution.status, extra={"execution_id": execution_id})
            return True
        # message and app_mention events of one reply are the same answer: the first one hands it on
        if not await platform.store.claim_schedule_tick(f"slack-input:{channel}:{ts}", ts_time(ts)):
            return True
        # marked before the execution can finish, so a twin that finds it finished knows this was an answer
        await self._conversations.mark_answer(channel, ts, execution_id)
        try:
            await platform.orchestrator.provide_input(execution_id, text)
        except Exception as exc:  # not waiting any more, or waiting in another process
            log.warning("could not hand a Slack answer to execution %s: %s", execution_id, exc,
                        extra={"execution_id": execution_id})
            try:
                await self._api.call("chat.postMessage", channel=channel, thread_ts=thread_ts, text=NOT_HANDED_ON)
            except SlackCallError as failure:
                log.error("could not tell Slack that the answer was not handed on: %s", failure)
            return True
        log.info("a Slack reply answered the question of execution %s", execution_id,
                 extra={"execution_id": execution_id})
        return True

    async def _publish(self, routing_key: str, payload: dict, *, task_input: Any, idempotency_key: str | None) -> None:
        """Publish an event from Slack, waiting at most ``SLACK_RESPONSE_TIMEOUT`` for the bus to take it.

        Raises ``IntakeUnavailable`` when the bus refused it within that time. Past it Slack is answered
        anyway (its 3 s window must hold) and the publish completes in the background.
        """
        publish = asyncio.ensure_future(self._platform.orchestrator.publish_event(
            routing_key, payload, task_input=task_input, idempotency_key=idempotency_key))
        done, _ = await asyncio.wait({publish}, timeout=self._settings.slack_response_timeout / 1000)
        if publish in done:
            try:
                publish.result()
            except Exception as exc:
                log.warning("%s from Slack could not be queued: %s", routing_key, exc)
                raise IntakeUnavailable(str(exc)) from None
            log.debug("%s from Slack queued (%s)", routing_key, idempotency_key)
            return
        log.info("%s from Slack: the bus is slow; answering Slack before it is queued", routing_key)
        self._background.add(publish)
        publish.add_done_callback(lambda task: self._published_late(task, routing_key, payload))

    def _published_late(self, task: asyncio.Future, routing_key: str, payload: dict) -> None:
        self._background.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        log.error("%s from Slack was acknowledged but could not be queued: %s", routing_key, task.exception())
        url = payload.get("response_url")
        if (payload.get("type") == "command" and url and self._api is not None
                and response_url_allowed(url, self._settings.slack_api_url)):
            notice = asyncio.ensure_future(self._tell_unavailable(url))
            self._background.add(notice)
            notice.add_done_callback(self._background.discard)

    async def _tell_unavailable(self, response_url: str) -> None:
        try:
            await self._api.respond(response_url, {"response_type": "ephemeral", "text": UNAVAILABLE})
        except SlackCallError as exc:
            log.error("could not tell Slack that a command was not queued: %s", exc)
