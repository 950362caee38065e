"""Slash commands: acknowledged at once, before the agent runs; the answer arrives at the response_url."""

from __future__ import annotations

import time

from slack_fake import agent_yaml, command_form, executions_of, form_request, slack_gateway

PATH = "/slack/events"


async def test_a_command_is_acknowledged_at_once_and_answered_at_its_response_url(tmp_path, fake_slack, modes):
    agents = {"slow.yaml": agent_yaml("slow", "gated", ["slack.command.ask"])}
    async with slack_gateway(tmp_path, fake_slack, agents, plugins=[(modes, "test-modes")]) as (platform, client):
        fields = command_form(fake_slack, "/ask", "what is our SLA?")
        body, headers = form_request(fields)
        started = time.monotonic()
        response = await client.post(PATH, data=body, headers=headers)  # no API key: Slack signs instead
        acknowledged_in = time.monotonic() - started
        assert response.status == 200
        assert acknowledged_in < 3.0  # Slack's window, although the agent has not answered (and will not yet)
        ack = await response.json()
        assert ack["response_type"] == "ephemeral" and "Working on it" in ack["text"]

        await modes.gated.started.wait()  # the agent runs after the acknowledgement
        assert fake_slack.responses() == []
        modes.gated.gate.set()
        answer = (await fake_slack.wait_for(fake_slack.responses))[0]
        assert answer == {"text": "done: what is our SLA?", "response_type": "in_channel"}
        assert fake_slack.calls[-1].headers.get("Authorization") is None  # a response_url needs no token

        [execution] = await executions_of(platform, "slow")
        assert execution.input == "what is our SLA?"
        event = execution.data["event"]
        assert execution.data["routing_key"] == "slack.command.ask"
        assert event["command"] == "/ask" and event["channel"] == "C0001" and event["user"] == "U0001"
        assert event["response_url"] == fields["response_url"] and event["team"] == "T0001"
        assert execution.idempotency_key == f"event:slack:{fields['trigger_id']}"


async def test_ephemeral_responses(tmp_path, fake_slack):
    agents = {"echo.yaml": agent_yaml("echo", "autonomous", ["slack.command.*"])}
    environ = {"SLACK_EPHEMERAL_RESPONSES": "true"}
    async with slack_gateway(tmp_path, fake_slack, agents, environ=environ) as (_platform, client):
        body, headers = form_request(command_form(fake_slack, "/support", "reset my password"))
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        answer = (await fake_slack.wait_for(fake_slack.responses))[0]
        assert answer == {"text": "reset my password", "response_type": "ephemeral"}


async def test_a_command_nobody_answers_says_so_and_starts_nothing(tmp_path, fake_slack):
    agents = {"echo.yaml": agent_yaml("echo", "autonomous", ["slack.command.ask"])}
    async with slack_gateway(tmp_path, fake_slack, agents) as (platform, client):
        body, headers = form_request(command_form(fake_slack, "/deploy", "prod"))
        response = await client.post(PATH, data=body, headers=headers)
        assert response.status == 200
        assert (await response.json())["text"] == "No agent answers `/deploy` yet."
        assert await executions_of(platform, "echo") == []


async def test_a_long_answer_is_split_across_at_most_five_response_url_messages(tmp_path, fake_slack, modes):
    agents = {"long.yaml": agent_yaml("long", "long", ["slack.command.report"])}
    async with slack_gateway(tmp_path, fake_slack, agents, plugins=[(modes, "test-modes")]) as (platform, client):
        body, headers = form_request(command_form(fake_slack, "/report", "all"))
        assert (await client.post(PATH, data=body, headers=headers)).status == 200
        await fake_slack.wait_for(lambda: len(fake_slack.responses()) == 5)
        [stored] = await executions_of(platform, "long")
        texts = [answer["text"] for answer in fake_slack.responses()]
        assert all(len(text) <= 3000 + 200 for text in texts)
        assert texts[0].startswith("line 0000")
        assert "answer cut here" in texts[-1]
        assert stored.execution_id in texts[-1]  # where to find the whole answer
