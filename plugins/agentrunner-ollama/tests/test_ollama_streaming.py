"""Streaming: NDJSON deltas as they arrive, then one CompletionResponse for the whole answer."""

from __future__ import annotations

import asyncio

import pytest
from ollama_agents import SYSTEM_PROMPT, llm_config
from ollama_fake_server import answer, dropped_stream, error, failing_stream, raw

from agentrunner.interfaces import CompletionRequest, CompletionResponse, Message, ProviderError, Usage


def ask(**llm_fields) -> CompletionRequest:
    return CompletionRequest(llm_config=llm_config(**llm_fields), system_prompt=SYSTEM_PROMPT,
                             messages=[Message("user", "Tell me a story")])


async def test_deltas_arrive_in_order_then_the_whole_answer(fake_ollama, provider):
    fake_ollama.push(answer("Once ", "upon ", "a time", prompt_eval_count=31, eval_count=5))

    items = [item async for item in provider.stream(ask())]

    assert items == ["Once ", "upon ", "a time", CompletionResponse(
        text="Once upon a time", usage=Usage(input_tokens=31, output_tokens=5), model="llama2", finish_reason="stop")]
    [seen] = fake_ollama.requests
    assert seen.body["stream"] is True
    assert seen.body["options"] == {"temperature": 0.7, "num_predict": 2000}


async def test_a_delta_is_yielded_while_the_rest_is_still_being_written(fake_ollama, provider):
    rest = asyncio.Event()
    fake_ollama.push(answer("First", " second", hold=rest))
    stream = provider.stream(ask())

    first = await asyncio.wait_for(anext(stream), timeout=5)
    assert first == "First" and not rest.is_set()
    rest.set()
    remaining = [item async for item in stream]

    assert remaining[0] == " second"
    assert remaining[-1].text == "First second"


async def test_a_consumer_that_stops_early_leaves_the_provider_usable(fake_ollama, provider):
    fake_ollama.push(answer("One ", "two ", "three"))
    stream = provider.stream(ask())
    assert await anext(stream) == "One "
    await stream.aclose()

    response = await provider.complete(ask())

    assert response.text == "Hello from Ollama"


async def test_the_done_reason_of_a_stream_is_its_finish_reason(fake_ollama, provider):
    fake_ollama.push(answer("cut", done_reason="length"))

    *_, final = [item async for item in provider.stream(ask())]

    assert final.finish_reason == "length"


async def test_an_error_line_in_the_stream_is_a_provider_error(fake_ollama, provider):
    fake_ollama.push(failing_stream("Once ", message="an error was encountered while running the model: EOF"))
    received = []

    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(ask()):
            received.append(item)

    assert received == ["Once "]
    assert caught.value.retryable
    assert str(caught.value) == ("ollama: the model failed while answering: "
                                 "an error was encountered while running the model: EOF")
    assert len(fake_ollama.requests) == 1


async def test_a_stream_that_ends_without_its_last_line_is_retryable(fake_ollama, provider):
    fake_ollama.push(answer("Once ", "upon", complete_stream=False))

    with pytest.raises(ProviderError) as caught:
        _ = [item async for item in provider.stream(ask())]

    assert caught.value.retryable
    assert "ended before it was complete" in str(caught.value)


async def test_an_error_status_fails_the_stream_before_any_delta(fake_ollama, provider):
    fake_ollama.push(error(404, "model 'llama2' not found"))
    received = []

    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(ask()):
            received.append(item)

    assert received == []
    assert (caught.value.status, caught.value.retryable) == (404, False)
    assert "ollama pull llama2" in str(caught.value)


async def test_a_stream_that_is_not_ndjson_is_not_retried(fake_ollama, provider):
    fake_ollama.push(raw(200, "<html>proxy login</html>", content_type="text/html"))

    with pytest.raises(ProviderError) as caught:
        _ = [item async for item in provider.stream(ask())]

    assert not caught.value.retryable
    assert "did not answer with Ollama's JSON" in str(caught.value)


async def test_a_stream_that_stalls_longer_than_the_timeout_fails_retryably(fake_ollama, provider):
    never = asyncio.Event()
    fake_ollama.push(answer("First", " never sent", hold=never))
    received = []

    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(ask(timeout=1.0)):
            received.append(item)

    assert received == ["First"]
    assert caught.value.retryable
    assert str(caught.value) == f"ollama: the answer from {fake_ollama.url} stalled for 1 s (timeout)"
    never.set()


async def test_a_connection_cut_mid_stream_is_retryable(fake_ollama, provider):
    fake_ollama.push(dropped_stream("Once ", "upon "))
    received = []

    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(ask()):
            received.append(item)

    assert received == ["Once ", "upon "]
    assert caught.value.retryable
    assert str(caught.value) == f"ollama: the connection to {fake_ollama.url} broke off in the middle of the answer"
    assert len(fake_ollama.requests) == 1
