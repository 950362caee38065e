"""The anthropic provider against a local fake of the Messages API, through the real SDK:
what reaches the API, tool use both ways, streaming, and how clients are kept."""

from __future__ import annotations

import asyncio
import gc
import re
import subprocess
import sys

import pytest
from agentrunner_anthropic import AnthropicProvider
from anthropic._constants import ANTHROPIC_API_VERSION
from anthropic_fake_server import FakeAnthropic, ToolUse, answer, text_chunks
from anthropic_support import CANARY_KEY, MODEL, REFERENCE_AGENT, ask, load_agent, settings

from agentrunner.interfaces import CompletionRequest, CompletionResponse, Message, ToolCall, ToolDefinition, Usage

WEATHER = ToolDefinition(
    "get_weather", "The current weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
WEATHER_TOOL = {
    "name": "get_weather", "description": "The current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def collect(provider: AnthropicProvider, request: CompletionRequest) -> tuple[list[str], CompletionResponse]:
    """The deltas of a streamed answer and its final response (which must come last, once)."""
    items = [item async for item in provider.stream(request)]
    *deltas, final = items
    assert all(isinstance(delta, str) for delta in deltas)
    assert isinstance(final, CompletionResponse)
    return deltas, final


# --- the request ---------------------------------------------------------------------------------


async def test_the_reference_agent_reaches_the_api_with_every_field_under_its_anthropic_name(provider, fake):
    agent, warnings = load_agent(REFERENCE_AGENT)
    assert warnings == []

    response = await provider.complete(
        CompletionRequest(agent.llm_config, agent.system_prompt, [Message("user", "Hello")]))

    [received] = fake.requests
    assert (received.method, received.path) == ("POST", "/v1/messages")
    assert received.body == {
        "model": "claude-3-opus-20240229",
        "max_tokens": 2000,
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": 40,
        "system": "You are a helpful AI assistant.\n",  # top level, not a message
        "messages": [{"role": "user", "content": "Hello"}],
    }
    headers = received.headers
    assert headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert "x-api-key" not in headers
    assert headers["anthropic-version"] == ANTHROPIC_API_VERSION
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", headers["anthropic-version"])
    assert headers["content-type"] == "application/json"
    assert headers["x-stainless-retry-count"] == "0"
    assert headers["x-stainless-read-timeout"] == "60.0"  # timeout: 60 is the client's timeout
    assert response == CompletionResponse(text="Hello from the fake Claude.", usage=Usage(21, 9), model=MODEL,
                                          finish_reason="stop")


async def test_defaults_are_sent_and_optional_fields_only_once_set(provider, fake):
    await provider.complete(ask(system_prompt=""))
    await provider.complete(ask(top_k=5, temperature=0.2, top_p=0.9, max_tokens=64))

    first, second = (received.body for received in fake.requests)
    assert first == {"model": MODEL, "max_tokens": 2000, "temperature": 0.7, "top_p": 1.0,
                     "messages": [{"role": "user", "content": "Hello"}]}  # no system, top_k or tools
    assert second == {"model": MODEL, "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "top_k": 5,
                      "system": "You are terse.", "messages": [{"role": "user", "content": "Hello"}]}


async def test_fields_anthropic_does_not_have_never_reach_the_request(provider, fake):
    await provider.complete(ask(frequency_penalty=0.5, presence_penalty=0.3, seed=42,
                                response_format={"type": "json_object"}, num_ctx=4096, num_predict=512,
                                repeat_penalty=1.1, region="us-east-1", endpoint_url="http://127.0.0.1:9"))

    assert set(fake.requests[0].body) == {"model", "max_tokens", "temperature", "top_p", "system", "messages"}


async def test_the_agents_base_url_wins_over_ANTHROPIC_BASE_URL(fake):
    provider = AnthropicProvider()
    provider.configure(settings("http://127.0.0.1:9"))  # nothing listens there
    try:
        response = await provider.complete(ask(base_url=fake.url))
    finally:
        await provider.aclose()
    assert response.text == "Hello from the fake Claude."
    assert len(fake.requests) == 1


async def test_the_model_that_answered_and_every_input_token_are_reported(provider, fake):
    fake.script(answer("Hi.", model="claude-3-opus-20240229-served", input_tokens=10, output_tokens=2,
                       cache_read_tokens=90))
    response = await provider.complete(ask())
    assert (response.model, response.usage) == ("claude-3-opus-20240229-served", Usage(100, 2))


async def test_turns_of_one_role_are_merged_so_user_and_assistant_alternate(provider, fake):
    history = [
        Message("user", "Summary of the earlier conversation:\nwe spoke of Paris"),
        Message("user", "And Rome?"),
        Message("assistant", "Rome is lovely."),
        Message("user", "Thanks"),
    ]
    await provider.complete(ask(messages=history))

    assert fake.requests[0].body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "Summary of the earlier conversation:\nwe spoke of Paris"},
            {"type": "text", "text": "And Rome?"},
        ]},
        {"role": "assistant", "content": "Rome is lovely."},
        {"role": "user", "content": "Thanks"},
    ]


