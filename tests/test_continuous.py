"""Continuous agents in memory: unloaded when idle, restored by their next task or at start."""

from __future__ import annotations

import textwrap

from agentrunner.testing.bus_contract import eventually
from agentrunner.testing.platform import http_client, running_platform


def chatty(restore: bool = True) -> str:
    return textwrap.dedent(f"""\
        name: chatty
        agent_type: assistant
        execution_mode: continuous
        llm_config: {{temperature: 0.5}}
        system_prompt: Chat.
        continuous_config:
          idle_timeout_seconds: 0.3
          restore_on_startup: {str(restore).lower()}
        """)


async def state_of(platform) -> dict:
    async with http_client(platform, "state") as client:
        response = await client.get("/state/chatty")
        assert response.status == 200
        return await response.json()


async def test_an_idle_agent_is_unloaded_and_its_next_task_restores_it(tmp_path):
    async with running_platform(tmp_path, files={"chatty.yaml": chatty()}) as platform:
        async with http_client(platform) as client:
            response = await client.post("/agents/chatty/tasks", json={"input": "one", "wait": 5})
            assert (await response.json())["status"] == "completed"
        assert (await state_of(platform))["loaded"] is True
        assert await platform.cache.get("state:chatty") is not None
        await eventually(lambda: "chatty" not in platform.state.loaded, timeout=3)
        assert await platform.cache.get("state:chatty") is None  # out of memory ...
        unloaded = await state_of(platform)
        assert unloaded["loaded"] is False
        assert [t["user"] for t in unloaded["state_data"]["conversation_history"]] == ["one"]  # ... not lost
        async with http_client(platform) as client:
            await client.post("/agents/chatty/tasks", json={"input": "two", "wait": 5})
        restored = await state_of(platform)
        assert restored["loaded"] is True
        assert [t["user"] for t in restored["state_data"]["conversation_history"]] == ["one", "two"]


async def test_restore_on_startup_loads_the_agent_before_its_first_task(tmp_path):
    async with running_platform(tmp_path, files={"chatty.yaml": chatty()}) as platform:
        await platform.orchestrator.submit("chatty", "hello")
        await eventually(lambda: platform.orchestrator.tasks_handled == 1)
    for restore, loaded in ((True, True), (False, False)):
        async with running_platform(tmp_path, files={"chatty.yaml": chatty(restore)}) as platform:
            assert ("chatty" in platform.state.loaded) is loaded
