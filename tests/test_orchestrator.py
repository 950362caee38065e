"""The orchestrator end to end on the embedded defaults: SQLite store, in-memory bus, echo provider."""

from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path

import pytest

import agentrunner
from agentrunner.orchestrator import AgentNotFound, InvalidTransition, RetryPolicy, ShuttingDown
from agentrunner.plugins import make_plugin_manager
from agentrunner.records import new_id
from agentrunner.runtime import Platform
from agentrunner.settings import load_settings


def agent_yaml(name: str, mode: str = "autonomous", extra: str = "") -> str:
    return textwrap.dedent(f"""\
        name: {name}
        agent_type: assistant
        execution_mode: {mode}
        llm_config:
          temperature: 0.7
        system_prompt: You are {name}.
        """) + textwrap.dedent(extra)


class ScriptedModes:
    """Test modes: `flaky` fails its first `fail_times` attempts, `sleepy` sleeps, `stubborn` ignores
    cancellation, `parent` runs a child agent, `gate` waits for an event the test sets."""

    def __init__(self) -> None:
        self.fail_times = 0
        self.calls = 0
        self.gate = asyncio.Event()
        self.started = 0

    @agentrunner.hookimpl
    def register_execution_modes(self, register):
        outer = self

        class Flaky:
            name = "flaky"

            async def execute(self, ctx):
                outer.calls += 1
                if outer.calls <= outer.fail_times:
                    raise RuntimeError(f"boom {outer.calls}")
                return {"attempt": ctx.task.attempt, "input": ctx.task.input}

        class Sleepy:
            name = "sleepy"

            async def execute(self, ctx):
                await asyncio.sleep(float(ctx.task.input))
                return "woke"

        class Stubborn:
            name = "stubborn"

            async def execute(self, ctx):
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    await asyncio.sleep(1)  # ignores the soft limit and keeps working past the hard one
                return "late"

        class Parent:
            name = "parent"

            async def execute(self, ctx):
                child = await ctx.submit("echo-agent", f"child of {ctx.task.input}")
                await ctx.publish("custom.parent.done", {"child": child})
                return child.upper()

        class GateParent:
            name = "gate-parent"

            async def execute(self, ctx):
                return await ctx.submit("gate", ctx.task.input)

        class Gate:
            name = "gate"

            async def execute(self, ctx):
                outer.started += 1
                await outer.gate.wait()
                return "opened"

        class Asker:
            name = "asker"

            async def execute(self, ctx):
                answer = await ctx.ask(f"which colour for {ctx.task.input}?")
                return f"{ctx.task.input} in {answer}"

        for mode in (Flaky(), Sleepy(), Stubborn(), Parent(), GateParent(), Gate(), Asker()):
            register(mode)


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "agents"
    directory.mkdir()
    (directory / "echo-agent.yaml").write_text(agent_yaml("echo-agent"))
    return directory


@pytest.fixture
def modes() -> ScriptedModes:
    return ScriptedModes()


@pytest.fixture
async def make_platform(tmp_path: Path, agents_dir: Path, modes: ScriptedModes):
    """Start platforms on one SQLite file (a second one is a restart); all are stopped afterwards."""
    platforms: list[Platform] = []

    async def make(**env: str) -> Platform:
        environ = {"SQLITE_PATH": str(tmp_path / "agentrunner.db"), "CONFIG_AGENTS_DIR": str(agents_dir),
                   "CONFIG_HOT_RELOAD": "false", "TASK_RETRY_DELAY": "0.01", **env}
        settings = load_settings(environ=environ, env_file=None)
        pm = make_plugin_manager(load_entry_points=False, extra_plugins=[(modes, "scripted-modes")])
        platform = Platform(settings, pm=pm)
        await platform.start()
        platforms.append(platform)
        return platform

    yield make
    for platform in platforms:
        await platform.stop(grace=1)


async def submit_and_wait(platform: Platform, agent: str, value, timeout: float = 10, **kwargs):
    execution, _ = await platform.orchestrator.submit(agent, value, **kwargs)
    return await platform.orchestrator.wait(execution.execution_id, timeout)


