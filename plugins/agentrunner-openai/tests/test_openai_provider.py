"""The provider against a local Chat Completions server, through the real ``openai`` SDK:
what reaches the wire, how answers come back, streaming, tools and client reuse."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import attrs
import pytest
from agentrunner_openai import OpenAIProvider, register_providers
from agentrunner_openai.provider import PLACEHOLDER_KEY, SUPPORTED_OPTIONS
from openai_fake_server import Answer, Call, FakeOpenAI

from agentrunner.interfaces import (
    CompletionRequest,
    CompletionResponse,
    Message,
    ProviderError,
    ToolCall,
    ToolDefinition,
)
from agentrunner.schema import LLMConfig
from agentrunner.settings import load_settings

KEY = "sk-test-0123456789abcdef"

#: The reference's example agent for OpenAI (configuration-reference.md, "LLM Provider Configuration").
REFERENCE_LLM = dict(provider="openai", model="gpt-4", temperature=0.7, max_tokens=2000, top_p=1.0,
                     frequency_penalty=0.0, presence_penalty=0.0, timeout=60, response_format={"type": "json_object"},
                     seed=42)

SEARCH = ToolDefinition("search", "Search the knowledge base.",
                        {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]})


def provider_for(base_url: str | None, **environ: str) -> OpenAIProvider:
    env = {"OPENAI_API_KEY": KEY, **environ}
    if base_url is not None:
        env.setdefault("OPENAI_BASE_URL", base_url)
    provider = OpenAIProvider()
    provider.configure(load_settings(environ={k: v for k, v in env.items() if v}, env_file=None))
    return provider


def llm(**fields) -> LLMConfig:
    fields = {"provider": "openai", "model": "gpt-4", **fields}
    return LLMConfig(**fields, explicit_fields=frozenset(fields))


def ask(config: LLMConfig, *messages: Message, tools=(), system: str = "You answer in JSON.") -> CompletionRequest:
    return CompletionRequest(config, system, list(messages) or [Message("user", "Hello?")], tools)


@pytest.fixture
async def provider(fake_openai):
    provider = provider_for(fake_openai.base_url)
    yield provider
    await provider.aclose()


# --- Registration and import ------------------------------------------------------------------


def test_registers_one_provider_named_openai():
    registered = []
    register_providers(registered.append)
    assert [p.name for p in registered] == ["openai"]


def test_importing_the_plugin_does_not_import_the_sdk():
    code = "import sys, agentrunner_openai; print('openai' in sys.modules, 'httpx2' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_supported_options_are_the_reference_fields_and_base_url():
    every_field = {f.name for f in attrs.fields(LLMConfig)} - {"explicit_fields"}
    assert every_field - SUPPORTED_OPTIONS == {"top_k", "num_ctx", "num_predict", "repeat_penalty", "region",
                                               "endpoint_url"}


# --- The request on the wire -----------------------------------------------------------------


async def test_the_reference_agent_reaches_the_wire_field_by_field(fake_openai, provider):
    response = await provider.complete(ask(llm(**REFERENCE_LLM), Message("user", "Give me a JSON greeting.")))

    assert response == CompletionResponse(text="Hello from the fake.", usage=response.usage, model="gpt-4-0613")
    [seen] = fake_openai.requests
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.body == {
        "model": "gpt-4",
        "messages": [
            {"role": "system", "content": "You answer in JSON."},
            {"role": "user", "content": "Give me a JSON greeting."},
        ],
        "temperature": 0.7,
        "max_tokens": 2000,
        "top_p": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "response_format": {"type": "json_object"},
        "seed": 42,
    }
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-stainless-retry-count"] == "0"
    assert float(seen.headers["x-stainless-read-timeout"]) == 60  # llm_config.timeout is the request's timeout
    assert "openai-organization" not in seen.headers


async def test_schema_defaults_are_sent_and_optional_fields_only_when_set(fake_openai, provider):
    await provider.complete(ask(llm()))
    body = fake_openai.requests[-1].body
    assert {k: body[k] for k in ("temperature", "max_tokens", "top_p", "frequency_penalty", "presence_penalty")} == {
        "temperature": 0.7, "max_tokens": 2000, "top_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
    for absent in ("seed", "response_format", "tools", "stream", "stream_options", "top_k"):
        assert absent not in body

    await provider.complete(ask(llm(seed=0, temperature=0.0, max_tokens=1, top_p=0.5, frequency_penalty=-2.0,
                                    presence_penalty=2.0)))
    body = fake_openai.requests[-1].body
    assert (body["seed"], body["temperature"], body["max_tokens"], body["top_p"]) == (0, 0.0, 1, 0.5)
    assert (body["frequency_penalty"], body["presence_penalty"]) == (-2.0, 2.0)


async def test_a_json_schema_response_format_passes_through(fake_openai, provider):
    schema = {"type": "json_schema", "json_schema": {"name": "greeting", "strict": True, "schema": {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
        "additionalProperties": False}}}
    await provider.complete(ask(llm(response_format=schema)))
    assert fake_openai.requests[-1].body["response_format"] == schema


async def test_fields_the_provider_does_not_support_never_reach_the_wire(fake_openai, provider):
    await provider.complete(ask(llm(top_k=40, num_ctx=4096, num_predict=512, repeat_penalty=1.1, region="us-east-1")))
    body = fake_openai.requests[-1].body
    assert not {"top_k", "num_ctx", "num_predict", "repeat_penalty", "region", "options"} & set(body)


async def test_the_organization_header_comes_from_openai_org_id(fake_openai):
    provider = provider_for(fake_openai.base_url, OPENAI_ORG_ID="org-test")
    await provider.complete(ask(llm()))
    await provider.aclose()
    assert fake_openai.requests[-1].headers["openai-organization"] == "org-test"


async def test_an_empty_system_prompt_sends_no_system_message(fake_openai, provider):
    await provider.complete(ask(llm(), Message("user", "hi"), system=""))
    assert fake_openai.requests[-1].body["messages"] == [{"role": "user", "content": "hi"}]


async def test_the_conversation_keeps_its_order_and_roles(fake_openai, provider):
    history = [Message("user", "one"), Message("assistant", "two"), Message("user", "three")]
    await provider.complete(ask(llm(), *history))
    assert fake_openai.requests[-1].body["messages"][1:] == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"}]


# --- Endpoints and keys -----------------------------------------------------------------------


async def test_llm_config_base_url_wins_over_openai_base_url(fake_openai):
    provider = provider_for("http://127.0.0.1:9/v1")
    await provider.complete(ask(llm(base_url=fake_openai.base_url)))
    await provider.aclose()
    assert len(fake_openai.requests) == 1


async def test_a_compatible_server_without_a_key_gets_a_placeholder(fake_openai):
    provider = provider_for(None, OPENAI_API_KEY="")
    response = await provider.complete(ask(llm(base_url=fake_openai.base_url, model="meta-llama/Llama-3-8B")))
    await provider.aclose()
    assert response.text == "Hello from the fake."
    assert fake_openai.requests[-1].headers["authorization"] == f"Bearer {PLACEHOLDER_KEY}"
    assert fake_openai.requests[-1].body["model"] == "meta-llama/Llama-3-8B"


@pytest.mark.parametrize("base_url", [None, "https://api.openai.com/v1", "https://api.openai.com/v1/"])
async def test_openai_itself_without_a_key_is_a_clear_error(base_url):
    provider = provider_for(None, OPENAI_API_KEY="")
    with pytest.raises(ProviderError) as caught:
        await provider.complete(ask(llm(base_url=base_url)))
    assert "OPENAI_API_KEY is not set" in str(caught.value)
    assert not caught.value.retryable


async def test_an_unconfigured_provider_asks_for_the_key():
    with pytest.raises(ProviderError, match="OPENAI_API_KEY is not set"):
        await OpenAIProvider().complete(ask(llm()))


# --- Tools ---------------------------------------------------------------------------------


async def test_tool_definitions_are_sent_as_functions(fake_openai, provider):
    await provider.complete(ask(llm(), tools=[SEARCH, ToolDefinition("now", "The time.")]))
    assert fake_openai.requests[-1].body["tools"] == [
        {"type": "function", "function": {"name": "search", "description": "Search the knowledge base.",
                                          "parameters": {"type": "object",
                                                         "properties": {"query": {"type": "string"}},
                                                         "required": ["query"]}}},
        {"type": "function", "function": {"name": "now", "description": "The time.",
                                          "parameters": {"type": "object", "properties": {}}}},
    ]


async def test_a_tool_call_comes_back_parsed_and_its_result_goes_back(fake_openai, provider):
    fake_openai.reply(Answer(text=None, calls=(Call("call_1", "search", '{"query": "refunds"}'),)),
                      Answer(text="Refunds take 5 days."))
    question = Message("user", "How long do refunds take?")

    first = await provider.complete(ask(llm(), question, tools=[SEARCH]))
    assert first.text == ""
    assert first.tool_calls == (ToolCall("call_1", "search", {"query": "refunds"}),)
    assert first.finish_reason == "tool_calls"

    history = [question, Message("assistant", "", tool_calls=first.tool_calls),
               Message("tool", "Refunds take 5 business days.", tool_call_id="call_1")]
    second = await provider.complete(ask(llm(), *history, tools=[SEARCH]))
    assert second.text == "Refunds take 5 days."
    assert fake_openai.requests[-1].body["messages"][1:] == [
        {"role": "user", "content": "How long do refunds take?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"query": "refunds"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Refunds take 5 business days."},
    ]


async def test_a_failed_tool_is_flagged_and_text_next_to_tool_calls_is_kept(fake_openai, provider):
    calls = (ToolCall("call_a", "search", {"query": "x"}), ToolCall("call_b", "search", {"_raw": "{not json"}))
    history = [Message("user", "go"), Message("assistant", "Let me look.", tool_calls=calls),
               Message("tool", "index unavailable", tool_call_id="call_a", is_error=True),
               Message("tool", "arguments are not JSON", tool_call_id="call_b", is_error=True)]
    await provider.complete(ask(llm(), *history, tools=[SEARCH]))
    sent = fake_openai.requests[-1].body["messages"]
    assert sent[2] == {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "search", "arguments": '{"query": "x"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "search", "arguments": "{not json"}}]}
    assert sent[3:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "Error: index unavailable"},
        {"role": "tool", "tool_call_id": "call_b", "content": "Error: arguments are not JSON"},
    ]


@pytest.mark.parametrize(("arguments", "parsed"), [
    ('{"query": "a"}', {"query": "a"}),
    ("", {}),
    ("{broken", {"_raw": "{broken"}),
    ('["not", "an", "object"]', {"_raw": '["not", "an", "object"]'}),
])
async def test_tool_arguments_that_are_not_a_json_object_are_kept_raw(fake_openai, provider, arguments, parsed):
    fake_openai.reply(Answer(text=None, calls=(Call("call_1", "search", arguments),)))
    response = await provider.complete(ask(llm(), tools=[SEARCH]))
    assert response.tool_calls == (ToolCall("call_1", "search", parsed),)


async def test_several_tool_calls_in_one_answer_keep_their_order(fake_openai, provider):
    fake_openai.reply(Answer(text="Checking both.", calls=(Call("c1", "search", '{"query": "a"}'),
                                                          Call("c2", "search", '{"query": "b"}'))))
    response = await provider.complete(ask(llm(), tools=[SEARCH]))
    assert response.text == "Checking both."
    assert [(c.id, c.arguments["query"]) for c in response.tool_calls] == [("c1", "a"), ("c2", "b")]


# --- Streaming -------------------------------------------------------------------------------


async def collect(provider: OpenAIProvider, request: CompletionRequest) -> tuple[list[str], CompletionResponse]:
    items = [item async for item in provider.stream(request)]
    *deltas, final = items
    assert all(isinstance(d, str) for d in deltas)
    assert isinstance(final, CompletionResponse)
    return deltas, final


async def test_streaming_yields_deltas_in_order_then_the_whole_answer(fake_openai, provider):
    fake_openai.reply(Answer(text="The quick brown fox.", deltas=("The", " quick", " brown", " fox."),
                             prompt_tokens=21, completion_tokens=4, model="gpt-4-0613"))
    deltas, final = await collect(provider, ask(llm(**REFERENCE_LLM)))
    assert deltas == ["The", " quick", " brown", " fox."]
    assert final == CompletionResponse(text="The quick brown fox.", usage=final.usage, model="gpt-4-0613")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (21, 4)
    body = fake_openai.requests[-1].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["seed"] == 42 and body["response_format"] == {"type": "json_object"}


async def test_a_streamed_tool_call_is_assembled_from_its_pieces(fake_openai, provider):
    fake_openai.reply(Answer(text="Looking.", calls=(Call("call_1", "search", '{"query": "late orders"}'),
                                                     Call("call_2", "search", '{"query": "refunds"}')),
                             completion_tokens=30))
    deltas, final = await collect(provider, ask(llm(), tools=[SEARCH]))
    assert "".join(deltas) == "Looking."
    assert final.text == "Looking."
    assert final.tool_calls == (ToolCall("call_1", "search", {"query": "late orders"}),
                                ToolCall("call_2", "search", {"query": "refunds"}))
    assert final.finish_reason == "tool_calls"
    assert final.usage.output_tokens == 30


async def test_a_stream_that_is_abandoned_early_releases_its_connection(fake_openai, provider):
    fake_openai.reply(Answer(text="one two three four"))
    stream = provider.stream(ask(llm()))
    assert await anext(stream) == "one "
    await stream.aclose()
    assert (await provider.complete(ask(llm()))).text == "Hello from the fake."


# --- Clients ---------------------------------------------------------------------------------


async def test_one_client_serves_every_request_of_an_endpoint(fake_openai, provider):
    await asyncio.gather(*(provider.complete(ask(llm())) for _ in range(3)))
    await provider.complete(ask(llm(temperature=0.1)))
    assert len(provider._clients) == 1
    await provider.complete(ask(llm(timeout=5)))
    assert len(provider._clients) == 2
    await provider.aclose()
    assert provider._clients == {}
    assert len(fake_openai.requests) == 5


def test_a_client_of_a_closed_event_loop_is_not_reused():
    ports: list[int] = []

    async def scenario():
        server = FakeOpenAI()
        await server.start(port=ports[0] if ports else 0)  # the same endpoint: the same cache key
        ports.append(server.port)
        try:
            first = await provider.complete(ask(llm(base_url=server.base_url)))
            [(_, client)] = provider._clients.values()
            await client.close()  # as the loop's end would; the entry stays, as it does when a loop is dropped
        finally:
            await server.stop()
        return first.text, client

    provider = provider_for(None, OPENAI_API_KEY=KEY)
    text_one, client_one = asyncio.run(scenario())
    text_two, client_two = asyncio.run(scenario())
    assert text_one == text_two == "Hello from the fake."
    assert client_one is not client_two
    asyncio.run(provider.aclose())  # the clients belonged to loops that are gone: nothing to close, no error


# --- Validation ------------------------------------------------------------------------------


def test_validate_accepts_the_reference_agent():
    assert OpenAIProvider().validate(llm(**REFERENCE_LLM)) == []


def test_validate_wants_a_real_model_rather_than_the_echo_default():
    config = LLMConfig(provider="openai", explicit_fields=frozenset({"provider"}))
    assert [field for field, _ in OpenAIProvider().validate(config)] == ["model"]


def test_validate_wants_a_name_for_a_json_schema():
    config = llm(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object"}}})
    [(field, message)] = OpenAIProvider().validate(config)
    assert field == "response_format.json_schema.name"
    assert "required by OpenAI" in message
