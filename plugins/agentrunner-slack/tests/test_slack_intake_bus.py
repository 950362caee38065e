"""Intake when the event bus is slow or refuses: Slack is answered in time, and told to retry what was not queued."""

from __future__ import annotations

import asyncio
import time

from slack_fake import BOT_USER, agent_yaml, command_form, event_callback, form_request, json_request, message_event
from slack_fake import slack_gateway as gateway

import agentrunner
from agentrunner.default_plugins.memory_bus import MemoryEventBus
from agentrunner.interfaces import BusUnavailable

PATH = "/slack/events"
AGENTS = {"helper.yaml": agent_yaml("helper", "autonomous", ["slack.#"])}


class SlowBus(MemoryEventBus):
    """The in-memory bus, taking ``delay`` seconds to accept an event from Slack (a broker under load)."""

    name = "slow"
    delay = 1.0

    async def publish(self, routing_key, payload, headers=None, **options):
        if routing_key.startswith("slack."):
            await asyncio.sleep(self.delay)
        await super().publish(routing_key, payload, headers, **options)


class DownBus(MemoryEventBus):
    """The in-memory bus, refusing events from Slack (a broker that cannot be reached)."""

    name = "down"

    async def publish(self, routing_key, payload, headers=None, **options):
        if routing_key.startswith("slack."):
            raise BusUnavailable("the broker cannot be reached")
        await super().publish(routing_key, payload, headers, **options)


class Buses:
    @agentrunner.hookimpl
    def register_event_buses(self, register):
        register(SlowBus)
        register(DownBus)


async def test_slack_is_answered_within_slack_response_timeout_when_the_bus_is_slow(tmp_path, fake_slack):
    environ = {"EVENT_BUS_BACKEND": "slow", "SLACK_RESPONSE_TIMEOUT": "100"}
    async with gateway(tmp_path, fake_slack, AGENTS, environ=environ, plugins=[(Buses(), "buses")]) as (
            _platform, client):
        body, headers = form_request(command_form(fake_slack, "/ask", "patience"))
        started = time.monotonic()
        response = await client.post(PATH, data=body, headers=headers)
        assert response.status == 200 and time.monotonic() - started < 0.8  # not the bus's full second
        assert "Working on it" in (await response.json())["text"]
        [answer] = await fake_slack.wait_for(fake_slack.responses)  # queued in the background, then answered
        assert answer["text"] == "patience"


async def test_when_the_bus_refuses_slack_is_asked_to_retry_and_the_user_is_told(tmp_path, fake_slack):
    async with gateway(tmp_path, fake_slack, AGENTS, environ={"EVENT_BUS_BACKEND": "down"},
                       plugins=[(Buses(), "buses")]) as (_platform, client):
        body, headers = json_request(event_callback(message_event(f"<@{BOT_USER}> hi", kind="app_mention"), "Ev1"))
        response = await client.post(PATH, data=body, headers=headers)
        assert response.status == 503  # Slack delivers the event again later; its event_id keeps it single
        body, headers = form_request(command_form(fake_slack, "/ask", "hi"))
        response = await client.post(PATH, data=body, headers=headers)
        assert response.status == 200  # a command is not retried by Slack: the user hears it instead
        assert "can't take requests right now" in (await response.json())["text"]
