"""The pieces: signatures, message splitting and escaping, routing keys, where answers may be posted, once-only."""

from __future__ import annotations

import asyncio
import time

import pytest
from agentrunner_slack import SlackGateway
from agentrunner_slack.answers import response_url_allowed
from agentrunner_slack.intake import command_routing_key, strip_mention
from agentrunner_slack.messages import escape, limit_parts, render_result, split_text
from agentrunner_slack.signature import SignatureError, verify
from slack_fake import BOT_USER, agent_yaml, event_callback, json_request, message_event, slack_gateway
from slack_sdk.signature import SignatureVerifier

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def test_a_signature_made_by_slacks_sdk_verifies():
    body = b"token=x&team_id=T1&command=%2Fask&text=hi"
    now = int(time.time())
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=str(now), body=body)
    verify(SECRET, str(now), signature, body)
    assert SignatureVerifier(SECRET).is_valid(body, str(now), signature)  # the same rules as the SDK's
    verify(SECRET, str(now - 300), SignatureVerifier(SECRET).generate_signature(timestamp=str(now - 300), body=body),
           body, now=now)  # exactly at the edge of the window
    for timestamp, signed_body, sent in ((str(now - 301), body, None), (str(now), body + b"&x=1", None),
                                         (str(now), body, "v0=" + "0" * 64), ("", body, None), (str(now), body, "")):
        signature = sent if sent is not None else SignatureVerifier(SECRET).generate_signature(
            timestamp=timestamp or str(now), body=signed_body)
        with pytest.raises(SignatureError) as refused:
            verify(SECRET, timestamp, signature, body, now=now)
        assert SECRET not in str(refused.value)


def test_split_text_respects_the_limit_and_balances_code_fences():
    text = "intro\n\n```\n" + "\n".join(f"x = {n}" for n in range(2000)) + "\n```\noutro"
    parts = split_text(text, 1000)
    assert len(parts) > 10
    assert all(len(part) <= 1000 for part in parts)
    assert all(part.count("```") % 2 == 0 for part in parts)
    assert "\n".join(parts).replace("\n```\n```\n", "\n").replace("\n", "") == text.replace("\n", "")
    assert split_text("short") == ["short"]


def test_split_text_cuts_long_words_without_breaking_an_escape():
    text = escape("<" * 5000)  # one "word" of 20,000 characters, all escapes
    parts = split_text(text, 3000)
    assert all(len(part) <= 3000 for part in parts) and "".join(parts) == text
    assert all(part.startswith("&lt;") and part.endswith("&lt;") for part in parts)


def test_agent_output_cannot_ping_or_forge_links():
    assert render_result("hi <!channel> <https://evil|bank> & co") == (
        "hi &lt;!channel&gt; &lt;https://evil|bank&gt; &amp; co")
    assert render_result({"n": 1}) == '```\n{\n  "n": 1\n}\n```'
    assert "without an answer" in render_result(None)


def test_limit_parts_says_where_the_rest_is():
    parts = limit_parts(["a" * 10] * 7, 5, "exec-1")
    assert len(parts) == 5 and "20 more characters" in parts[-1] and "exec-1" in parts[-1]
    assert limit_parts(["a"], 5, "exec-1") == ["a"]


def test_command_routing_keys_and_mentions():
    assert command_routing_key("/ask") == "slack.command.ask"
    assert command_routing_key("/Deploy-Prod") == "slack.command.deploy-prod"
    assert command_routing_key("/a.b c") == "slack.command.a_b_c"  # one routing-key word
    assert command_routing_key("/") is None
    assert strip_mention("<@UBOT> hi <@UOTHER>", "UBOT") == "hi <@UOTHER>"
    assert strip_mention("<@UBOT|agent> hi", "UBOT") == "hi"


def test_answers_go_to_slack_hooks_or_the_configured_api_host_only():
    api = "https://slack.com/api/"
    assert response_url_allowed("https://hooks.slack.com/commands/T1/2/abc", api)
    assert not response_url_allowed("http://hooks.slack.com/commands/T1/2/abc", api)
    assert not response_url_allowed("http://169.254.169.254/latest/meta-data", api)
    assert not response_url_allowed("https://hooks.slack.com.evil.example/x", api)
    assert response_url_allowed("http://127.0.0.1:8080/hooks/x", "http://127.0.0.1:8080/api/")
    assert not response_url_allowed("http://127.0.0.1:9999/hooks/x", "http://127.0.0.1:8080/api/")


async def test_a_forged_slack_event_cannot_send_the_answer_elsewhere(tmp_path, fake_slack):
    agents = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.command.ask"])}
    async with slack_gateway(tmp_path, fake_slack, agents) as (platform, _client):
        payload = {"source": "slack", "type": "command", "channel": "C0005", "user": "U1", "text": "hi",
                   "command": "/ask", "response_url": "http://169.254.169.254/latest/meta-data"}
        await platform.orchestrator.publish_event("slack.command.ask", payload, task_input="hi")  # POST /events
        [answer] = await fake_slack.wait_for(fake_slack.posted)
        assert answer["channel"] == "C0005" and answer["text"] == "hi"  # in the channel instead
        assert fake_slack.responses() == []


async def test_two_gateway_processes_post_each_answer_once(tmp_path, fake_slack):
    agents = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.event.app_mention"])}
    async with slack_gateway(tmp_path, fake_slack, agents) as (platform, client):
        second = SlackGateway()  # another gateway process on the same store and bus
        second.configure(platform.settings)
        await second.start(platform)
        try:
            for number in range(3):
                event = message_event(f"<@{BOT_USER}> q{number}", kind="app_mention", ts=f"17000000{number}0.000100")
                body, headers = json_request(event_callback(event, f"Ev{number}"))
                assert (await client.post("/slack/events", data=body, headers=headers)).status == 200
            await fake_slack.wait_for(lambda: len(fake_slack.posted()) == 3)
            await asyncio.sleep(0.3)
            assert sorted(answer["text"] for answer in fake_slack.posted()) == ["q0", "q1", "q2"]
        finally:
            await second.stop()
