"""Outgoing calls: rate limited, retried with backoff, Retry-After honoured on 429, failures logged, never fatal."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import attrs
from agentrunner_slack.web_api import RateLimiter, SlackCallError, SlackWebApi
from slack_fake import BOT_USER, agent_yaml, command_form, event_callback, form_request, json_request, message_event
from slack_fake import slack_gateway as gateway
from slack_sdk.web.async_client import AsyncWebClient

from agentrunner.testing.bus_contract import eventually

PATH = "/slack/events"
AGENTS = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.event.app_mention", "slack.command.ask"])}


def mention(event_id, text="hi", ts="1700000000.000100"):
    return json_request(event_callback(message_event(f"<@{BOT_USER}> {text}", kind="app_mention", ts=ts), event_id))


async def test_a_429_is_retried_after_the_wait_slack_asked_for(tmp_path, fake_slack):
    fake_slack.fail("chat.postMessage", 429, retry_after=1)
    async with gateway(tmp_path, fake_slack, AGENTS) as (_platform, client):
        body, headers = mention("Ev1")
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        [answer] = await fake_slack.wait_for(fake_slack.posted)
        assert answer["text"] == "hi"
        first, second = [call for call in fake_slack.attempts if call.method == "chat.postMessage"]
        assert second.at - first.at >= 0.95  # Retry-After: 1, although SLACK_RETRY_DELAY is 0.05


async def test_server_errors_are_retried_with_exponential_backoff(tmp_path, fake_slack):
    fake_slack.fail("response_url", 503, times=2)
    environ = {"SLACK_RETRY_DELAY": "0.2", "SLACK_RETRY_EXPONENTIAL_BASE": "3"}
    async with gateway(tmp_path, fake_slack, AGENTS, environ=environ) as (_platform, client):
        body, headers = form_request(command_form(fake_slack, "/ask", "backoff"))
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        await fake_slack.wait_for(fake_slack.responses)
        times = [call.at for call in fake_slack.attempts if call.method == "response_url"]
        assert len(times) == 3
        assert times[1] - times[0] >= 0.19 and times[2] - times[1] >= 0.59  # 0.2 s, then 0.2 × 3


async def test_exhausted_retries_are_logged_and_the_gateway_goes_on(tmp_path, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    fake_slack.fail("chat.postMessage", 500, times=3, error="internal_error")
    environ = {"SLACK_MAX_RETRY_ATTEMPTS": "2"}
    async with gateway(tmp_path, fake_slack, AGENTS, environ=environ) as (_platform, client):
        body, headers = mention("Ev1", "first")
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        await eventually(lambda: "could not post to Slack" in caplog.text)
        assert len([call for call in fake_slack.attempts if call.method == "chat.postMessage"]) == 3  # 1 + 2 retries
        assert "failed after 3 attempt(s): HTTP 500, internal_error" in caplog.text
        body, headers = mention("Ev2", "second", ts="1700000001.000100")
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        [answer] = await fake_slack.wait_for(fake_slack.posted)
        assert answer["text"] == "second"


async def test_an_error_retrying_cannot_fix_is_not_retried(fake_slack):
    async with aiohttp.ClientSession() as session:
        client = AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url, session=session,
                                retry_handlers=[])
        api = SlackWebApi(Settings(), client, session, logging.getLogger("test"))
        try:
            await api.call("chat.postMessage", channel="C1")  # no text: Slack says no_text
        except SlackCallError as exc:
            assert exc.error == "no_text" and "chat.postMessage" in str(exc)
        else:
            raise AssertionError("no_text was not raised")
        assert len(fake_slack.attempts) == 1


@attrs.define
class Settings:
    slack_max_retry_attempts: int = 3
    slack_retry_delay: float = 0.01
    slack_retry_exponential_base: float = 2.0
    slack_rate_limit_enabled: bool = True
    slack_rate_limit_calls: int = 2
    slack_rate_limit_period: float = 0.3


async def test_calls_are_rate_limited(fake_slack):
    async with aiohttp.ClientSession() as session:
        client = AsyncWebClient(token=fake_slack.bot_token, base_url=fake_slack.api_url, session=session,
                                retry_handlers=[])
        api = SlackWebApi(Settings(), client, session, logging.getLogger("test"))
        started = time.monotonic()
        await asyncio.gather(*(api.call("chat.postMessage", channel="C1", text=str(n)) for n in range(5)))
        elapsed = time.monotonic() - started
        assert elapsed >= 0.6  # 2 calls per 0.3 s: calls 3-4 wait one window, call 5 two
        times = sorted(call.at for call in fake_slack.attempts)
        for earlier, later in zip(times, times[2:], strict=False):
            assert later - earlier >= 0.2  # never 3 calls within one window (0.3 s, less arrival jitter)

        unlimited = SlackWebApi(Settings(slack_rate_limit_enabled=False), client, session, logging.getLogger("test"))
        assert unlimited.limiter is None


async def test_the_rate_limiter_window():
    limiter = RateLimiter(3, 0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(7):
        await limiter.acquire()
    assert loop.time() - started >= 0.39  # 3 + 3 + 1 calls: two full windows waited


async def test_when_slack_cannot_say_who_the_bot_is_the_event_is_refused_for_a_later_retry(tmp_path, fake_slack):
    fake_slack.fail("auth.test", 503, times=3, error="service_unavailable")  # 1 + 2 retries: all fail
    async with gateway(tmp_path, fake_slack, AGENTS, environ={"SLACK_MAX_RETRY_ATTEMPTS": "2"}) as (platform, client):
        body, headers = mention("Ev1")
        response = await client.post(PATH, data=body, headers=headers)
        assert response.status == 503  # Slack delivers it again
        page, _ = await platform.store.list_executions(agent_name="helper")
        assert page == []
        retried = dict(headers, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"})
        assert (await client.post(PATH, data=body, headers=retried)).status == 200  # Slack is back
        [answer] = await fake_slack.wait_for(fake_slack.posted)
        assert answer["text"] == "hi"
