"""AGENT_REGISTRATION_TIMEOUT: agents that cannot register on the event bus in time fail a start
(named, with the variable to check) and leave a hot reload's other agents running."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time

import pytest

import agentrunner
from agentrunner.default_plugins.memory_bus import MemoryEventBus
from agentrunner.plugins import make_plugin_manager
from agentrunner.runtime import Platform, PlatformError
from agentrunner.settings import load_settings
from agentrunner.testing.platform import running_platform


class StuckBus(MemoryEventBus):
    """The in-memory bus, except that declaring a continuous agent's queue never answers while stuck
    (as a broker that accepts the connection but not the declaration)."""

    name = "stuck"
    stuck = True

    async def subscribe(self, queue, bindings, handler, **options):
        if StuckBus.stuck and queue.startswith("agentrunner.tasks.continuous."):
            await asyncio.Event().wait()
        return await super().subscribe(queue, bindings, handler, **options)


class Plugin:
    @agentrunner.hookimpl
    def register_event_buses(self, register):
        register(StuckBus)


def agent(name: str, mode: str) -> str:
    return textwrap.dedent(f"""\
        name: {name}
        agent_type: assistant
        execution_mode: {mode}
        llm_config: {{temperature: 0.5}}
        system_prompt: Talk.
        """)


ENVIRON = {"EVENT_BUS_BACKEND": "stuck", "AGENT_REGISTRATION_TIMEOUT": "1"}


async def test_a_start_whose_agents_cannot_register_fails_naming_them_and_the_variable(tmp_path):
    StuckBus.stuck = True
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "talker.yaml").write_text(agent("talker", "continuous"))
    settings = load_settings(environ={**ENVIRON, "SQLITE_PATH": str(tmp_path / "db.sqlite"),
                                      "CONFIG_AGENTS_DIR": str(tmp_path / "agents"), "CONFIG_HOT_RELOAD": "false"},
                             env_file=None)
    platform = Platform(settings, pm=make_plugin_manager(load_entry_points=False,
                                                         extra_plugins=[(Plugin(), "stuck-bus")]))
    factory = logging.getLogRecordFactory()
    began = time.monotonic()
    with pytest.raises(PlatformError, match=r"registering the agents talker on the event bus \(stuck\) took "
                                            r"longer than AGENT_REGISTRATION_TIMEOUT=1 s"):
        await platform.start()
    assert time.monotonic() - began < 5
    assert not platform.started
    assert logging.getLogRecordFactory() is factory  # the failed start undid what it had begun


async def test_a_reload_whose_new_agent_cannot_register_keeps_the_others_running(tmp_path, caplog):
    StuckBus.stuck = True
    async with running_platform(tmp_path, ENVIRON, files={"worker.yaml": agent("worker", "autonomous")},
                                plugins=[(Plugin(), "stuck-bus")]) as platform:
        (tmp_path / "agents" / "talker.yaml").write_text(agent("talker", "continuous"))
        with caplog.at_level(logging.ERROR, logger="agentrunner.orchestrator"):
            await platform.config.reload()
        assert "registering the agents talker on the event bus (stuck) took longer than " \
               "AGENT_REGISTRATION_TIMEOUT=1 s" in caplog.text
        execution, _new = await platform.orchestrator.submit("worker", "still here")
        done = await platform.orchestrator.wait(execution.execution_id, timeout=5)
        assert done.status == "completed" and done.result == "still here"
        StuckBus.stuck = False  # the bus answers again: the next reload registers the agent
        (tmp_path / "agents" / "talker.yaml").write_text(agent("talker", "continuous").replace("Talk.", "Chat."))
        await platform.config.reload()
        execution, _new = await platform.orchestrator.submit("talker", "hello")
        done = await platform.orchestrator.wait(execution.execution_id, timeout=5)
        assert done.status == "completed"
