"""End to end: real platforms on the RabbitMQ bus, tasks sent through the HTTP API."""

from __future__ import annotations

import asyncio
import time

import agentrunner_rabbitmq
import pytest
from rabbitmq_support import broker_environ

import agentrunner
from agentrunner.orchestrator import NOTICE_HEADER_MAX
from agentrunner.testing.platform import http_client, running_platform

ECHO = """\
name: echo-bot
agent_type: assistant
execution_mode: autonomous
llm_config: {temperature: 0.5}
system_prompt: Repeat after me.
"""

TICKETS = """\
name: ticket-bot
agent_type: assistant
execution_mode: autonomous
llm_config: {temperature: 0.5}
system_prompt: Handle tickets.
event_subscriptions: ["customer.ticket.*"]
"""

PLUGINS = [(agentrunner_rabbitmq, "rabbitmq")]


async def test_tasks_sent_over_http_complete_through_rabbitmq_and_are_stored(tmp_path, broker):
    environ = broker_environ(broker.exchange)
    async with running_platform(tmp_path, environ, files={"echo.yaml": ECHO, "tickets.yaml": TICKETS},
                                plugins=PLUGINS) as platform:
        broker.forget(*platform.bus.declared_queues)
        assert platform.bus.name == "rabbitmq"
        async with http_client(platform) as client:
            responses = await asyncio.gather(*(
                client.post("/agents/echo-bot/tasks", json={"input": f"hello {n}", "wait": 10}) for n in range(6)))
            executions = [await response.json() for response in responses]
            assert [response.status for response in responses] == [200] * 6
            assert [(e["status"], e["result"]) for e in executions] == [("completed", f"hello {n}") for n in range(6)]

            stored = await (await client.get(f"/executions/{executions[0]['execution_id']}")).json()
            assert (stored["status"], stored["result"], stored["agent_name"]) == ("completed", "hello 0", "echo-bot")

            response = await client.post("/events", json={"routing_key": "customer.ticket.created",
                                                          "payload": {"ticket": 42}})
            assert response.status in (200, 202)
            ticket = await wait_for_execution(client, "ticket-bot")
            assert ticket["status"] == "completed"
            assert ticket["data"]["routing_key"] == "customer.ticket.created"

            health = await (await client.get("/health")).json()
            assert health["dependencies"]["bus"] == {"status": "ok", "backend": "rabbitmq"}
        tasks = platform.bus.queue_name("agentrunner.tasks.autonomous")
        assert tasks in platform.bus.declared_queues and tasks + ".dlq" in platform.bus.declared_queues
        assert await platform.bus.queue_depth("agentrunner.tasks.autonomous") == 0
        broker.forget(*platform.bus.declared_queues)


class TaggedMode:
    """An execution mode that says which process ran the task."""

    name = "tagged"
    uses_state = False

    def __init__(self, process: str) -> None:
        self.process = process

    async def execute(self, ctx):
        return f"{self.process}: {ctx.task.input}"


class TaggedPlugin:
    def __init__(self, process: str) -> None:
        self.mode = TaggedMode(process)

    @agentrunner.hookimpl
    def register_execution_modes(self, register):
        register(self.mode)


TAGGED = """\
name: tagged-bot
agent_type: assistant
execution_mode: tagged
llm_config: {temperature: 0.5}
system_prompt: Say who you are.
"""


async def test_tasks_submitted_to_one_process_run_in_both_and_wake_the_submitter(tmp_path, broker):
    """Two processes on one exchange (and one database) compete for tasks; the one that submitted a task
    waits for it and is woken through the bus's ``agent.execution.*`` events when the other ran it."""
    environ = broker_environ(broker.exchange)
    async with running_platform(tmp_path, environ, files={"tagged.yaml": TAGGED},
                                plugins=[*PLUGINS, (TaggedPlugin("first"), "tagged")]) as first, \
            running_platform(tmp_path, environ, plugins=[*PLUGINS, (TaggedPlugin("second"), "tagged")]) as second:
        broker.forget(*first.bus.declared_queues, *second.bus.declared_queues)
        async with http_client(first) as client:
            started = time.monotonic()
            responses = await asyncio.gather(*(
                client.post("/agents/tagged-bot/tasks", json={"input": f"task {n}", "wait": 20}) for n in range(12)))
            executions = [await response.json() for response in responses]
        assert all(e["status"] == "completed" for e in executions)
        assert sorted(e["result"].split(": ")[1] for e in executions) == sorted(f"task {n}" for n in range(12))
        assert {e["result"].split(": ")[0] for e in executions} == {"first", "second"}
        assert time.monotonic() - started < 10  # woken by events, not by the end of a 20 s wait
        broker.forget(*first.bus.declared_queues, *second.bus.declared_queues)


