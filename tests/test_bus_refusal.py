"""A bus that refuses a task (a full queue) or is unreachable: the submitter hears 503, nothing is left queued."""

from __future__ import annotations

import textwrap

import pytest

import agentrunner
from agentrunner.default_plugins.memory_bus import MemoryEventBus
from agentrunner.interfaces import BusUnavailable, MessageRejected
from agentrunner.testing.platform import http_client, running_platform


class RefusingBus(MemoryEventBus):
    """The in-memory bus, but publishing raises ``refusal`` while it is set."""

    name = "refusing"
    refusal: Exception | None = None

    async def publish(self, routing_key, payload, headers=None, **options):
        if RefusingBus.refusal is not None:
            raise RefusingBus.refusal
        await super().publish(routing_key, payload, headers, **options)


class DurableRefusingBus(RefusingBus):
    """As a broker would be: tasks survive the process, so a waited task is stored only when it ends."""

    name = "refusing-durable"
    process_local = False


class Plugin:
    @agentrunner.hookimpl
    def register_event_buses(self, register):
        register(RefusingBus)
        register(DurableRefusingBus)


AGENT = textwrap.dedent("""\
    name: busy
    agent_type: assistant
    execution_mode: autonomous
    llm_config: {temperature: 0.5}
    system_prompt: Busy.
    """)


@pytest.fixture(params=["refusing", "refusing-durable"])
async def platform(tmp_path, request):
    RefusingBus.refusal = None
    async with running_platform(tmp_path, {"EVENT_BUS_BACKEND": request.param}, files={"busy.yaml": AGENT},
                                plugins=[(Plugin(), "refusing-bus")]) as platform:
        yield platform
    RefusingBus.refusal = None


@pytest.mark.parametrize("refusal", [MessageRejected("queue agentrunner.tasks.autonomous is full"),
                                     BusUnavailable("cannot reach the broker")])
async def test_a_refused_task_is_a_503_and_its_execution_is_failed_not_left_queued(platform, refusal):
    RefusingBus.refusal = refusal
    async with http_client(platform) as client:
        response = await client.post("/agents/busy/tasks", json={"input": "hi", "wait": 1})
        body = await response.json()
        assert response.status == 503 and response.headers["Retry-After"] == "5"
        assert body["error"]["code"] == "unavailable" and str(refusal) in body["error"]["message"]
        (execution,), _ = await platform.store.list_executions(agent_name="busy")
        assert execution.status == "failed" and execution.error_message == f"not queued: {refusal}"
        assert await platform.store.executions_with_status(["queued"]) == []  # nothing to recover later
        RefusingBus.refusal = None
        response = await client.post("/agents/busy/tasks", json={"input": "again", "wait": 5})
        assert (await response.json())["result"] == "again"


async def test_an_event_the_bus_refuses_is_a_503(platform):
    RefusingBus.refusal = BusUnavailable("cannot reach the broker")
    async with http_client(platform) as client:
        response = await client.post("/events", json={"routing_key": "customer.ticket.created"})
        assert response.status == 503
