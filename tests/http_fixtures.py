"""Fixtures of the HTTP service tests: a real Platform on the embedded defaults, agents in tmp_path.

``test_http_orchestrator.py`` and ``test_http_services.py`` import them; ``test_web.py`` has its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import agentrunner
from agentrunner.runtime import Platform
from agentrunner.testing.platform import running_platform as testing_platform

#: Secrets given to the platform's environment; none may appear in any response.
CANARY = "canary-7f3a9c1e-token"
CANARY_PASSWORD = "canary-5d2b-password"
CANARY_PROMPT_KEY = "canary-91c4-prompt-key"
CANARIES = (CANARY, CANARY_PASSWORD, CANARY_PROMPT_KEY)
API_KEY = "k" * 40
OLD_API_KEY = "o" * 40

ECHO = textwrap.dedent("""\
    name: echo-agent
    agent_type: assistant
    execution_mode: autonomous
    llm_config:
      temperature: 0.7
    system_prompt: Echo.
    event_subscriptions: ["customer.ticket.*"]
    tools:
      - name: lookup
        type: api
        url: https://api.example.com/lookup
        auth:
          type: bearer_token
          token: "${CANARY_TOKEN}"
    """)

#: Secrets that ``${VAR}`` puts outside the fields marked secret: a URL, a prompt, a header, an env.
LEAKY = textwrap.dedent("""\
    name: leaky-agent
    agent_type: assistant
    execution_mode: autonomous
    llm_config:
      temperature: 0.7
      base_url: "https://bot:${DB_PASSWORD}@llm.example.com/v1"
    system_prompt: "You hold the key ${PROMPT_API_KEY}."
    tools:
      - name: lookup
        type: api
        url: "https://api.example.com/lookup?token=${CANARY_TOKEN}"
        headers: {X-Extra: "${CANARY_TOKEN}"}
        auth:
          type: api_key
          key: "${CANARY_TOKEN}"
          header: X-Key
      - name: dumps
        type: function
        function: json:dumps
        env: {TOKEN: "${CANARY_TOKEN}"}
    """)


def agent_yaml(name: str, mode: str = "autonomous", extra: str = "") -> str:
    """A minimal agent file on the echo provider."""
    return textwrap.dedent(f"""\
        name: {name}
        agent_type: assistant
        execution_mode: {mode}
        llm_config:
          temperature: 0.7
        system_prompt: Test agent.
        """) + textwrap.dedent(extra)


class ModesPlugin:
    """Execution modes the HTTP tests need: one that fails, one that waits until released."""

    def __init__(self) -> None:
        self.failures_left = 0
        self.release = asyncio.Event()

    @agentrunner.hookimpl
    def register_execution_modes(self, register):
        modes = self

        class Flaky:
            name = "flaky"

            async def execute(self, ctx):
                if modes.failures_left > 0:
                    modes.failures_left -= 1
                    raise RuntimeError("flaky failure")
                return f"ok: {ctx.task.input}"

        class Gate:
            name = "gate"

            async def execute(self, ctx):
                await modes.release.wait()
                return ctx.task.input

        register(Flaky())
        register(Gate())


class BoomRoutes:
    """A plugin adding a route that fails with a secret in its exception."""

    @agentrunner.hookimpl
    def register_routes(self, app):
        async def boom(request):
            raise RuntimeError(f"database password is {CANARY}")

        async def ping(request):
            from aiohttp import web

            return web.json_response({"pong": True})

        app.router.add_get("/plugin/boom", boom)
        app.router.add_get("/plugin/ping", ping)


AGENT_FILES = {
    "echo-agent.yaml": ECHO,
    "leaky-agent.yaml": LEAKY,
    "flaky.yaml": agent_yaml("flaky-agent", "flaky", """\
        retry_config: {max_retries: 0, retry_delay_seconds: 0}
        """),
    "gate.yaml": agent_yaml("gate-agent", "gate"),
}


@contextlib.asynccontextmanager
async def running_platform(tmp_path: Path, environ: Mapping[str, str] = (), *,
                           files: Mapping[str, str] | None = None,
                           plugins: list[tuple[Any, str]] = ()) -> AsyncIterator[Platform]:
    """A started Platform on SQLite in ``tmp_path`` with ``files`` as its agents and the canaries set."""
    secrets = {"CANARY_TOKEN": CANARY, "DB_PASSWORD": CANARY_PASSWORD, "PROMPT_API_KEY": CANARY_PROMPT_KEY}
    async with testing_platform(tmp_path, {**secrets, **dict(environ)},
                                files=AGENT_FILES if files is None else files, plugins=plugins) as platform:
        yield platform


@pytest.fixture
def modes() -> ModesPlugin:
    return ModesPlugin()


@pytest.fixture
async def platform(tmp_path, request, modes):
    """The platform; ``@pytest.mark.parametrize("platform", [{...env...}], indirect=True)`` adds variables."""
    async with running_platform(tmp_path, getattr(request, "param", {}),
                                plugins=[(modes, "test-modes"), (BoomRoutes(), "boom-routes")]) as platform:
        try:
            yield platform
        finally:
            modes.release.set()  # before the stop, which would wait for the gated executions


async def post(client, path: str, body: Any = None, **kwargs) -> tuple[int, Any]:
    """POST ``body`` as JSON (nothing when None); the status and the decoded answer."""
    response = await (client.post(path, json=body, **kwargs) if body is not None else client.post(path, **kwargs))
    return response.status, await response.json()


async def get(client, path: str, **kwargs) -> tuple[int, Any]:
    response = await client.get(path, **kwargs)
    return response.status, await response.json()


def assert_error(status: int, body: Any, expected_status: int, code: str, *words: str) -> None:
    """The uniform error shape, with its status, code and words of its message."""
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    for word in words:
        assert word in body["error"]["message"], body


def assert_no_secret(text: str) -> None:
    for canary in CANARIES:
        assert canary not in text


async def eventually(probe, timeout: float = 5.0):
    """Poll the coroutine function ``probe`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await probe()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.02)


def dumps(value: Any) -> str:
    return json.dumps(value)