@pytest.mark.parametrize("size", [10, 5000])
async def test_a_notice_that_arrives_before_the_submitter_waits_spares_a_store_read(tmp_path, broker, size):
    """The process that ran a task tells the submitter with the whole execution; when that arrives before
    anyone waits (the broker may confirm the task's publish after the notice is delivered), a later wait
    still finds it without reading the store. A small execution rides on the completion event itself (one
    message, routed to the submitter too); one too large for a header goes in a notice of its own."""
    environ = broker_environ(broker.exchange)
    async with running_platform(tmp_path, environ, files={"tagged.yaml": TAGGED},
                                plugins=[*PLUGINS, (TaggedPlugin("first"), "tagged")]) as first, \
            running_platform(tmp_path, environ, plugins=[*PLUGINS, (TaggedPlugin("second"), "tagged")]) as second:
        broker.forget(*first.bus.declared_queues, *second.bus.declared_queues)
        sent: list[str] = []
        publish = second.bus.publish

        async def counted(routing_key, payload, headers=None, **options):
            sent.append(routing_key)
            await publish(routing_key, payload, headers, **options)

        second.bus.publish = counted
        orchestrator = first.orchestrator
        padding = "x" * size
        submitted = [(await orchestrator.submit("tagged-bot", f"task {n} {padding}"))[0].execution_id
                     for n in range(12)]
        deadline = time.monotonic() + 10
        while not all(execution_id in orchestrator._finished for execution_id in submitted):
            assert time.monotonic() < deadline, "the submitter did not hear of every execution"
            await asyncio.sleep(0.02)

        async def no_reads(execution_id):
            raise AssertionError(f"the store was read for {execution_id}")

        orchestrator.store.get_execution = no_reads
        finished = [await orchestrator.wait(execution_id, 5) for execution_id in submitted]
        assert [execution.status for execution in finished] == ["completed"] * 12
        by_second = [execution for execution in finished if execution.result.startswith("second: ")]
        assert by_second  # notices did arrive from the other process
        assert all(execution.result.endswith(padding) for execution in finished)
        notices = [key for key in sent if key.startswith("agentrunner.done.")]
        assert sent.count("agent.execution.completed") == len(by_second)
        assert len(notices) == (0 if size < NOTICE_HEADER_MAX else len(by_second))
        broker.forget(*first.bus.declared_queues, *second.bus.declared_queues)


class NapMode:
    """Sleeps as many seconds as the task's input says, then answers."""

    name = "nap"
    uses_state = False

    async def execute(self, ctx):
        await asyncio.sleep(float(ctx.task.input))
        return f"slept {ctx.task.input}"


class NapPlugin:
    @agentrunner.hookimpl
    def register_execution_modes(self, register):
        register(NapMode())


NAPPER = """\
name: napper
agent_type: assistant
execution_mode: nap
llm_config: {temperature: 0.5}
system_prompt: Nap.
"""


class CountedWrites:
    """Which writes of the execution store each execution got."""

    def __init__(self, *stores) -> None:
        self.writes: list[tuple[str, str]] = []
        for store in stores:
            self._count(store)

    def _count(self, store) -> None:
        create, update, claim = store.create_execution, store.update_execution, store.claim_execution

        async def counted_create(execution):
            self.writes.append(("create", execution.execution_id))
            return await create(execution)

        async def counted_update(execution_id, **fields):
            self.writes.append(("update+insert" if "insert" in fields else "update", execution_id))
            return await update(execution_id, **fields)

        async def counted_claim(execution_id, started_at, **options):
            self.writes.append(("claim+insert" if "insert" in options else "claim", execution_id))
            return await claim(execution_id, started_at, **options)

        store.create_execution, store.update_execution, store.claim_execution = \
            counted_create, counted_update, counted_claim

    def of(self, execution_id: str) -> list[str]:
        return [kind for kind, which in self.writes if which == execution_id]


