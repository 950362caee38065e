"""A real Platform for plugin tests: embedded defaults, agents from strings, the orchestrator's HTTP app.

    async with running_platform(tmp_path, {"OPENAI_API_KEY": "sk-test"},
                                files={"bot.yaml": BOT}, plugins=[(plugin_module, "openai")]) as platform:
        async with http_client(platform) as client:
            response = await client.post("/agents/bot/tasks", json={"input": "hi", "wait": 5})

``plugins`` are registered on top of the default plugins, as their entry points
would be; entry points themselves are not loaded, so each test says which
plugins it runs with.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from agentrunner.plugins import make_plugin_manager
from agentrunner.runtime import Platform
from agentrunner.settings import load_settings


@contextlib.asynccontextmanager
async def running_platform(tmp_path: Path, environ: Mapping[str, str] = (), *, files: Mapping[str, str] = (),
                           plugins: list[tuple[Any, str]] = (), grace: float = 1.0) -> AsyncIterator[Platform]:
    """A started Platform on SQLite in ``tmp_path`` with ``files`` (name → YAML) as its agents; stopped after."""
    agents = tmp_path / "agents"
    agents.mkdir(exist_ok=True)
    for name, text in dict(files).items():
        (agents / name).write_text(text)
    settings = load_settings(environ={
        "SQLITE_PATH": str(tmp_path / "db.sqlite"), "CONFIG_AGENTS_DIR": str(agents), "CONFIG_HOT_RELOAD": "false",
        **dict(environ)}, env_file=None)
    pm = make_plugin_manager(load_entry_points=False, extra_plugins=list(plugins))
    platform = Platform(settings, pm=pm)
    await platform.start()
    try:
        yield platform
    finally:
        await platform.stop(grace=grace)


@contextlib.asynccontextmanager
async def http_client(platform: Platform, service: str = "orchestrator") -> AsyncIterator[Any]:
    """An aiohttp test client of one of the platform's services (``orchestrator``, ``state``, ``config``…)."""
    from aiohttp.test_utils import TestClient, TestServer

    from agentrunner.web.server import build_app

    async with TestClient(TestServer(build_app(platform, service))) as client:
        yield client