async def finished_executions(platform: Platform, agent: str, count: int = 1, timeout: float = 5.0):
    """The agent's executions, newest first, once `count` of them have a terminal status (or at the timeout)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        page, _ = await platform.store.list_executions(agent_name=agent, limit=500)
        if sum(e.terminal for e in page) >= count or asyncio.get_running_loop().time() > deadline:
            return page
        await asyncio.sleep(0.01)


async def test_a_task_runs_to_completion_with_result_timing_trace_and_usage(make_platform):
    platform = await make_platform()
    events = []

    async def record(event):
        events.append(event)

    await platform.bus.subscribe("test.completed", ["agent.execution.*"], record)
    finished = await submit_and_wait(platform, "echo-agent", "hello world")
    assert finished.status == "completed"
    assert finished.result == "hello world"
    assert finished.task_type == "autonomous"
    assert finished.usage == {"input_tokens": 5, "output_tokens": 2, "model": "echo"}
    assert finished.trace_id and finished.duration_seconds is not None and finished.duration_seconds >= 0
    assert finished.started_at <= finished.completed_at
    stored = await platform.store.get_execution(finished.execution_id)
    assert stored.status == "completed" and stored.result == "hello world"
    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.01)
    assert [e.routing_key for e in events] == ["agent.execution.completed"]
    assert events[0].payload["execution_id"] == finished.execution_id


async def test_unknown_agent(make_platform):
    platform = await make_platform()
    with pytest.raises(AgentNotFound):
        await platform.orchestrator.submit("nobody", "x")


async def test_fifty_concurrent_submissions_with_one_idempotency_key_make_one_execution(make_platform):
    platform = await make_platform()
    results = await asyncio.gather(*(
        platform.orchestrator.submit("echo-agent", f"try {i}", idempotency_key="order-42") for i in range(50)))
    ids = {execution.execution_id for execution, _ in results}
    assert len(ids) == 1
    assert sum(created for _, created in results) == 1
    page, _ = await platform.store.list_executions(agent_name="echo-agent", limit=100)
    assert len(page) == 1


async def test_failures_are_retried_per_retry_config(make_platform, agents_dir, modes):
    (agents_dir / "flaky.yaml").write_text(agent_yaml("flaky", "flaky", """\
        retry_config:
          max_retries: 3
          retry_delay_seconds: 0.01
          max_retry_delay: 0.05
        """))
    modes.fail_times = 2
    platform = await make_platform()
    finished = await submit_and_wait(platform, "flaky", "x")
    assert finished.status == "completed"
    assert finished.attempts == 3 and finished.result == {"attempt": 3, "input": "x"}
    assert await platform.store.list_dead_letters() == []


async def test_exhausted_retries_fail_and_dead_letter_and_the_dlq_retry_works(make_platform, agents_dir, modes):
    (agents_dir / "flaky.yaml").write_text(agent_yaml("flaky", "flaky", """\
        retry_config:
          max_retries: 1
          retry_delay_seconds: 0.01
        """))
    modes.fail_times = 5
    platform = await make_platform()
    finished = await submit_and_wait(platform, "flaky", "x")
    assert finished.status == "failed"
    assert finished.attempts == 2
    assert finished.error_message == "RuntimeError: boom 2"
    [letter] = await platform.store.list_dead_letters()
    assert letter.execution_id == finished.execution_id and letter.attempts == 2
    modes.fail_times = 0
    retried = await platform.orchestrator.retry_dead_letter(letter.id)
    assert retried.status == "queued"
    again = await platform.orchestrator.wait(finished.execution_id, 10)
    assert again.status == "completed"
    assert await platform.store.list_dead_letters() == []


def test_backoff_is_exponential_and_capped():
    policy = RetryPolicy(max_retries=5, retry_delay_seconds=5, exponential_backoff=True, backoff_multiplier=2,
                         max_retry_delay=60)
    assert [policy.delay(n) for n in range(1, 6)] == [5, 10, 20, 40, 60]
    flat = RetryPolicy(max_retries=5, retry_delay_seconds=5, exponential_backoff=False)
    assert [flat.delay(n) for n in range(1, 4)] == [5, 5, 5]
    assert policy.delay(1, at_least=30) == 30
    assert all(2.5 <= policy.delay(1, jitter=True) <= 5 for _ in range(100))


async def test_the_default_timeout_marks_timed_out(make_platform, agents_dir):
    (agents_dir / "sleepy.yaml").write_text(agent_yaml("sleepy", "sleepy"))
    platform = await make_platform(TASK_DEFAULT_TIMEOUT="0.2")
    finished = await submit_and_wait(platform, "sleepy", 5)
    assert finished.status == "timed_out"
    assert "time limit of 0.2 s" in finished.error_message


async def test_a_mode_ignoring_cancellation_is_abandoned_at_the_hard_limit(make_platform, agents_dir):
    (agents_dir / "stubborn.yaml").write_text(agent_yaml("stubborn", "stubborn"))
    platform = await make_platform(TASK_DEFAULT_TIMEOUT="0.1", CELERY_TASK_SOFT_TIME_LIMIT="540",
                                   CELERY_TASK_TIME_LIMIT="540.2")
    finished = await submit_and_wait(platform, "stubborn", None)
    assert finished.status == "timed_out"
    assert finished.duration_seconds < 5


async def test_cancelling_a_running_and_a_finished_execution(make_platform, agents_dir):
    (agents_dir / "sleepy.yaml").write_text(agent_yaml("sleepy", "sleepy"))
    platform = await make_platform()
    execution, _ = await platform.orchestrator.submit("sleepy", 30)
    for _ in range(200):
        if (await platform.store.get_execution(execution.execution_id)).status == "running":
            break
        await asyncio.sleep(0.01)
    cancelled = await platform.orchestrator.cancel(execution.execution_id)
    assert cancelled.status == "cancelled"
    await asyncio.sleep(0.05)
    assert (await platform.store.get_execution(execution.execution_id)).status == "cancelled"
    with pytest.raises(InvalidTransition):
        await platform.orchestrator.cancel(execution.execution_id)


async def test_a_quick_task_is_recorded_by_one_write_and_a_longer_one_is_running_while_it_runs(
        make_platform, agents_dir):
    (agents_dir / "sleepy.yaml").write_text(agent_yaml("sleepy", "sleepy"))
    platform = await make_platform()
    store = platform.store
    writes: list[tuple[str, str]] = []
    claim, update = store.claim_execution, store.update_execution

    async def counted_claim(execution_id, started_at):
        writes.append(("claim", execution_id))
        return await claim(execution_id, started_at)

    async def counted_update(execution_id, **fields):
        writes.append(("update", execution_id))
        return await update(execution_id, **fields)

    store.claim_execution, store.update_execution = counted_claim, counted_update
    quick = await submit_and_wait(platform, "echo-agent", "hello")
    stored = await store.get_execution(quick.execution_id)
    # the execution travelled with its task: no claim, one write records the attempt and its result
    assert writes == [("update", quick.execution_id)]
    assert stored.status == "completed" and stored.result == "hello" and stored.attempts == 1
    assert stored.started_at is not None and stored.started_at <= stored.completed_at

    slow, _ = await platform.orchestrator.submit("sleepy", 0.5)
    seen = set()
    for _ in range(300):
        execution = await store.get_execution(slow.execution_id)
        seen.add(execution.status)
        if execution.terminal:
            break
        await asyncio.sleep(0.01)
    # past CLAIM_AFTER it is claimed: the store shows it running, then finished, as one attempt
    assert "running" in seen and execution.status == "completed" and execution.attempts == 1
    assert [kind for kind, execution_id in writes if execution_id == slow.execution_id] == ["claim", "update"]


async def test_a_task_cancelled_by_another_process_before_its_claim_stops_there(make_platform, agents_dir):
    (agents_dir / "sleepy.yaml").write_text(agent_yaml("sleepy", "sleepy"))
    platform = await make_platform()
    execution, _ = await platform.orchestrator.submit("sleepy", 30)
    # what cancel() in another process does: only the store changes, this process is not told
    assert await platform.store.update_execution(execution.execution_id, expect_status=("queued",),
                                                 status="cancelled", error_message="cancelled elsewhere")
    for _ in range(100):
        if not platform.orchestrator._running and not platform.orchestrator._handlers:
            break
        await asyncio.sleep(0.01)
    assert not platform.orchestrator._running  # the claim found it cancelled: the mode was stopped there
    stored = await platform.store.get_execution(execution.execution_id)
    assert stored.status == "cancelled" and stored.result is None and stored.attempts == 0


async def test_a_task_not_stored_yet_is_stored_by_its_claim_when_delivered_again(make_platform, agents_dir, modes):
    """A task submitted by a waiting caller travels unstored; if its first consumer died before storing it,
    the next delivery's claim stores it (from the message), runs it, and records it once."""
    from agentrunner.interfaces import Event
    from agentrunner.orchestrator import UNRECORDED_HEADER
    from agentrunner.records import Execution

    (agents_dir / "flaky.yaml").write_text(agent_yaml("flaky", "flaky"))
    platform = await make_platform()
    submitted = Execution(execution_id=new_id(), agent_name="flaky", task_type="autonomous", input="lost once")
    payload = {"execution_id": submitted.execution_id, "agent_name": "flaky", "execution": submitted.to_json()}
    assert await platform.store.get_execution(submitted.execution_id) is None
    await platform.orchestrator._on_task(Event("autonomous.task.submitted", payload,
                                               {"delivery_count": 2, UNRECORDED_HEADER: True}))
    stored = await platform.store.get_execution(submitted.execution_id)
    assert (stored.status, stored.result, stored.attempts) == ("completed", {"attempt": 1, "input": "lost once"}, 1)
    assert modes.calls == 1
    # and once more (the second consumer died before its acknowledgement): finished, so not run again
    await platform.orchestrator._on_task(Event("autonomous.task.submitted", payload,
                                               {"delivery_count": 3, UNRECORDED_HEADER: True}))
    assert modes.calls == 1 and (await platform.store.get_execution(submitted.execution_id)).attempts == 1


