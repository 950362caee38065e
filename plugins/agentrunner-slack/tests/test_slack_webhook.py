"""The webhook: Slack's signature is checked on the raw body first; forged, stale and junk requests start nothing."""

from __future__ import annotations

import asyncio
import json
import time

import agentrunner_slack
import pytest
from slack_fake import (
    BOT_USER,
    agent_yaml,
    command_form,
    event_callback,
    executions_of,
    form_request,
    json_request,
    message_event,
    signed,
    slack_gateway,
)

from agentrunner.testing.platform import http_client, running_platform

PATH = "/slack/events"
AGENTS = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.event.#", "slack.command.*"])}


def mention(event_id="Ev1"):
    return event_callback(message_event(f"<@{BOT_USER}> hi", kind="app_mention"), event_id)


def refused_requests(fake):
    """(what it is, body, headers) of requests that must be refused with 401."""
    body, good = json_request(mention())
    now = int(time.time())
    form_body, form_headers = form_request(command_form(fake, "/ask", "hi"))
    return [
        ("forged: signed with another secret", body, json_request(mention(), secret="not-the-secret")[1]),
        ("tampered: another body than the one signed", body.replace(b"hi", b"rm -rf"), good),
        ("stale: signed 301 s ago (a replay)", body, signed(body, "application/json", timestamp=now - 301)),
        ("from the future: 301 s ahead", body, signed(body, "application/json", timestamp=now + 301)),
        ("no signature", body, {k: v for k, v in good.items() if k != "X-Slack-Signature"}),
        ("no timestamp", body, {k: v for k, v in good.items() if k != "X-Slack-Request-Timestamp"}),
        ("no headers at all", body, {"Content-Type": "application/json"}),
        ("a timestamp that is not a number", body, dict(good, **{"X-Slack-Request-Timestamp": "yesterday"})),
        ("a signature of another version", body, dict(good, **{"X-Slack-Signature": "v1=" + "0" * 64})),
        ("junk body, junk signature", b"\x00\xff{{{not json", {"Content-Type": "application/json",
                                                                  "X-Slack-Request-Timestamp": str(now),
                                                                  "X-Slack-Signature": "v0=junk\u00e9"}),
        ("junk body, no headers", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), {}),
        ("a command with a forged signature", form_body,
         dict(form_headers, **{"X-Slack-Signature": "v0=" + "f" * 64})),
    ]


async def test_forged_stale_and_junk_requests_get_401_and_start_nothing(tmp_path, fake_slack):
    async with slack_gateway(tmp_path, fake_slack, AGENTS) as (platform, client):
        for what, body, headers in refused_requests(fake_slack):
            response = await client.post(PATH, data=body, headers=headers)
            assert response.status == 401, what
            assert (await response.json())["error"]["code"] == "unauthorized", what
        await asyncio.sleep(0.2)
        assert await executions_of(platform, "helper") == []
        assert fake_slack.attempts == []  # not even auth.test: nothing reached Bolt


async def test_a_signed_body_that_is_not_a_slack_request_gets_400_not_500(tmp_path, fake_slack):
    async with slack_gateway(tmp_path, fake_slack, AGENTS) as (platform, client):
        for body, content_type in ((b"{not json", "application/json"), (b"[1, 2, 3]", "application/json"),
                                   (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded")):
            response = await client.post(PATH, data=body, headers=signed(body, content_type))
            assert response.status == 400, body
        assert await executions_of(platform, "helper") == []


async def test_url_verification_is_answered(tmp_path, fake_slack):
    async with slack_gateway(tmp_path, fake_slack, AGENTS) as (_platform, client):
        body, headers = json_request({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                                      "type": "url_verification"})
        response = await client.post(PATH, data=body, headers=headers)
        assert response.status == 200
        assert (await response.json()) == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


async def test_the_webhook_needs_no_api_key_but_every_other_path_does(tmp_path, fake_slack):
    async with slack_gateway(tmp_path, fake_slack, AGENTS) as (_platform, client):
        body, headers = json_request(mention())
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        assert (await client.post("/slack/other", data=body, headers=headers)).status == 401


async def test_the_webhook_path_follows_its_setting(tmp_path, fake_slack):
    async with slack_gateway(tmp_path, fake_slack, AGENTS, environ={"SLACK_WEBHOOK_PATH": "/hooks/slack"}) as (
            platform, client):
        body, headers = json_request(mention("Ev77"))
        assert (await client.post("/hooks/slack", data=body, headers=headers)).status == 200
        assert (await client.post(PATH, data=body, headers=headers)).status == 401  # not mounted, not exempt
        await fake_slack.wait_for(fake_slack.posted)
        assert len(await executions_of(platform, "helper")) == 1


async def test_without_verification_unsigned_requests_are_accepted(tmp_path, fake_slack):
    environ = {"SLACK_VERIFY_SIGNATURE": "false"}
    async with slack_gateway(tmp_path, fake_slack, AGENTS, environ=environ) as (_platform, client):
        response = await client.post(PATH, data=json.dumps(mention()), headers={"Content-Type": "application/json"})
        assert response.status == 200
        await fake_slack.wait_for(fake_slack.posted)


@pytest.mark.parametrize(("missing", "problem"), [("SLACK_BOT_TOKEN", "SLACK_BOT_TOKEN is not set"),
                                                  ("SLACK_SIGNING_SECRET", "SLACK_SIGNING_SECRET is not set")])
async def test_an_unconfigured_gateway_answers_503_and_the_platform_runs(tmp_path, fake_slack, missing, problem):
    from slack_fake import slack_environ

    environ = {k: v for k, v in slack_environ(fake_slack).items() if k != missing}
    async with running_platform(tmp_path, environ, files=AGENTS, plugins=[(agentrunner_slack, "slack")]) as platform:
        async with http_client(platform, "gateway") as client:
            body, headers = json_request(mention())
            response = await client.post(PATH, data=body, headers=headers)
            assert response.status == 503
            assert problem in (await response.json())["error"]["message"]
            assert (await client.get("/health")).status == 200