# --- tool use ------------------------------------------------------------------------------------


async def test_a_tool_call_goes_out_comes_back_and_its_result_follows_in_the_next_request(provider, fake):
    fake.script(answer("Let me check.", ToolUse("toolu_01", "get_weather", {"city": "Paris"})),
                answer("It is 18 °C and sunny in Paris."))
    question = Message("user", "What is the weather in Paris?")

    first = await provider.complete(ask(messages=[question], tools=(WEATHER,)))

    assert fake.requests[0].body["tools"] == [WEATHER_TOOL]
    assert first.text == "Let me check."
    assert first.tool_calls == (ToolCall("toolu_01", "get_weather", {"city": "Paris"}),)
    assert first.finish_reason == "tool_calls"

    history = [question, Message("assistant", first.text, tool_calls=first.tool_calls),
               Message("tool", "18 °C, sunny", tool_call_id="toolu_01")]
    second = await provider.complete(ask(messages=history, tools=(WEATHER,)))

    assert fake.requests[1].body["messages"] == [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 °C, sunny"}]},
    ]
    assert fake.requests[1].body["tools"] == [WEATHER_TOOL]
    assert (second.text, second.tool_calls, second.finish_reason) == ("It is 18 °C and sunny in Paris.", (), "stop")


async def test_results_of_parallel_calls_go_back_in_one_user_turn_with_failures_flagged(provider, fake):
    history = [
        Message("user", "Weather in Paris and Rome?"),
        Message("assistant", "", tool_calls=(ToolCall("toolu_01", "get_weather", {"city": "Paris"}),
                                             ToolCall("toolu_02", "get_weather", {"city": "Rome"}))),
        Message("tool", "18 °C, sunny", tool_call_id="toolu_01"),
        Message("tool", "weather service unavailable", tool_call_id="toolu_02", is_error=True),
    ]
    await provider.complete(ask(messages=history, tools=(WEATHER,)))

    assert fake.requests[0].body["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 °C, sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_02", "content": "weather service unavailable",
             "is_error": True},
        ]},
    ]


async def test_tool_input_that_is_not_a_json_object_is_kept_raw_for_the_tool_layer(provider, fake):
    broken = '{"city": "Par'
    fake.script(answer("", ToolUse("toolu_01", "get_weather", broken)),
                answer("", ToolUse("toolu_02", "get_weather", broken)))

    response = await provider.complete(ask(tools=(WEATHER,)))
    _, streamed = await collect(provider, ask(tools=(WEATHER,)))

    assert response.tool_calls == (ToolCall("toolu_01", "get_weather", {"_raw": broken}),)
    assert streamed.tool_calls == (ToolCall("toolu_02", "get_weather", {"_raw": broken}),)


# --- streaming -----------------------------------------------------------------------------------