async def test_a_redelivered_task_is_claimed_first_so_a_finished_one_does_not_run_again(
        make_platform, agents_dir, modes):
    from agentrunner.interfaces import Event

    (agents_dir / "flaky.yaml").write_text(agent_yaml("flaky", "flaky"))
    platform = await make_platform()
    finished = await submit_and_wait(platform, "flaky", "once")
    assert finished.status == "completed" and modes.calls == 1
    # the worker stored the result but died before its acknowledgement: the bus delivers the task again
    payload = {"execution_id": finished.execution_id, "agent_name": "flaky", "execution": finished.to_json()}
    await platform.orchestrator._on_task(Event("autonomous.task.submitted", payload, {"delivery_count": 2}))
    assert modes.calls == 1
    assert (await platform.store.get_execution(finished.execution_id)).attempts == 1


async def test_a_slot_is_free_once_the_execution_ends_even_while_its_event_is_being_published(make_platform):
    platform = await make_platform(WORKER_PROCESSES="1", WORKER_THREADS_PER_PROCESS="1")
    assert platform.orchestrator.slots == 1
    gate = asyncio.Event()
    publish = platform.bus.publish

    async def slow_events(routing_key, payload, headers=None, **options):
        if routing_key == "agent.execution.completed":
            await gate.wait()  # a broker slow to confirm the completion event
        await publish(routing_key, payload, headers, **options)

    platform.bus.publish = slow_events
    first, _ = await platform.orchestrator.submit("echo-agent", "one")
    second, _ = await platform.orchestrator.submit("echo-agent", "two")
    for _ in range(300):
        stored = [await platform.store.get_execution(e.execution_id) for e in (first, second)]
        if all(execution.status == "completed" for execution in stored):
            break
        await asyncio.sleep(0.01)
    # the only slot ran the second task while the first one's event was still on its way
    assert [execution.status for execution in stored] == ["completed", "completed"]
    gate.set()
    assert (await platform.orchestrator.wait(first.execution_id, 5)).result == "one"


