"""Retries travel on the bus (with ``not_before``) so they survive the process; recovery on start
only re-queues from the store when the bus kept nothing (a process-local bus)."""

from __future__ import annotations

import asyncio
import textwrap
import time

import pytest

import agentrunner
from agentrunner.default_plugins.memory_bus import MemoryEventBus
from agentrunner.records import Execution, new_id
from agentrunner.testing.bus_contract import eventually
from agentrunner.testing.platform import http_client, running_platform


class Plugin:
    """A mode that fails its first ``failures`` attempts; a bus that records publishes."""

    def __init__(self) -> None:
        self.failures = 1
        self.attempts: list[float] = []
        self.published: list[tuple[str, dict]] = []

    @agentrunner.hookimpl
    def register_execution_modes(self, register):
        plugin = self

        class Stumbling:
            name = "stumbling"

            async def execute(self, ctx):
                plugin.attempts.append(time.monotonic())
                if plugin.failures > 0:
                    plugin.failures -= 1
                    raise RuntimeError("stumbled")
                return "up again"

        register(Stumbling())

    @agentrunner.hookimpl
    def register_event_buses(self, register):
        plugin = self

        class RecordingBus(MemoryEventBus):
            name = "recording"

            async def publish(self, routing_key, payload, headers=None, **options):
                plugin.published.append((routing_key, dict(headers or {})))
                await super().publish(routing_key, payload, headers, **options)

        class DurableLookingBus(RecordingBus):
            """Claims its messages outlive the process (as RabbitMQ's do)."""

            name = "durable-looking"
            process_local = False

        register(RecordingBus)
        register(DurableLookingBus)


AGENT = textwrap.dedent("""\
    name: stumbler
    agent_type: assistant
    execution_mode: stumbling
    llm_config: {temperature: 0.5}
    system_prompt: Try again.
    retry_config: {max_retries: 2, retry_delay_seconds: 0.3, exponential_backoff: false}
    """)


@pytest.fixture
def plugin():
    return Plugin()


async def test_a_retry_is_a_delayed_message_on_the_bus(tmp_path, plugin):
    async with running_platform(tmp_path, {"EVENT_BUS_BACKEND": "recording"}, files={"s.yaml": AGENT},
                                plugins=[(plugin, "test")]) as platform:
        async with http_client(platform) as client:
            before = time.time()
            response = await client.post("/agents/stumbler/tasks", json={"input": "go", "wait": 5})
            execution = await response.json()
    assert execution["status"] == "completed" and execution["result"] == "up again" and execution["attempts"] == 2
    tasks = [headers for key, headers in plugin.published if headers.get("task")]
    assert len(tasks) == 2 and "not_before" not in tasks[0]
    assert before + 0.3 <= tasks[1]["not_before"] <= time.time()
    first, second = plugin.attempts
    assert second - first >= 0.29


async def test_stopping_during_a_retry_wait_keeps_the_task_for_the_next_start(tmp_path, plugin):
    plugin.failures = 1
    files = {"s.yaml": AGENT.replace("retry_delay_seconds: 0.3", "retry_delay_seconds: 30")}
    async with running_platform(tmp_path, {"EVENT_BUS_BACKEND": "recording"}, files=files,
                                plugins=[(plugin, "test")], grace=5) as platform:
        execution, _ = await platform.orchestrator.submit("stumbler", "go")
        await eventually(lambda: len(plugin.attempts) == 1 and platform.orchestrator._delayed)
        started = time.monotonic()
    assert time.monotonic() - started < 2  # the 30 s backoff did not hold the stop
    async with running_platform(tmp_path, {"EVENT_BUS_BACKEND": "recording"}, files=files,
                                plugins=[(plugin, "test")]) as platform:
        stored = await platform.store.get_execution(execution.execution_id)
        assert stored.status in ("queued", "running", "completed")
        finished = await platform.orchestrator.wait(execution.execution_id, 5)
        assert finished.status == "completed" and finished.result == "up again"


async def test_recovery_from_the_store_is_only_for_a_bus_that_kept_nothing(tmp_path, plugin):
    plugin.failures = 0
    left = Execution(execution_id=new_id(), agent_name="stumbler", task_type="stumbling", input="left")

    def run(backend):
        return running_platform(tmp_path, {"EVENT_BUS_BACKEND": backend}, files={"s.yaml": AGENT},
                                plugins=[(plugin, "test")])

    async with run("durable-looking") as platform:
        await platform.store.create_execution(left)  # queued by a process that then died
    plugin.published.clear()
    async with run("durable-looking") as platform:
        # a durable bus still holds that task (or redelivers it): re-publishing would run it twice
        await asyncio.sleep(0.1)
        assert [headers for _, headers in plugin.published if headers.get("task")] == []
        assert (await platform.store.get_execution(left.execution_id)).status == "queued"
    async with run("recording") as platform:
        # an in-memory bus lost it with the process: the store says what to re-queue
        finished = await platform.orchestrator.wait(left.execution_id, 5)
        assert finished.status == "completed" and finished.result == "up again"
