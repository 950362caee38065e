"""Fixtures: a fake Ollama per test, and a provider configured to use it (closed after the test)."""

from __future__ import annotations

import pytest
from agentrunner_ollama import OllamaProvider
from ollama_fake_server import FakeOllama

from agentrunner.settings import load_settings


@pytest.fixture
async def fake_ollama():
    server = await FakeOllama().start()
    yield server
    await server.stop()


@pytest.fixture
async def provider(fake_ollama):
    """The provider with ``OLLAMA_BASE_URL`` pointing at the fake server."""
    provider = OllamaProvider()
    provider.configure(load_settings(environ={"OLLAMA_BASE_URL": fake_ollama.url}, env_file=None))
    yield provider
    await provider.aclose()
