"""Tokens, the signing secret and response_urls never reach a log line, even at DEBUG and through the SDKs."""

from __future__ import annotations

import logging

from agentrunner_slack.redaction import SecretRedactor
from slack_fake import (
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER,
    SIGNING_SECRET,
    agent_yaml,
    command_form,
    event_callback,
    form_request,
    json_request,
    message_event,
    slack_gateway,
)

from agentrunner.testing.bus_contract import eventually

PATH = "/slack/events"
CANARIES = (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET, "fake-ticket")
#: A response_url is a credential too, but the execution's data holds it (agents may answer through it):
#: the SDKs' lines must not show it; the store's own DEBUG lines (aiosqlite) are not the gateway's.
RESPONSE_URL_SECRET = "response-url-capability"


async def test_secrets_never_reach_the_logs(tmp_path, fake_slack, caplog):
    caplog.set_level(logging.DEBUG)
    agents = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.event.app_mention", "slack.command.ask"])}
    fake_slack.fail("response_url", 429, retry_after=0)
    fake_slack.fail("chat.postMessage", 503, times=4, error="service_unavailable")  # retries exhausted, logged
    environ = {"SLACK_APP_TOKEN": APP_TOKEN, "SLACK_GATEWAY_LOG_LEVEL": "DEBUG"}
    async with slack_gateway(tmp_path, fake_slack, agents, environ=environ) as (_platform, client):
        await fake_slack.wait_for(fake_slack.connected.is_set)
        body, headers = form_request(command_form(fake_slack, "/ask", "hello"))
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        await fake_slack.wait_for(fake_slack.responses)
        mention = event_callback(message_event(f"<@{BOT_USER}> hi", kind="app_mention"), "Ev1")
        body, headers = json_request(mention)
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        await eventually(lambda: "could not post to Slack" in caplog.text)
        body, headers = json_request(mention, secret="forged")
        assert (await client.post(PATH, data=body, headers=headers)).status == 401
        await fake_slack.send_envelope("events_api", event_callback(message_event(
            f"<@{BOT_USER}> again", kind="app_mention", ts="1700000009.000100"), "Ev2"), "env-1")
        await fake_slack.wait_for(fake_slack.posted)
    logged = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    assert "Sending a request" in logged and "apps.connections.open" in logged  # the SDKs did log at DEBUG
    for canary in CANARIES:
        assert canary not in logged, canary
    sdk_lines = [record.getMessage() for record in caplog.records if record.name.startswith(
        ("agentrunner_slack", "slack_bolt", "slack_sdk"))]
    assert any("Sending a request - url: http://127.0.0.1" in line and "/commands/***" in line for line in sdk_lines)
    assert not [line for line in sdk_lines if RESPONSE_URL_SECRET in line]


def test_the_redactor_masks_configured_secrets_and_anything_shaped_like_a_slack_credential():
    redactor = SecretRedactor()
    redactor.add(["s3cret-signing", None, ""])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s %s %s %s", (
        "s3cret-signing", "xoxb-1234-abcd", "https://hooks.slack.com/commands/T1/2/abc",
        "wss://wss.slack.com/link/?ticket=t-123&app_id=A1"), None)
    redactor.filter(record)
    assert record.getMessage() == "*** *** https://hooks.slack.com/*** wss://wss.slack.com/link/?ticket=***&app_id=A1"
    fake_url = "url: http://127.0.0.1:80/hooks/commands/T1/2/abc, body"
    assert redactor.redact(fake_url) == "url: http://127.0.0.1:80/hooks/commands/***, body"