async def test_a_process_handles_every_task_it_holds_while_earlier_events_wait_for_the_broker(make_platform):
    # one slot, RABBITMQ_PREFETCH_COUNT=6: six handlers (not two, twice the slots), so a broker slow to
    # confirm the completion events holds up no task the process has in hand
    platform = await make_platform(WORKER_PROCESSES="1", WORKER_THREADS_PER_PROCESS="1", RABBITMQ_PREFETCH_COUNT="6")
    gate = asyncio.Event()
    publish = platform.bus.publish

    async def slow_events(routing_key, payload, headers=None, **options):
        if routing_key == "agent.execution.completed":
            await gate.wait()
        await publish(routing_key, payload, headers, **options)

    platform.bus.publish = slow_events
    executions = [(await platform.orchestrator.submit("echo-agent", f"task {n}"))[0] for n in range(6)]
    for _ in range(300):
        stored = [await platform.store.get_execution(e.execution_id) for e in executions]
        if all(execution.status == "completed" for execution in stored):
            break
        await asyncio.sleep(0.01)
    assert [execution.status for execution in stored] == ["completed"] * 6
    gate.set()
    for number, execution in enumerate(executions):
        assert (await platform.orchestrator.wait(execution.execution_id, 5)).result == f"task {number}"


async def test_a_parent_cancelled_while_taking_its_slot_back_leaves_no_extra_slot(make_platform, agents_dir, modes):
    (agents_dir / "gate.yaml").write_text(agent_yaml("gate", "gate"))
    (agents_dir / "gate-parent.yaml").write_text(agent_yaml("gate-parent", "gate-parent"))
    platform = await make_platform(WORKER_PROCESSES="1", WORKER_THREADS_PER_PROCESS="1")
    orchestrator = platform.orchestrator
    parent, _ = await orchestrator.submit("gate-parent", "child")
    for _ in range(300):  # the parent gave its slot to its child, which holds it at the gate
        if modes.started == 1 and parent.execution_id in orchestrator._running:
            break
        await asyncio.sleep(0.01)
    assert modes.started == 1
    inner = orchestrator._running[parent.execution_id]
    inner.cancel()  # the parent stops waiting for its child and wants its slot back: still busy
    await asyncio.sleep(0.05)
    inner.cancel()  # and is cancelled again (its hard limit) while it waits for the slot
    await asyncio.sleep(0.05)
    modes.gate.set()
    for _ in range(300):
        if not orchestrator._handlers:
            break
        await asyncio.sleep(0.01)
    modes.gate.clear()
    # one slot still: of two more tasks, one runs and the other waits for it
    more = [(await orchestrator.submit("gate", n))[0] for n in range(2)]
    await asyncio.sleep(0.3)
    assert modes.started == 2
    modes.gate.set()
    for execution in more:
        assert (await orchestrator.wait(execution.execution_id, 5)).status == "completed"


