"""A local fake of Slack, and a Slack-shaped client of the gateway, for the tests of agentrunner-slack.

``FakeSlack`` answers like Slack on 127.0.0.1 (a free port): the Web API methods the gateway and
Bolt use (``auth.test``, ``chat.postMessage``, ``chat.postEphemeral``, ``apps.connections.open``),
checking the bearer token as Slack does; ``response_url`` hooks; and a Socket Mode WebSocket that
says hello, sends envelopes and records their acknowledgements. It records every request and can be
told to fail the next calls of a method (429 with ``Retry-After``, 5xx).

The request helpers build what Slack sends to a webhook: form-encoded slash commands and JSON event
callbacks, signed with ``slack_sdk.signature.SignatureVerifier``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import textwrap
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

from agentrunner.testing.platform import http_client, running_platform

BOT_TOKEN = "xoxb-canary-bot-token-1f2e3d4c5b6a"
APP_TOKEN = "xapp-1-canary-app-token-6a5b4c3d2e1f"
SIGNING_SECRET = "canary-signing-secret-0a9b8c7d6e5f"
#: An error message that must never reach Slack (it looks like a stack trace holding a secret).
INTERNAL_ERROR = f"Traceback (most recent call last): KeyError at db.py:42 with password {SIGNING_SECRET}"
BOT_USER, BOT_ID, TEAM = "UBOT", "BBOT", "T0001"
WAIT = 5.0  # seconds any single expectation of a test may take


@attrs.define
class Call:
    """One request the fake received: the Web API method (or ``response_url``), its body and when."""

    method: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float
    answer: dict[str, Any] = attrs.Factory(dict)  # what the fake answered (a posted message's ts…)


@attrs.define
class Failure:
    status: int
    retry_after: float | None = None
    error: str = "ratelimited"


class FakeSlack:
    """Slack's Web API, ``response_url`` hooks and Socket Mode on 127.0.0.1."""

    def __init__(self, bot_token: str = BOT_TOKEN, app_token: str = APP_TOKEN) -> None:
        self.bot_token, self.app_token = bot_token, app_token
        self.calls: list[Call] = []
        self.attempts: list[Call] = []  # every request, failed ones included
        self.failures: dict[str, list[Failure]] = {}
        self.acks: list[dict[str, Any]] = []
        self.connected = asyncio.Event()
        self._ws: web.WebSocketResponse | None = None
        self._changed = asyncio.Condition()
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._web_api)
        app.router.add_post("/hooks/{tail:.*}", self._hook)
        app.router.add_get("/link/", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str = "1") -> str:
        return f"http://127.0.0.1:{self.port}/hooks/commands/{TEAM}/{name}/response-url-capability"

    def fail(self, method: str, status: int = 429, *, times: int = 1, retry_after: float | None = None,
             error: str = "ratelimited") -> None:
        """Make the next ``times`` calls of ``method`` (or ``response_url``) fail with ``status``."""
        self.failures.setdefault(method, []).extend(Failure(status, retry_after, error) for _ in range(times))

    # --- what was received -------------------------------------------------------------

    def posted(self, method: str = "chat.postMessage") -> list[dict[str, Any]]:
        return [call.body for call in self.calls if call.method == method]

    def responses(self) -> list[dict[str, Any]]:
        return self.posted("response_url")

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked whenever the fake receives something)."""
        async def until() -> Any:
            async with self._changed:
                while not (value := predicate()):
                    await self._changed.wait()
                return value
        return await asyncio.wait_for(until(), timeout)

    async def _record(self, call: Call) -> Failure | None:
        method = call.method
        self.attempts.append(call)
        failures = self.failures.get(method)
        failure = failures.pop(0) if failures else None
        if failure is None:
            self.calls.append(call)
        async with self._changed:
            self._changed.notify_all()
        return failure

    # --- Web API --------------------------------------------------------------------------

    async def _web_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.content_type == "application/json":
            body = await request.json()
        else:
            body = {key: value for key, value in (await request.post()).items()}
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if request.headers.get("Authorization") != f"Bearer {expected}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        call = Call(method, body, dict(request.headers), time.monotonic())
        call.answer = self._answer(method, body)
        failure = await self._record(call)
        if failure is not None:
            headers = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after is not None else {}
            return web.json_response({"ok": False, "error": failure.error}, status=failure.status, headers=headers)
        return web.json_response(call.answer)

    def _answer(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        if method == "auth.test":
            return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "agent", "team_id": TEAM,
                    "user_id": BOT_USER, "bot_id": BOT_ID}
        if method == "chat.postMessage":
            if not body.get("channel") or not body.get("text"):
                return {"ok": False, "error": "no_text"}
            return {"ok": True, "channel": body["channel"], "ts": ts,
                    "message": {"text": body["text"], "user": BOT_USER, "bot_id": BOT_ID, "ts": ts}}
        if method == "chat.postEphemeral":
            if not body.get("user"):
                return {"ok": False, "error": "user_not_in_channel"}
            return {"ok": True, "message_ts": ts}
        if method == "apps.connections.open":
            return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket=fake-ticket"}
        return {"ok": False, "error": "unknown_method"}

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        failure = await self._record(Call("response_url", body, dict(request.headers), time.monotonic()))
        if failure is not None:
            headers = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after is not None else {}
            return web.Response(status=failure.status, text=failure.error, headers=headers)
        return web.Response(text="ok")

    # --- Socket Mode ----------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._ws = ws
        await ws.send_json({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0001"},
                            "debug_info": {"host": "fake", "approximate_connection_time": 3600}})
        self.connected.set()
        async with self._changed:
            self._changed.notify_all()
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.acks.append(json.loads(message.data))
                async with self._changed:
                    self._changed.notify_all()
        return ws

    async def send_envelope(self, kind: str, payload: dict[str, Any], envelope_id: str) -> dict[str, Any]:
        """Send one Socket Mode envelope (``events_api``, ``slash_commands``) and return its acknowledgement."""
        await asyncio.wait_for(self.connected.wait(), WAIT)
        await self._ws.send_json({"envelope_id": envelope_id, "type": kind, "payload": payload,
                                  "accepts_response_payload": kind == "slash_commands", "retry_attempt": 0,
                                  "retry_reason": ""})
        return await self.wait_for(lambda: next((a for a in self.acks if a.get("envelope_id") == envelope_id), None))


# --- what Slack sends to the webhook ------------------------------------------------------------

_trigger = itertools.count(1)


def command_form(fake: FakeSlack, command: str = "/ask", text: str = "hello", *, channel: str = "C0001",
                 user: str = "U0001", trigger_id: str | None = None) -> dict[str, str]:
    """The form fields of a slash command."""
    return {"token": "deprecated-verification-token", "team_id": TEAM, "team_domain": "fake",
            "channel_id": channel, "channel_name": "general", "user_id": user, "user_name": "ana",
            "command": command, "text": text, "api_app_id": "A0001", "is_enterprise_install": "false",
            "response_url": fake.response_url(str(next(_trigger))),
            "trigger_id": trigger_id or f"{next(_trigger)}.{TEAM}.trigger"}


def event_callback(event: dict[str, Any], event_id: str = "Ev0001") -> dict[str, Any]:
    """An Events API ``event_callback`` around ``event``."""
    return {"token": "deprecated-verification-token", "team_id": TEAM, "api_app_id": "A0001", "event": event,
            "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}]}


def message_event(text: str, *, ts: str = "1700000000.000100", thread_ts: str | None = None,
                  channel: str = "C0001", user: str = "U0001", kind: str = "message") -> dict[str, Any]:
    event = {"type": kind, "channel": channel, "user": user, "text": text, "ts": ts, "channel_type": "channel",
             "event_ts": ts}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def signed(body: bytes, content_type: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None,
           extra: dict[str, str] | None = None) -> dict[str, str]:
    """Headers Slack sends with ``body``: its timestamp and v0 signature."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    try:
        signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    except UnicodeDecodeError:  # the SDK signs text; Slack's scheme signs the bytes, whatever they are
        signature = "v0=" + hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature,
            **(extra or {})}


