"""Streaming: text deltas of a streaming provider reach SSE readers and ``agentrunner run --stream``."""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest
from click.testing import CliRunner

import agentrunner
from agentrunner.cli import cli
from agentrunner.interfaces import CompletionResponse, Message, ProviderError, Usage
from agentrunner.records import Execution
from agentrunner.streams import StreamHub
from agentrunner.testing.platform import http_client, running_platform


class Scripted:
    """A provider that streams ``deltas`` one by one, each when ``gate`` lets it; can fail first."""

    name = "scripted"

    def __init__(self) -> None:
        self.deltas = ["Hello", ", ", "world"]
        self.failures = 0  # streams that fail after their first delta, with a retryable error
        self.gate: asyncio.Queue | None = None
        self.calls = 0

    async def complete(self, request):
        self.calls += 1
        return CompletionResponse(text="".join(self.deltas), usage=Usage(3, 3), model="scripted-1")

    async def stream(self, request):
        self.calls += 1
        for index, delta in enumerate(self.deltas):
            if self.gate is not None:
                await self.gate.get()
            yield delta
            if self.failures and index == 0:
                self.failures -= 1
                raise ProviderError("scripted: overloaded (529)", retryable=True, status=529)
        yield CompletionResponse(text="".join(self.deltas), usage=Usage(7, len(self.deltas)), model="scripted-1")


class Whole:
    """A provider that cannot stream."""

    name = "whole"

    async def complete(self, request):
        return CompletionResponse(text="all at once", usage=Usage(1, 3), model="whole-1")


class Providers:
    """The test providers, and a mode ``held`` that asks its model only once ``release`` is set."""

    def __init__(self) -> None:
        self.scripted = Scripted()
        self.release = asyncio.Event()

    @agentrunner.hookimpl
    def register_providers(self, register):
        register(self.scripted)
        register(Whole())

    @agentrunner.hookimpl
    def register_execution_modes(self, register):
        release = self.release

        class Held:
            name = "held"

            async def execute(self, ctx):
                await release.wait()
                return (await ctx.complete([Message("user", str(ctx.task.input))])).text

        register(Held())


def agent(name: str, provider: str, mode: str = "autonomous") -> str:
    return textwrap.dedent(f"""\
        name: {name}
        agent_type: assistant
        execution_mode: {mode}
        llm_config: {{provider: {provider}, model: m}}
        system_prompt: Stream.
        retry_config: {{max_retries: 2, retry_delay_seconds: 0.01}}
        """)


FILES = {"talker.yaml": agent("talker", "scripted"), "mute.yaml": agent("mute", "whole"),
         "held.yaml": agent("held", "scripted", "held"),
         "echoer.yaml": agent("echoer", "echo")}


@pytest.fixture
def providers():
    return Providers()


@pytest.fixture
async def platform(tmp_path, providers):
    async with running_platform(tmp_path, files=FILES, plugins=[(providers, "test-providers")]) as platform:
        yield platform


async def read_events(response) -> list[tuple[str, object]]:
    """The server-sent events of a response, in order, as (event, decoded data)."""
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for block in (await response.text()).split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if lines:
            fields = dict(line.split(": ", 1) for line in lines)
            events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_a_task_submitted_with_stream_answers_with_its_deltas_then_the_execution(platform):
    async with http_client(platform) as client:
        events = await read_events(await client.post("/agents/talker/tasks", json={"input": "hi", "stream": True}))
    names = [name for name, _ in events]
    assert names == ["execution", "delta", "delta", "delta", "done"]
    assert [data["text"] for name, data in events if name == "delta"] == ["Hello", ", ", "world"]
    done = events[-1][1]
    assert events[0][1] == {"execution_id": done["execution_id"], "status": "queued"}
    assert done["status"] == "completed" and done["result"] == "Hello, world"
    # the usage of a streamed answer is the provider's final count
    assert done["usage"] == {"input_tokens": 7, "output_tokens": 3, "model": "scripted-1"}
    stored = await platform.store.get_execution(done["execution_id"])
    assert stored.usage == done["usage"]


async def test_deltas_reach_a_reader_while_the_model_is_still_writing(platform, providers):
    providers.scripted.gate = asyncio.Queue()
    async with http_client(platform) as client:
        response = await client.post("/agents/held/tasks", json={"input": "hi"})
        assert response.status == 202
        execution_id = (await response.json())["execution_id"]
        stream = await client.get(f"/executions/{execution_id}/stream")  # before the model is asked
        assert stream.status == 200
        assert (await stream.content.readline()).decode() == "event: execution\n"
        providers.release.set()
        seen = []
        for delta in ("Hello", ", ", "world"):
            providers.scripted.gate.put_nowait(None)  # let exactly one more delta out
            while True:
                line = (await stream.content.readline()).decode()
                if line.startswith("data: ") and '"text"' in line:
                    seen.append(json.loads(line[6:])["text"])
                    break
            assert seen[-1] == delta  # read before the next one was even produced
        rest = (await stream.content.read()).decode()
        assert "event: done" in rest and '"status": "completed"' in rest


