"""Fixtures: a fake Slack per test, and execution modes whose timing and outcome the tests control."""

from __future__ import annotations

import asyncio

import pytest
from slack_fake import INTERNAL_ERROR, FakeSlack

import agentrunner


class GatedMode:
    """Answers ``done: {input}`` once the test opens the gate: an agent as slow as the test wants."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def execute(self, ctx):
        self.started.set()
        await self.gate.wait()
        return f"done: {ctx.task.input}"


class AskingMode:
    """Asks a person which region, then answers with it."""

    name = "asking"

    async def execute(self, ctx):
        region = await ctx.ask("Which region should I deploy to?")
        return f"Deploying {ctx.task.input} to {region}"


class BrokenMode:
    """Fails with an error that must stay in the platform."""

    name = "broken"

    async def execute(self, ctx):
        raise RuntimeError(INTERNAL_ERROR)


class LongMode:
    """Answers with a long text (numbered lines, then a code block) to be split."""

    name = "long"

    async def execute(self, ctx):
        lines = [f"line {n:04d}: " + "lorem ipsum dolor sit amet " * 3 for n in range(150)]
        code = "\n".join(f"print({n})" for n in range(400))
        return "\n".join(lines) + "\n```\n" + code + "\n```\nThe end."


class ModesPlugin:
    """The modes above, registered like a plugin's."""

    def __init__(self) -> None:
        self.gated = GatedMode()

    @agentrunner.hookimpl
    def register_execution_modes(self, register):
        for mode in (self.gated, AskingMode(), BrokenMode(), LongMode()):
            register(mode)


@pytest.fixture
async def fake_slack():
    fake = FakeSlack()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def modes():
    return ModesPlugin()