def form_request(fields: dict[str, str], **options: Any) -> tuple[bytes, dict[str, str]]:
    body = urllib.parse.urlencode(fields).encode()
    return body, signed(body, "application/x-www-form-urlencoded", **options)


def json_request(document: dict[str, Any], **options: Any) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(document).encode()
    return body, signed(body, "application/json", **options)


# --- agents and the platform ----------------------------------------------------------------------


def agent_yaml(name: str, mode: str, subscriptions: list[str]) -> str:
    return textwrap.dedent(f"""\
        name: {name}
        agent_type: assistant
        execution_mode: {mode}
        llm_config: {{temperature: 0.5}}
        system_prompt: Help the team.
        event_subscriptions: {json.dumps(subscriptions)}
        retry_config: {{max_retries: 0, retry_delay_seconds: 0.1}}
        """)


def slack_environ(fake: FakeSlack, **overrides: str) -> dict[str, str]:
    """The settings of a gateway talking to ``fake`` (fast retries, a generous rate limit)."""
    return {"SLACK_BOT_TOKEN": fake.bot_token, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": fake.api_url, "SLACK_RATE_LIMIT_CALLS": "1000", "SLACK_RETRY_DELAY": "0.05",
            "SLACK_RESPONSE_TIMEOUT": "1000", "API_AUTH_ENABLED": "true", "API_KEY": "k" * 40, **overrides}


@contextlib.asynccontextmanager
async def slack_gateway(tmp_path: Any, fake: FakeSlack, agents: dict[str, str], *,
                        environ: dict[str, str] | None = None,
                        plugins: list[tuple[Any, str]] = ()) -> AsyncIterator[tuple[Any, Any]]:
    """A running platform with the Slack plugin and ``agents``, and a client of its SlackGateway port."""
    import agentrunner_slack

    env = slack_environ(fake, **(environ or {}))
    async with running_platform(tmp_path, env, files=agents,
                                plugins=[(agentrunner_slack, "slack"), *plugins]) as platform:
        async with http_client(platform, "gateway") as client:
            yield platform, client


async def executions_of(platform: Any, agent: str) -> list[Any]:
    page, _ = await platform.store.list_executions(agent_name=agent)
    return page
