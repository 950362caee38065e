"""Human in the loop: an agent's question goes to the thread, and a reply there answers it."""

from __future__ import annotations

import asyncio

from slack_fake import (
    BOT_ID,
    BOT_USER,
    agent_yaml,
    command_form,
    event_callback,
    executions_of,
    form_request,
    json_request,
    message_event,
    slack_gateway,
)

PATH = "/slack/events"
ROOT = "1700002000.000100"


async def deliver(client, event, event_id):
    body, headers = json_request(event_callback(event, event_id))
    response = await client.post(PATH, data=body, headers=headers)
    assert response.status == 200, await response.text()


async def test_a_question_is_asked_in_the_thread_and_a_reply_there_answers_it(tmp_path, fake_slack, modes):
    agents = {"deployer.yaml": agent_yaml("deployer", "asking", ["slack.event.app_mention", "slack.event.message"])}
    async with slack_gateway(tmp_path, fake_slack, agents, plugins=[(modes, "test-modes")]) as (platform, client):
        await deliver(client, message_event(f"<@{BOT_USER}> deploy v2.1", ts=ROOT, kind="app_mention", user="U0007"),
                      "Ev1")
        [question] = await fake_slack.wait_for(fake_slack.posted)
        assert question["thread_ts"] == ROOT and question["channel"] == "C0001"
        assert "Which region should I deploy to?" in question["text"] and "<@U0007>" in question["text"]
        [execution] = await executions_of(platform, "deployer")
        assert execution.status == "awaiting_input"

        # Slack echoes the bot's own question as a message: no loop, no answer
        await deliver(client, dict(message_event(question["text"], ts="1700002001.000100", thread_ts=ROOT,
                                                 user=BOT_USER), bot_id=BOT_ID), "Ev2")
        # the person's reply answers the question...
        reply = message_event(f"<@{BOT_USER}> eu-west-1", ts="1700002005.000100", thread_ts=ROOT, user="U0007")
        await deliver(client, reply, "Ev3")
        await fake_slack.wait_for(lambda: len(fake_slack.posted()) == 2)
        answer = fake_slack.posted()[1]
        assert answer["thread_ts"] == ROOT and answer["text"] == "Deploying deploy v2.1 to eu-west-1"
        # ... and arrives again once the execution has finished: as a mention of the bot, and retried by Slack
        await deliver(client, dict(reply, type="app_mention"), "Ev4")
        await deliver(client, reply, "Ev3")
        await asyncio.sleep(0.2)
        [finished] = await executions_of(platform, "deployer")  # the reply started no task of its own
        assert finished.status == "completed"
        assert finished.details["answers"] == [{"question": "Which region should I deploy to?", "answer": "eu-west-1"}]

        # the conversation is over: the next message in the thread is an ordinary one again
        await deliver(client, message_event("thanks!", ts="1700002010.000100", thread_ts=ROOT, user="U0007"), "Ev5")
        await fake_slack.wait_for(lambda: len(fake_slack.posted()) == 3)  # a new execution, asking again
        assert sorted(e.input for e in await executions_of(platform, "deployer")) == ["deploy v2.1", "thanks!"]


async def test_a_commands_question_opens_a_thread_where_the_conversation_goes_on(tmp_path, fake_slack, modes):
    agents = {"deployer.yaml": agent_yaml("deployer", "asking", ["slack.command.deploy"])}
    async with slack_gateway(tmp_path, fake_slack, agents, plugins=[(modes, "test-modes")]) as (platform, client):
        body, headers = form_request(command_form(fake_slack, "/deploy", "api", user="U0008", channel="C0042"))
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        [question] = await fake_slack.wait_for(fake_slack.posted)
        assert question["channel"] == "C0042" and "thread_ts" not in question  # a new message: a thread's root
        assert "<@U0008>" in question["text"]
        root_ts = next(call.answer["ts"] for call in fake_slack.calls if call.method == "chat.postMessage")
        await deliver(client, message_event("us-east-2", ts="1800000000.000100", thread_ts=root_ts, channel="C0042",
                                            user="U0008"), "Ev10")
        await fake_slack.wait_for(lambda: len(fake_slack.posted()) == 2)
        answer = fake_slack.posted()[1]
        assert answer == {"channel": "C0042", "thread_ts": root_ts, "text": "Deploying api to us-east-2",
                          "unfurl_links": False, "unfurl_media": False}
        assert fake_slack.responses() == []  # the answer followed the conversation into the thread
        [execution] = await executions_of(platform, "deployer")
        assert execution.status == "completed"



async def test_a_command_in_a_channel_the_bot_is_not_in_gets_its_question_privately(tmp_path, fake_slack, modes):
    fake_slack.fail("chat.postMessage", 200, error="not_in_channel")  # Slack's answer: ok false, HTTP 200
    agents = {"deployer.yaml": agent_yaml("deployer", "asking", ["slack.command.deploy"])}
    async with slack_gateway(tmp_path, fake_slack, agents, plugins=[(modes, "test-modes")]) as (_platform, client):
        body, headers = form_request(command_form(fake_slack, "/deploy", "api", channel="C0404"))
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        [notice] = await fake_slack.wait_for(fake_slack.responses)
        assert notice["response_type"] == "ephemeral"
        assert "Which region should I deploy to?" in notice["text"] and "Invite me" in notice["text"]
        assert len([c for c in fake_slack.attempts if c.method == "chat.postMessage"]) == 1  # not retried
