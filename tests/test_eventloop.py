"""EVENT_LOOP: which event loop serve, worker and run use."""

from __future__ import annotations

import asyncio
import builtins

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