async def test_task_n_plus_one_stays_queued_until_a_slot_frees(make_platform, agents_dir, modes):
    (agents_dir / "gate.yaml").write_text(agent_yaml("gate", "gate"))
    platform = await make_platform(WORKER_PROCESSES="1", WORKER_THREADS_PER_PROCESS="2")
    assert platform.orchestrator.slots == 2
    executions = [(await platform.orchestrator.submit("gate", i))[0] for i in range(3)]
    for _ in range(200):
        if modes.started == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    statuses = [(await platform.store.get_execution(e.execution_id)).status for e in executions]
    assert sorted(statuses) == ["queued", "running", "running"]
    assert modes.started == 2
    modes.gate.set()
    for execution in executions:
        assert (await platform.orchestrator.wait(execution.execution_id, 10)).status == "completed"


async def test_a_mode_can_run_another_agent_and_publish(make_platform, agents_dir):
    (agents_dir / "parent.yaml").write_text(agent_yaml("parent", "parent"))
    (agents_dir / "listener.yaml").write_text(agent_yaml("listener", extra="""\
        event_subscriptions: ["custom.parent.*"]
        """))
    platform = await make_platform(WORKER_PROCESSES="1", WORKER_THREADS_PER_PROCESS="1")
    finished = await submit_and_wait(platform, "parent", "p")
    assert finished.status == "completed" and finished.result == "CHILD OF P"
    children, _ = await platform.store.list_executions(agent_name="echo-agent")
    assert children[0].parent_execution_id == finished.execution_id
    assert children[0].trace_id == finished.trace_id
    heard = await finished_executions(platform, "listener")
    assert heard[0].input == {"child": "child of p"}
    assert heard[0].data["routing_key"] == "custom.parent.done"


async def test_events_become_tasks_for_subscribed_agents(make_platform, agents_dir):
    (agents_dir / "tickets.yaml").write_text(agent_yaml("tickets", extra="""\
        event_subscriptions: ["customer.ticket.*"]
        """))
    platform = await make_platform()
    await platform.orchestrator.publish_event("customer.ticket.created", {"id": 7})
    await platform.orchestrator.publish_event("customer.order.created", {"id": 8})
    page = await finished_executions(platform, "tickets")
    assert len(page) == 1
    assert page[0].input == {"id": 7}
    assert page[0].data == {"routing_key": "customer.ticket.created", "event": {"id": 7}, "chain_depth": 0}


