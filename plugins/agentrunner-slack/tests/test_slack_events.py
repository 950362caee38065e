"""Events: mentions, messages and reactions become tasks; answers go to the thread; retries start nothing twice."""

from __future__ import annotations

import asyncio

from slack_fake import (
    BOT_ID,
    BOT_USER,
    INTERNAL_ERROR,
    SIGNING_SECRET,
    agent_yaml,
    event_callback,
    executions_of,
    json_request,
    message_event,
    slack_gateway,
)

PATH = "/slack/events"


async def deliver(client, event, event_id, **headers):
    body, signed_headers = json_request(event_callback(event, event_id), extra=headers or None)
    response = await client.post(PATH, data=body, headers=signed_headers)
    assert response.status == 200, await response.text()
    return response


async def test_a_mention_is_answered_in_its_thread(tmp_path, fake_slack):
    agents = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.event.app_mention"])}
    async with slack_gateway(tmp_path, fake_slack, agents) as (platform, client):
        mention = message_event(f"<@{BOT_USER}> how do I rotate keys?", ts="1700000000.000100", kind="app_mention")
        await deliver(client, mention, "Ev100")
        [answer] = await fake_slack.wait_for(fake_slack.posted)
        assert answer["channel"] == "C0001" and answer["thread_ts"] == "1700000000.000100"
        assert answer["text"] == "how do I rotate keys?"  # the echo agent: the input is the text, mention removed
        [execution] = await executions_of(platform, "helper")
        assert execution.data["routing_key"] == "slack.event.app_mention"
        assert execution.data["event"]["event_id"] == "Ev100" and execution.data["event"]["ts"] == "1700000000.000100"
        auth = [call for call in fake_slack.calls if call.method == "auth.test"]
        assert len(auth) == 1  # Bolt learns who the bot is once


async def test_a_message_in_a_thread_is_answered_in_that_thread(tmp_path, fake_slack):
    agents = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.event.message"])}
    async with slack_gateway(tmp_path, fake_slack, agents) as (_platform, client):
        reply = message_event("and for staging?", ts="1700000050.000200", thread_ts="1700000000.000100")
        await deliver(client, reply, "Ev101")
        [answer] = await fake_slack.wait_for(fake_slack.posted)
        assert answer["thread_ts"] == "1700000000.000100"  # the thread's root, not the reply
        assert answer["text"] == "and for staging?"


async def test_a_reaction_starts_a_task_with_the_reaction(tmp_path, fake_slack):
    agents = {"triage.yaml": agent_yaml("triage", "autonomous", ["slack.event.reaction_added"])}
    async with slack_gateway(tmp_path, fake_slack, agents) as (platform, client):
        reaction = {"type": "reaction_added", "user": "U0002", "reaction": "ticket", "item_user": "U0001",
                    "item": {"type": "message", "channel": "C0009", "ts": "1700000100.000300"},
                    "event_ts": "1700000101.000100"}
        await deliver(client, reaction, "Ev102")
        [answer] = await fake_slack.wait_for(fake_slack.posted)
        assert answer == {"channel": "C0009", "thread_ts": "1700000100.000300", "text": "ticket",
                          "unfurl_links": False, "unfurl_media": False}
        [execution] = await executions_of(platform, "triage")
        assert execution.input == "ticket"
        assert execution.data["event"]["reaction"] == "ticket" and execution.data["event"]["user"] == "U0002"


async def test_a_retried_delivery_starts_one_execution(tmp_path, fake_slack):
    agents = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.event.message"])}
    async with slack_gateway(tmp_path, fake_slack, agents) as (platform, client):
        event = message_event("deploy status?", ts="1700000200.000100")
        await deliver(client, event, "Ev200")
        await deliver(client, event, "Ev200", **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
        await deliver(client, event, "Ev200", **{"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_error"})
        await fake_slack.wait_for(fake_slack.posted)
        await asyncio.sleep(0.3)  # time for a second execution and answer, were there one
        assert len(await executions_of(platform, "helper")) == 1
        assert len(fake_slack.posted()) == 1


async def test_the_bots_own_messages_and_edits_start_nothing(tmp_path, fake_slack):
    agents = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.event.message"])}
    async with slack_gateway(tmp_path, fake_slack, agents) as (platform, client):
        own = dict(message_event("an answer", user=BOT_USER), bot_id=BOT_ID)
        other_bot = dict(message_event("beep"), bot_id="BOTHER", subtype="bot_message")
        edit = dict(message_event("edited"), subtype="message_changed")
        for number, event in enumerate((own, other_bot, edit)):
            await deliver(client, event, f"Ev30{number}")
        await deliver(client, message_event("a person", ts="1700000300.000100"), "Ev310")
        await fake_slack.wait_for(fake_slack.posted)
        assert [e.input for e in await executions_of(platform, "helper")] == ["a person"]


async def test_ephemeral_answers_in_the_thread(tmp_path, fake_slack):
    agents = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.event.app_mention"])}
    async with slack_gateway(tmp_path, fake_slack, agents, environ={"SLACK_EPHEMERAL_RESPONSES": "true"}) as (
            _platform, client):
        await deliver(client, message_event(f"<@{BOT_USER}> secret plan", kind="app_mention", user="U0042"), "Ev400")
        [answer] = await fake_slack.wait_for(lambda: fake_slack.posted("chat.postEphemeral"))
        assert answer == {"channel": "C0001", "user": "U0042", "thread_ts": "1700000000.000100", "text": "secret plan"}
        assert fake_slack.posted() == []


async def test_a_failing_agent_gets_a_short_human_message(tmp_path, fake_slack, modes):
    agents = {"broken.yaml": agent_yaml("broken", "broken", ["slack.event.app_mention"])}
    async with slack_gateway(tmp_path, fake_slack, agents, plugins=[(modes, "test-modes")]) as (platform, client):
        await deliver(client, message_event(f"<@{BOT_USER}> do it", kind="app_mention"), "Ev500")
        [answer] = await fake_slack.wait_for(fake_slack.posted)
        [execution] = await executions_of(platform, "broken")
        assert execution.status == "failed" and INTERNAL_ERROR in execution.error_message  # kept for operators
        text = answer["text"]
        assert text.startswith(":warning: Sorry, *broken* could not finish")
        assert execution.execution_id in text
        for leak in ("Traceback", "RuntimeError", "db.py", SIGNING_SECRET):
            assert leak not in text
        assert len(text) < 300


async def test_a_long_answer_is_split_in_the_thread(tmp_path, fake_slack, modes):
    agents = {"long.yaml": agent_yaml("long", "long", ["slack.event.app_mention"])}
    async with slack_gateway(tmp_path, fake_slack, agents, plugins=[(modes, "test-modes")]) as (platform, client):
        await deliver(client, message_event(f"<@{BOT_USER}> report", kind="app_mention"), "Ev600")
        await fake_slack.wait_for(lambda: fake_slack.posted() and fake_slack.posted()[-1]["text"].endswith("The end."))
        [execution] = await executions_of(platform, "long")
        result = execution.result
        parts = [answer["text"] for answer in fake_slack.posted()]
        assert len(parts) > 5 and all(len(part) <= 3000 for part in parts)
        assert {answer["thread_ts"] for answer in fake_slack.posted()} == {"1700000000.000100"}
        assert all(part.count("```") % 2 == 0 for part in parts)  # a code block cut in two is closed and reopened
        joined = "\n".join(parts).replace("\n```\n```\n", "\n")
        assert [line for line in joined.splitlines() if line] == [line for line in result.splitlines() if line]
