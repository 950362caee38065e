from __future__ import annotations

import pytest
from agentrunner_anthropic import AnthropicProvider
from anthropic_fake_server import FakeAnthropic
from anthropic_support import settings


@pytest.fixture
async def fake():
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def provider(fake):
    """The provider configured with the canary key and the fake's URL as ``ANTHROPIC_BASE_URL``."""
    provider = AnthropicProvider()
    provider.configure(settings(fake.url))
    yield provider
    await provider.aclose()