async def test_the_loop_guard_stops_agents_subscribed_to_everything(make_platform, agents_dir, caplog):
    for name in ("loud", "louder"):
        (agents_dir / f"{name}.yaml").write_text(agent_yaml(name, extra="""\
            event_subscriptions: ["#"]
            """))
    platform = await make_platform()
    caplog.set_level(logging.WARNING, "agentrunner.orchestrator")
    await platform.orchestrator.publish_event("anything.at.all", {"n": 1})
    previous = -1
    for _ in range(100):  # wait until the chain has settled
        await asyncio.sleep(0.05)
        loud, _ = await platform.store.list_executions(agent_name="loud", limit=500)
        louder, _ = await platform.store.list_executions(agent_name="louder", limit=500)
        count = len(loud) + len(louder)
        if count == previous and all(e.terminal for e in loud + louder):
            break
        previous = count
    # depth 0 triggers both; each completion (depth 1..8) triggers only the other agent
    assert count == 2 + 2 * 8
    assert all(e.data["chain_depth"] <= 8 for e in loud + louder)
    assert "event chain is deeper than 8" in caplog.text


async def test_executions_survive_a_restart_and_unfinished_ones_run_again(make_platform, agents_dir, modes):
    (agents_dir / "gate.yaml").write_text(agent_yaml("gate", "gate"))
    first = await make_platform()
    done = await submit_and_wait(first, "echo-agent", "kept")
    pending, _ = await first.orchestrator.submit("gate", "later")
    for _ in range(200):
        if modes.started:
            break
        await asyncio.sleep(0.01)
    await first.orchestrator.stop(grace=0.1)  # the gate never opens: the execution is put back
    assert (await first.store.get_execution(pending.execution_id)).status == "queued"
    await first.stop()
    modes.gate.set()
    second = await make_platform()
    assert (await second.store.get_execution(done.execution_id)).result == "kept"
    again = await second.orchestrator.wait(pending.execution_id, 10)
    assert again.status == "completed" and again.result == "opened"


async def test_an_agent_added_while_running_can_take_tasks(make_platform, agents_dir):
    platform = await make_platform()
    (agents_dir / "newcomer.yaml").write_text(agent_yaml("newcomer", extra="""\
        event_subscriptions: ["hello.*"]
        """))
    await platform.config.reload()
    assert (await submit_and_wait(platform, "newcomer", "hi")).result == "hi"
    await platform.orchestrator.publish_event("hello.world", "from an event")
    page = await finished_executions(platform, "newcomer", 2)
    assert page[0].input == "from an event"


async def test_stopping_refuses_new_tasks_and_leaves_nothing_running(make_platform, agents_dir, modes):
    (agents_dir / "gate.yaml").write_text(agent_yaml("gate", "gate"))
    platform = await make_platform()
    quick = await submit_and_wait(platform, "echo-agent", "q")
    blocked, _ = await platform.orchestrator.submit("gate", "g")
    for _ in range(200):
        if modes.started:
            break
        await asyncio.sleep(0.01)
    await platform.orchestrator.stop(grace=0.2)
    with pytest.raises(ShuttingDown):
        await platform.orchestrator.submit("echo-agent", "late")
    assert quick.status == "completed"
    assert (await platform.store.get_execution(blocked.execution_id)).status == "queued"
    running, _ = await platform.store.list_executions(status="running")
    assert running == []


async def test_a_continuous_agent_keeps_its_conversation_across_tasks_and_restarts(make_platform, agents_dir):
    (agents_dir / "chatty.yaml").write_text(agent_yaml("chatty", "continuous", """\
        continuous_config:
          max_conversation_history: 2
        """))
    first = await make_platform()
    for text in ("one", "two"):
        assert (await submit_and_wait(first, "chatty", text)).result == text
    await first.stop()
    second = await make_platform()
    assert (await submit_and_wait(second, "chatty", "three")).result == "three"
    state = await second.state.get("chatty")
    assert [turn["user"] for turn in state.state_data["conversation_history"]] == ["two", "three"]
    assert state.conversation_history == state.state_data["conversation_history"]
    assert state.version == 3
    assert (await second.store.get_state("chatty")).version == 3  # written through to the store


