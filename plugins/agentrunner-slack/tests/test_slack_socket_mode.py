"""Socket Mode (SLACK_APP_TOKEN): the gateway connects through apps.connections.open and acknowledges envelopes."""

from __future__ import annotations

from slack_fake import APP_TOKEN, BOT_USER, agent_yaml, command_form, event_callback, message_event, slack_gateway


async def test_socket_mode_envelopes_become_tasks_and_are_answered(tmp_path, fake_slack):
    agents = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.event.app_mention", "slack.command.ask"])}
    async with slack_gateway(tmp_path, fake_slack, agents, environ={"SLACK_APP_TOKEN": APP_TOKEN}) as (
            platform, _client):
        await fake_slack.wait_for(fake_slack.connected.is_set)
        [opened] = [call for call in fake_slack.calls if call.method == "apps.connections.open"]
        assert opened.headers["Authorization"] == f"Bearer {APP_TOKEN}"  # the app-level token, not the bot's

        mention = message_event(f"<@{BOT_USER}> status of the build?", ts="1700001000.000100", kind="app_mention")
        ack = await fake_slack.send_envelope("events_api", event_callback(mention, "Ev900"), "env-1")
        assert ack == {"envelope_id": "env-1"}
        [answer] = await fake_slack.wait_for(fake_slack.posted)
        assert answer["thread_ts"] == "1700001000.000100" and answer["text"] == "status of the build?"

        command = command_form(fake_slack, "/ask", "who is on call?")
        ack = await fake_slack.send_envelope("slash_commands", command, "env-2")
        assert ack["envelope_id"] == "env-2"
        assert ack["payload"]["response_type"] == "ephemeral" and "Working on it" in ack["payload"]["text"]
        [response] = await fake_slack.wait_for(fake_slack.responses)
        assert response["text"] == "who is on call?"

        # a redelivered envelope (same event_id) starts nothing new
        await fake_slack.send_envelope("events_api", event_callback(mention, "Ev900"), "env-3")
        page, _ = await platform.store.list_executions(agent_name="helper")
        assert sorted(e.input for e in page) == ["status of the build?", "who is on call?"]
