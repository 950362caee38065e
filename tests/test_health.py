"""Heartbeats of the processes that run agents, and agent.health.changed when they stop."""

from __future__ import annotations

import textwrap

from agentrunner.testing.bus_contract import eventually
from agentrunner.testing.platform import http_client, running_platform

AGENT = textwrap.dedent("""\
    name: worker-bee
    agent_type: assistant
    execution_mode: autonomous
    llm_config: {temperature: 0.5}
    system_prompt: Work.
    event_subscriptions: ["#"]
    """)


async def test_an_agent_without_heartbeats_becomes_unresponsive_then_healthy_again(tmp_path):
    environ = {"AGENT_HEALTH_CHECK_INTERVAL": "1", "AGENT_UNRESPONSIVE_THRESHOLD": "2"}
    async with running_platform(tmp_path, environ, files={"bee.yaml": AGENT}) as platform:
        health = platform.orchestrator.health
        changes = []

        async def record(event):
            changes.append(event.payload)

        await platform.bus.subscribe("test.health", ["agent.health.changed"], record)
        clock = [1000.0]
        health.clock = lambda: clock[0]
        await health.start_monitor()
        await health.beat()  # a worker says it runs worker-bee
        await eventually(lambda: health.status.get("worker-bee") == "healthy")
        async with http_client(platform) as client:
            body = await (await client.get("/agents/worker-bee")).json()
        assert body["health"]["status"] == "healthy" and body["health"]["last_heartbeat"].startswith("1970-01-01")
        clock[0] += 3  # past AGENT_UNRESPONSIVE_THRESHOLD with no heartbeat
        await health.check()
        await eventually(lambda: [c["status"] for c in changes] == ["healthy", "unresponsive"])
        assert changes[-1]["agent_name"] == "worker-bee"
        await health.beat()  # the worker is back
        await eventually(lambda: [c["status"] for c in changes] == ["healthy", "unresponsive", "healthy"])
        # heartbeats are plumbing: the agent subscribed to '#' got tasks for the health events, none for them
        page, _ = await platform.store.list_executions(agent_name="worker-bee", limit=100)
        assert page and not [e for e in page if isinstance(e.input, dict) and "process" in e.input]