async def test_streaming_yields_the_deltas_in_order_then_the_whole_answer(provider, fake):
    text = "Claude streams this answer to you word by word."
    fake.script(answer(text, input_tokens=30, output_tokens=12))

    deltas, final = await collect(provider, ask(top_k=7))

    assert deltas == text_chunks(text) and len(deltas) > 1
    assert final == CompletionResponse(text=text, usage=Usage(30, 12), model=MODEL, finish_reason="stop")
    body = fake.requests[0].body
    assert body.pop("stream") is True
    assert body == {"model": MODEL, "max_tokens": 2000, "temperature": 0.7, "top_p": 1.0, "top_k": 7,
                    "system": "You are terse.", "messages": [{"role": "user", "content": "Hello"}]}


async def test_deltas_reach_the_caller_while_the_answer_is_still_being_written(provider, fake):
    rest = asyncio.Event()
    fake.script(answer("First words, then the rest.", hold=rest))

    stream = provider.stream(ask())
    first = await anext(stream)
    assert first == "First"  # the server holds back everything after it
    rest.set()
    remaining = [item async for item in stream]

    assert remaining[:-1] == text_chunks("First words, then the rest.")[1:]
    assert remaining[-1].text == "First words, then the rest."


async def test_a_streamed_tool_call_arrives_whole_in_the_final_response(provider, fake):
    arguments = {"city": "Paris", "unit": "celsius", "days": [1, 2]}
    fake.script(answer("Checking.", ToolUse("toolu_07", "get_weather", arguments), input_tokens=40,
                       output_tokens=25, model="claude-3-opus-20240229-served"))

    deltas, final = await collect(provider, ask(tools=(WEATHER,)))

    assert deltas == ["Checking."]  # tool input is not text
    assert final == CompletionResponse(
        text="Checking.", tool_calls=(ToolCall("toolu_07", "get_weather", arguments),), usage=Usage(40, 25),
        model="claude-3-opus-20240229-served", finish_reason="tool_calls")
    assert fake.requests[0].body["tools"] == [WEATHER_TOOL]


# --- clients -------------------------------------------------------------------------------------


async def test_one_client_serves_every_call_of_a_configuration(provider, fake):
    await provider.complete(ask())
    await collect(provider, ask())
    await provider.complete(ask())
    assert len({received.peer for received in fake.requests}) == 1  # one pooled connection

    await provider.complete(ask(timeout=30))
    assert fake.requests[-1].peer != fake.requests[0].peer  # another timeout: another client


async def test_aclose_closes_the_connections_and_a_later_call_opens_new_ones(provider, fake):
    await provider.complete(ask())
    await provider.aclose()
    response = await provider.complete(ask())

    assert response.text == "Hello from the fake Claude."
    assert fake.requests[1].peer != fake.requests[0].peer


@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")
def test_a_client_of_an_ended_event_loop_is_never_reused():
    provider = AnthropicProvider()
    provider.configure(settings())
    port = 0

    async def call(close: bool) -> str:
        nonlocal port
        async with FakeAnthropic(port=port) as fake:
            port = int(fake.url.rsplit(":", 1)[1])
            response = await provider.complete(ask(base_url=fake.url))
            if close:
                await provider.aclose()
        return response.text

    assert asyncio.run(call(close=False)) == "Hello from the fake Claude."  # its loop ends, its client stays
    assert asyncio.run(call(close=True)) == "Hello from the fake Claude."  # same URL, key and timeout
    gc.collect()  # the first loop's abandoned connection is finalised here, not in a later test


# --- the plugin ----------------------------------------------------------------------------------


def test_importing_the_plugin_leaves_the_sdk_unloaded():
    code = "import sys, agentrunner_anthropic; print(sorted({'anthropic', 'httpx2'} & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_the_entry_point_names_the_plugin_module():
    from importlib.metadata import entry_points

    [entry_point] = entry_points(group="agentrunner", name="anthropic")
    assert entry_point.value == "agentrunner_anthropic"
