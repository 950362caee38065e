"""Fixtures: a fake OpenAI server per test, and an environment the SDK cannot read a real key from."""

from __future__ import annotations

import pytest
from openai_fake_server import FakeOpenAI

# The SDK falls back on these when an argument is None; a developer's own values must not leak into tests.
SDK_VARIABLES = ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_BASE_URL",
                 "OPENAI_CUSTOM_HEADERS", "OPENAI_WEBHOOK_SECRET", "OPENAI_LOG")


@pytest.fixture(autouse=True)
def no_openai_environment(monkeypatch):
    for name in SDK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake_openai():
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