async def test_a_finished_execution_streams_its_result_as_one_delta(platform):
    async with http_client(platform) as client:
        response = await client.post("/agents/mute/tasks", json={"input": "hi", "wait": 5})
        execution = await response.json()
        assert execution["status"] == "completed"
        events = await read_events(await client.get(f"/executions/{execution['execution_id']}/stream"))
    assert events == [("execution", {"execution_id": execution["execution_id"], "status": "completed"}),
                      ("delta", {"text": "all at once"}), ("done", execution)]


async def test_a_provider_that_cannot_stream_sends_its_answer_whole(platform):
    async with http_client(platform) as client:
        events = await read_events(await client.post("/agents/mute/tasks", json={"input": "hi", "stream": True}))
    assert [name for name, _ in events] == ["execution", "delta", "done"]
    assert events[1][1] == {"text": "all at once"} and events[2][1]["status"] == "completed"


async def test_a_retried_stream_tells_readers_to_drop_the_partial_answer(platform, providers):
    providers.scripted.failures = 1
    async with http_client(platform) as client:
        events = await read_events(await client.post("/agents/talker/tasks", json={"input": "hi", "stream": True}))
    assert [name for name, _ in events] == ["execution", "delta", "retry", "delta", "delta", "delta", "done"]
    assert events[2][1] == {"attempt": 2, "error": "scripted: overloaded (529)"}
    assert events[-1][1]["result"] == "Hello, world" and providers.scripted.calls == 2


async def test_a_failed_execution_ends_its_stream_with_the_failure(platform, providers):
    providers.scripted.failures = 5  # more than max_retries
    async with http_client(platform) as client:
        events = await read_events(await client.post("/agents/talker/tasks", json={"input": "hi", "stream": True}))
    done = events[-1]
    assert done[0] == "done" and done[1]["status"] == "failed"
    assert "overloaded" in done[1]["error_message"]
    assert [name for name, _ in events].count("retry") == 2


async def test_stream_requests_are_checked(platform):
    async with http_client(platform) as client:
        response = await client.post("/agents/talker/tasks", json={"input": "hi", "stream": True, "wait": 3})
        assert response.status == 400 and "cannot be combined" in (await response.json())["error"]["message"]
        response = await client.post("/agents/talker/tasks", json={"input": "hi", "stream": "yes"})
        assert response.status == 400 and "'stream' must be of type boolean" in await response.text()
        response = await client.get("/executions/nope/stream")
        assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"


async def test_tasks_nobody_streams_use_complete_and_keep_no_stream(platform, providers):
    async with http_client(platform) as client:
        response = await client.post("/agents/talker/tasks", json={"input": "hi", "wait": 5})
        assert (await response.json())["result"] == "Hello, world"
    assert len(platform.orchestrator.streams) == 0


async def test_finished_streams_are_dropped_after_they_linger():
    hub = StreamHub(linger=0)
    stream = hub.open("a")
    stream.push("delta", {"text": "x"})
    execution = Execution(execution_id="a", agent_name="n", task_type="autonomous", status="completed")
    hub.finish(execution)
    assert [event async for event in stream.follow()] == [("delta", {"text": "x"}), ("done", execution)]
    await asyncio.sleep(0.001)
    hub.open("b")
    assert hub.get("a") is None and hub.get("b") is not None


async def test_a_follower_that_waits_gets_idle_ticks():
    stream = StreamHub().open("a")
    follower = stream.follow(idle=0.01)
    assert await anext(follower) == ("idle", None)
    stream.push("delta", {"text": "late"})
    assert await anext(follower) == ("delta", {"text": "late"})


def _cli(tmp_path, *args, env=None):
    agents = tmp_path / "cfg" / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    (agents / "echoer.yaml").write_text(FILES["echoer.yaml"])
    environ = {"SQLITE_PATH": str(tmp_path / "cli.db"), "CONFIG_HOT_RELOAD": "false", **(env or {})}
    return CliRunner().invoke(cli, [*args, "--config", str(tmp_path / "cfg")], env=environ, catch_exceptions=False)


def test_run_stream_prints_the_answer_as_it_comes(tmp_path):
    result = _cli(tmp_path, "run", "echoer", "one two three", "--stream")
    assert result.exit_code == 0, result.output
    assert result.stdout == "one two three\n"