async def test_hot_reload_reaches_the_running_orchestrator(make_platform, agents_dir):
    platform = await make_platform(CONFIG_HOT_RELOAD="true")
    assert platform.config.watching
    (agents_dir / "late.yaml").write_text(agent_yaml("late", extra="""\
        event_subscriptions: ["late.*"]
        """))
    for _ in range(300):  # within 2 s, without a restart
        if platform.config.get("late") is not None:
            break
        await asyncio.sleep(0.01)
    assert (await submit_and_wait(platform, "late", "hello")).result == "hello"
    await platform.orchestrator.publish_event("late.news", "extra")
    page = await finished_executions(platform, "late", 2)
    assert {e.input for e in page} == {"hello", "extra"}


async def test_blocking_work_runs_on_orchestrator_worker_threads(make_platform):
    import threading

    await make_platform(ORCHESTRATOR_WORKER_THREADS="3")
    names = await asyncio.gather(*(asyncio.to_thread(lambda: (threading.current_thread().name, __import__("time")
                                                               .sleep(0.05))[0]) for _ in range(9)))
    assert {name.rsplit("_", 1)[0] for name in names} == {"agentrunner-worker"}
    assert len(set(names)) == 3


async def test_a_human_answers_a_question_and_the_execution_resumes(make_platform, agents_dir):
    (agents_dir / "asker.yaml").write_text(agent_yaml("asker", "asker"))
    platform = await make_platform(WORKER_PROCESSES="1", WORKER_THREADS_PER_PROCESS="1")
    waiting = await submit_and_wait(platform, "asker", "the logo")
    assert waiting.status == "awaiting_input"
    assert waiting.details["question"] == "which colour for the logo?"
    # waiting for a human holds no worker slot: another task runs meanwhile (one slot in all)
    assert (await submit_and_wait(platform, "echo-agent", "meanwhile")).result == "meanwhile"
    with pytest.raises(InvalidTransition):
        await platform.orchestrator.provide_input("no-such-execution", "red")
    resumed = await platform.orchestrator.provide_input(waiting.execution_id, "blue")
    assert resumed.status == "running"
    finished = await platform.orchestrator.wait(waiting.execution_id, 5)
    assert finished.status == "completed" and finished.result == "the logo in blue"
    assert finished.details["answers"] == [{"question": "which colour for the logo?", "answer": "blue"}]


async def test_each_continuous_agent_has_an_ordered_queue_of_its_own(make_platform, agents_dir):
    (agents_dir / "chatty.yaml").write_text(agent_yaml("chatty", "continuous"))
    platform = await make_platform(CONFIG_HOT_RELOAD="true")
    queues = platform.bus._queues
    assert "agentrunner.tasks.continuous.chatty" in queues and "agentrunner.tasks.continuous" not in queues
    executions = [(await platform.orchestrator.submit("chatty", f"turn {n}"))[0] for n in range(12)]
    for execution in executions:
        assert (await platform.orchestrator.wait(execution.execution_id, 5)).status == "completed"
    state = await platform.state.get("chatty")
    assert [turn["user"] for turn in state.state_data["conversation_history"]][-12:] == [
        f"turn {n}" for n in range(12)]  # in submission order, none lost
    (agents_dir / "second.yaml").write_text(agent_yaml("second", "continuous"))  # added while serving
    for _ in range(300):
        if platform.config.get("second") is not None and "second" in platform.orchestrator._ordered:
            break
        await asyncio.sleep(0.01)
    assert (await submit_and_wait(platform, "second", "hi")).result == "hi"


async def test_agents_are_announced_when_they_load_and_change(make_platform, agents_dir):
    (agents_dir / "first.yaml").write_text(agent_yaml("first"))
    platform = await make_platform(CONFIG_HOT_RELOAD="true")
    seen = []

    async def record(event):
        seen.append(event.payload)

    await platform.bus.subscribe("test.registered", ["agent.registered"], record)
    await platform.orchestrator._announce(platform.config.get("first"))  # as at start (before we listened)
    (agents_dir / "second.yaml").write_text(agent_yaml("second", extra="""\
        event_subscriptions: ["orders.*"]
        """))
    for _ in range(300):
        if any(payload["agent_name"] == "second" for payload in seen):
            break
        await asyncio.sleep(0.01)
    second = next(payload for payload in seen if payload["agent_name"] == "second")
    assert second["execution_mode"] == "autonomous" and second["event_subscriptions"] == ["orders.*"]
    assert second["process"] == platform.orchestrator.process_id
    assert seen[0]["agent_name"] == "first"
