"""EVENT_LOOP: which event loop serve, worker and run use."""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import subprocess
import sys
import textwrap

import pytest
import uvloop

from agentrunner import eventloop


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_auto_runs_on_uvloop_when_it_is_installed():
    assert eventloop.run(_loop_type(), "auto") is uvloop.Loop
    assert eventloop.loop_name("auto") == "uvloop"


def test_asyncio_keeps_the_standard_loop():
    loop_type = eventloop.run(_loop_type(), "asyncio")
    assert not issubclass(loop_type, uvloop.Loop)
    assert issubclass(loop_type, asyncio.BaseEventLoop)
    assert eventloop.loop_name("asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_fails_with_the_fix(monkeypatch):
    real_import = builtins.__import__

    def no_uvloop(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert eventloop.loop_factory("auto") is None
    with pytest.raises(eventloop.EventLoopUnavailable,
                       match=r"EVENT_LOOP=uvloop.*pip install uvloop.*EVENT_LOOP=asyncio"):
        eventloop.loop_factory("uvloop")


def test_an_unknown_choice_names_the_variable():
    with pytest.raises(eventloop.EventLoopUnavailable,
                       match=r"EVENT_LOOP='trio' is not one of auto, uvloop, asyncio"):
        eventloop.loop_factory("trio")


# --- start_eagerly: an execution's first step runs at once, as its own task ------------------------------

LOOPS = pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
CURRENT = contextvars.ContextVar("current", default="caller")


@LOOPS
def test_a_coroutine_that_ends_without_waiting_ends_at_once_as_a_task_of_its_own(choice):
    async def main():
        caller = asyncio.current_task()
        seen = {}

        async def instant():
            seen["task"] = asyncio.current_task()
            CURRENT.set("execution")
            return 42

        turns = []
        asyncio.get_running_loop().call_soon(turns.append, "a turn went by")
        assert eventloop.start_eagerly(instant()) == (True, 42)
        assert turns == []  # no turn of the loop before or after it
        assert seen["task"] is not None and seen["task"] is not caller
        assert asyncio.current_task() is caller and CURRENT.get() == "caller"  # its context was a copy

    eventloop.run(main(), choice)


@LOOPS
def test_a_coroutine_that_waits_goes_on_in_the_same_task_and_context(choice):
    async def main():
        caller = asyncio.current_task()

        async def waits():
            first = asyncio.current_task()
            CURRENT.set("execution")
            await asyncio.sleep(0.01)
            return first is asyncio.current_task(), CURRENT.get()

        ended, task = eventloop.start_eagerly(waits())
        assert not ended and isinstance(task, asyncio.Task)
        assert await task == (True, "execution")
        assert asyncio.current_task() is caller and CURRENT.get() == "caller"

    eventloop.run(main(), choice)


@LOOPS
def test_a_timeout_entered_in_the_first_step_cancels_that_task_not_the_caller(choice):
    async def main():
        async def slow():
            async with asyncio.timeout(0.02):  # bound to the task that enters it
                await asyncio.sleep(5)

        ended, task = eventloop.start_eagerly(slow())
        assert not ended
        with pytest.raises(TimeoutError):
            await task
        assert not asyncio.current_task().cancelling()

    eventloop.run(main(), choice)


@LOOPS
def test_an_exception_of_the_first_step_is_raised_to_the_caller(choice):
    async def main():
        async def fails():
            raise ValueError("the model is down")

        with pytest.raises(ValueError, match="the model is down"):
            eventloop.start_eagerly(fails())

    eventloop.run(main(), choice)


@LOOPS
def test_a_cancellation_before_the_task_goes_on_reaches_the_coroutine(choice):
    async def main():
        cleaned = []

        async def waits():
            try:
                await asyncio.sleep(5)
            finally:
                cleaned.append("cleaned up")

        ended, task = eventloop.start_eagerly(waits())
        assert not ended
        task.cancel()  # before the task's first turn: the coroutine is waiting inside its first step
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["cleaned up"]

    eventloop.run(main(), choice)


def test_a_started_process_leaves_what_start_up_made_to_itself_and_collects_less_often():
    """settle_gc in a process of its own: it freezes the heap and changes the thresholds process-wide."""
    script = textwrap.dedent("""
        import gc
        from agentrunner import eventloop
        kept = [object() for _ in range(10)]
        before = gc.get_threshold()
        eventloop.settle_gc()
        cycle = []
        cycle.append(cycle)  # made after start-up: still collected
        del cycle
        print(gc.get_freeze_count() > len(kept), gc.get_threshold()[0], gc.get_threshold()[1:] == before[1:],
              gc.collect() >= 1)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", str(eventloop.GC_THRESHOLD), "True", "True"]