async def test_a_waited_task_is_stored_once_when_it_ends(tmp_path, broker, monkeypatch):
    """A caller that waits has no execution id before the answer: the execution is not stored at submission
    but by the write that records its end (one write per task instead of two)."""
    from agentrunner import orchestrator as orchestrator_module

    monkeypatch.setattr(orchestrator_module, "RECORD_AFTER", 30.0)  # a slow machine must not store it first
    environ = broker_environ(broker.exchange)
    async with running_platform(tmp_path, environ, files={"tagged.yaml": TAGGED},
                                plugins=[*PLUGINS, (TaggedPlugin("first"), "tagged")]) as first, \
            running_platform(tmp_path, environ, plugins=[*PLUGINS, (TaggedPlugin("second"), "tagged")]) as second:
        broker.forget(*first.bus.declared_queues, *second.bus.declared_queues)
        counted = CountedWrites(first.store, second.store)  # one SQLite file: the same table for both
        async with http_client(first) as client:
            responses = await asyncio.gather(*(
                client.post("/agents/tagged-bot/tasks", json={"input": f"task {n}", "wait": 20}) for n in range(10)))
            executions = [await response.json() for response in responses]
            assert [response.status for response in responses] == [200] * 10
            for execution in executions:
                stored = await (await client.get(f"/executions/{execution['execution_id']}")).json()
                assert stored == execution and stored["status"] == "completed" and stored["attempts"] == 1
                assert counted.of(execution["execution_id"]) == ["update+insert"]
        assert {e["result"].split(": ")[0] for e in executions} == {"first", "second"}  # both stored some
        assert not first.orchestrator._unrecorded and not first.orchestrator._recording
        broker.forget(*first.bus.declared_queues, *second.bus.declared_queues)


async def test_a_waited_task_still_running_is_stored_and_listed(tmp_path, broker, monkeypatch):
    """Past RECORD_AFTER (or when the caller's wait runs out first) the submitter stores the execution, so a
    task that takes long is listed while it runs, and a caller answered 202 can read it by its id."""
    from agentrunner import orchestrator as orchestrator_module

    environ = broker_environ(broker.exchange)
    async with running_platform(tmp_path, environ, files={"napper.yaml": NAPPER},
                                plugins=[*PLUGINS, (NapPlugin(), "nap")]) as platform:
        broker.forget(*platform.bus.declared_queues)
        counted = CountedWrites(platform.store)
        async with http_client(platform) as client:
            waiting = asyncio.ensure_future(client.post("/agents/napper/tasks", json={"input": 0.6, "wait": 20}))
            deadline = time.monotonic() + 5
            while True:  # listed while it runs, long before it ends
                page = await (await client.get("/executions?agent_name=napper")).json()
                if page["executions"]:
                    break
                assert time.monotonic() < deadline, "the running execution was never listed"
                await asyncio.sleep(0.02)
            assert page["executions"][0]["status"] in ("queued", "running")
            execution = await (await waiting).json()
            assert (execution["status"], execution["result"], execution["attempts"]) == ("completed", "slept 0.6", 1)
            # stored by its submitter, claimed by its consumer and finished: each once
            assert sorted(counted.of(execution["execution_id"])) == ["claim+insert", "update", "update+insert"]

            # a wait that runs out first: the execution is stored before the caller gets its id
            monkeypatch.setattr(orchestrator_module, "RECORD_AFTER", 30.0)
            monkeypatch.setattr(orchestrator_module, "CLAIM_AFTER", 30.0)
            response = await client.post("/agents/napper/tasks", json={"input": 0.5, "wait": 0.05})
            assert response.status == 202
            queued = await response.json()
            stored = await client.get(f"/executions/{queued['execution_id']}")
            assert stored.status == 200 and (await stored.json())["status"] in ("queued", "running")
            execution = await platform.orchestrator.wait(queued["execution_id"], 10)
            assert (execution.status, execution.result) == ("completed", "slept 0.5")
            stored = await (await client.get(f"/executions/{queued['execution_id']}")).json()
            assert (stored["status"], stored["attempts"]) == ("completed", 1)
        broker.forget(*platform.bus.declared_queues)


async def wait_for_execution(client, agent: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        page = await (await client.get(f"/executions?agent_name={agent}")).json()
        finished = [e for e in page["executions"] if e["status"] not in ("queued", "running")]
        if finished:
            return finished[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no execution of {agent} finished in time: {page}")
        await asyncio.sleep(0.05)
