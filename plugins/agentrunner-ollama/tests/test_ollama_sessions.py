"""Connections: created lazily in the running loop, reused, never carried into another loop, closed by aclose()."""

from __future__ import annotations

import asyncio

from agentrunner_ollama import OllamaProvider
from ollama_agents import SYSTEM_PROMPT, llm_config
from ollama_fake_server import FakeOllama

from agentrunner.interfaces import CompletionRequest, Message


def ask(url: str) -> CompletionRequest:
    return CompletionRequest(llm_config=llm_config(base_url=url), system_prompt=SYSTEM_PROMPT,
                             messages=[Message("user", "Hi")])


async def test_configure_opens_nothing_and_calls_share_one_connection(fake_ollama):
    provider = OllamaProvider()

    class Settings:
        ollama_base_url = fake_ollama.url

    provider.configure(Settings())
    assert provider._sessions == {}
    try:
        await provider.complete(ask(fake_ollama.url))
        async for _ in provider.stream(ask(fake_ollama.url)):
            pass
        await provider.complete(ask(fake_ollama.url))
    finally:
        await provider.aclose()

    ports = {request.client_port for request in fake_ollama.requests}
    assert len(fake_ollama.requests) == 3 and len(ports) == 1  # one kept-alive connection
    assert provider._sessions == {}


async def test_aclose_closes_and_a_later_call_opens_again(fake_ollama, provider):
    await provider.complete(ask(fake_ollama.url))
    [session] = provider._sessions.values()

    await provider.aclose()
    assert session.closed
    await provider.complete(ask(fake_ollama.url))

    first, second = fake_ollama.requests
    assert first.client_port != second.client_port


def test_a_session_from_a_closed_event_loop_is_not_reused():
    provider = OllamaProvider()
    seen = []

    async def one_call(close: bool) -> None:
        server = await FakeOllama().start()
        try:
            seen.append((await provider.complete(ask(server.url))).text)
            seen.extend(provider._sessions.values())
            if close:
                await provider.aclose()
        finally:
            await server.stop()

    asyncio.run(one_call(close=False))  # the loop ends with the provider's session still open
    asyncio.run(one_call(close=True))

    first_text, first_session, second_text, second_session = seen
    assert first_text == second_text == "Hello from Ollama"
    assert first_session is not second_session
    assert first_session.closed and second_session.closed
    assert provider._sessions == {}
