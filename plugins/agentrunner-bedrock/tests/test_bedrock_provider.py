"""The bedrock provider against the fake Bedrock Runtime, through the real aiobotocore client."""

from __future__ import annotations

import asyncio
import gc
import re
import subprocess
import sys

import pytest
from agentrunner_bedrock import BedrockProvider
from bedrock_fake_server import Answer, Paused, ThreadedFakeBedrock, ToolUse
from bedrock_helpers import KEY_ID, SONNET, llm, make_provider, make_settings

from agentrunner.interfaces import (
    CompletionRequest,
    CompletionResponse,
    Message,
    ProviderError,
    ToolCall,
    ToolDefinition,
)
from agentrunner.schema import LLMConfig

SYSTEM = "You are a helpful assistant."
QUESTION = [Message("user", "What is the weather in Paris?")]
WEATHER = ToolDefinition(
    name="get_weather",
    description="Current weather of a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def ask(config: LLMConfig, messages=QUESTION, tools=(), system: str = SYSTEM) -> CompletionRequest:
    return CompletionRequest(llm_config=config, system_prompt=system, messages=list(messages), tools=list(tools))


async def collect(provider: BedrockProvider, request: CompletionRequest) -> tuple[list[str], CompletionResponse]:
    items = [item async for item in provider.stream(request)]
    deltas, final = items[:-1], items[-1]
    assert all(isinstance(delta, str) for delta in deltas)
    assert isinstance(final, CompletionResponse)
    return deltas, final


# --- the request ------------------------------------------------------------------------------------


async def test_the_reference_example_reaches_bedrock_as_converse_fields(fake, provider):
    response = await provider.complete(ask(llm(fake)))

    [seen] = fake.requests
    assert seen.operation == "converse"
    assert seen.path == "/model/anthropic.claude-3-sonnet-20240229-v1%3A0/converse"
    assert seen.model_id == SONNET
    assert seen.body == {
        "messages": [{"role": "user", "content": [{"text": "What is the weather in Paris?"}]}],
        "system": [{"text": SYSTEM}],
        "inferenceConfig": {"maxTokens": 2000, "temperature": 0.7, "topP": 1.0},
    }
    assert seen.headers["content-type"] == "application/json"
    assert re.fullmatch(
        rf"AWS4-HMAC-SHA256 Credential={KEY_ID}/\d{{8}}/us-east-1/bedrock/aws4_request, "
        r"SignedHeaders=[a-z0-9;-]*host;x-amz-date, Signature=[0-9a-f]{64}",
        seen.headers["authorization"],
    )
    assert seen.headers["amz-sdk-request"] == "attempt=1"
    assert "agentrunner-bedrock" in seen.headers["user-agent"]
    assert response == CompletionResponse(text="Hello from Bedrock.", usage=response.usage, model=SONNET,
                                          finish_reason="end_turn")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 7)


async def test_schema_defaults_are_sent_and_optional_fields_left_out(fake, provider):
    config = LLMConfig(provider="bedrock", model=SONNET, endpoint_url=fake.url)
    await provider.complete(ask(config, system=""))
    body = fake.requests[0].body
    assert body["inferenceConfig"] == {"maxTokens": 2000, "temperature": 0.7, "topP": 1.0}
    assert set(body) == {"messages", "inferenceConfig"}  # no system, toolConfig, additionalModelRequestFields


async def test_every_field_the_agent_sets_reaches_the_request(fake, provider):
    config = llm(fake, temperature=0.2, max_tokens=321, top_p=0.9, top_k=40)
    await provider.complete(ask(config))
    body = fake.requests[0].body
    assert body["inferenceConfig"] == {"maxTokens": 321, "temperature": 0.2, "topP": 0.9}
    assert body["additionalModelRequestFields"] == {"top_k": 40}


async def test_the_region_signs_the_request_and_the_settings_fill_what_the_agent_leaves_out(fake):
    provider = make_provider(AWS_REGION="eu-west-3", AWS_BEDROCK_ENDPOINT=fake.url)
    try:
        await provider.complete(ask(LLMConfig(provider="bedrock", model=SONNET)))
        await provider.complete(ask(LLMConfig(provider="bedrock", model=SONNET, region="ap-southeast-2")))
    finally:
        await provider.aclose()
    scopes = [re.search(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/bedrock/", r.headers["authorization"]).group(1)
              for r in fake.requests]
    assert scopes == ["eu-west-3", "ap-southeast-2"]


async def test_base_url_names_the_endpoint_too_and_a_password_in_it_is_never_sent(fake, provider):
    with_password = fake.url.replace("http://", "http://user:hunter2pass@")
    await provider.complete(ask(llm(None, base_url=fake.url)))
    await provider.complete(ask(llm(None, endpoint_url=with_password)))
    assert len(fake.requests) == 2
    assert all(r.headers["authorization"].startswith("AWS4-HMAC-SHA256 ") for r in fake.requests)


# --- tools ------------------------------------------------------------------------------------------------


async def test_tool_definitions_go_out_and_tool_calls_come_back(fake, provider):
    fake.reply(Answer(text=("Let me check.",), stop_reason="tool_use",
                      tool_uses=[ToolUse("tooluse_1", "get_weather", {"city": "Paris"})]))
    response = await provider.complete(ask(llm(fake), tools=[WEATHER]))

    assert fake.requests[0].body["toolConfig"] == {"tools": [{"toolSpec": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    }}]}
    assert response.text == "Let me check."
    assert response.tool_calls == (ToolCall(id="tooluse_1", name="get_weather", arguments={"city": "Paris"}),)
    assert response.finish_reason == "tool_use"


async def test_tool_results_go_back_as_one_user_turn_with_errors_flagged(fake, provider):
    history = [
        *QUESTION,
        Message("assistant", "Let me check.", tool_calls=(
            ToolCall("tooluse_1", "get_weather", {"city": "Paris"}),
            ToolCall("tooluse_2", "get_weather", {"city": "Atlantis"}),
        )),
        Message("tool", '{"temp_c": 18}', tool_call_id="tooluse_1"),
        Message("tool", "no such city: Atlantis", tool_call_id="tooluse_2", is_error=True),
    ]
    await provider.complete(ask(llm(fake), messages=history, tools=[WEATHER]))

    assert fake.requests[0].body["messages"] == [
        {"role": "user", "content": [{"text": "What is the weather in Paris?"}]},
        {"role": "assistant", "content": [
            {"text": "Let me check."},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "tooluse_2", "name": "get_weather", "input": {"city": "Atlantis"}}},
        ]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": '{"temp_c": 18}'}], "status": "success"}},
            {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "no such city: Atlantis"}],
                            "status": "error"}},
        ]},
    ]


async def test_an_assistant_turn_with_only_tool_calls_has_no_empty_text_block(fake, provider):
    history = [*QUESTION, Message("assistant", "", tool_calls=(ToolCall("t1", "get_weather", {"city": "Oslo"}),)),
               Message("tool", "-3", tool_call_id="t1"), Message("user", "And tomorrow?")]
    await provider.complete(ask(llm(fake), messages=history, tools=[WEATHER]))
    assistant, results = fake.requests[0].body["messages"][1:]
    assert assistant["content"] == [{"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Oslo"}}}]
    assert results == {"role": "user", "content": [
        {"toolResult": {"toolUseId": "t1", "content": [{"text": "-3"}], "status": "success"}},
        {"text": "And tomorrow?"},
    ]}


async def test_tool_arguments_that_are_not_a_json_object_are_kept_raw(fake, provider):
    fake.reply(Answer(text=(), stop_reason="tool_use", tool_uses=[ToolUse("t1", "get_weather", '{"city": "Par')]),
               Answer(text=(), stop_reason="tool_use", tool_uses=[ToolUse("t2", "get_weather", "Paris")]))
    _, streamed = await collect(provider, ask(llm(fake), tools=[WEATHER]))
    completed = await provider.complete(ask(llm(fake), tools=[WEATHER]))
    assert streamed.tool_calls == (ToolCall("t1", "get_weather", {"_raw": '{"city": "Par'}),)
    assert completed.tool_calls == (ToolCall("t2", "get_weather", {"_raw": "Paris"}),)


async def test_a_message_role_bedrock_cannot_take_is_a_clear_error(fake, provider):
    with pytest.raises(ProviderError, match="role 'narrator' cannot be sent") as caught:
        await provider.complete(ask(llm(fake), messages=[Message("narrator", "Once upon a time")]))
    assert not caught.value.retryable
    assert fake.requests == []


# --- streaming ----------------------------------------------------------------------------------------------


async def test_streaming_yields_the_deltas_in_order_then_the_whole_answer(fake, provider):
    fake.reply(Answer(text=("The weather ", "in Paris ", "is mild."), input_tokens=31, output_tokens=9))
    deltas, final = await collect(provider, ask(llm(fake, top_k=5)))

    assert deltas == ["The weather ", "in Paris ", "is mild."]
    assert final.text == "The weather in Paris is mild."
    assert (final.usage.input_tokens, final.usage.output_tokens) == (31, 9)
    assert (final.model, final.finish_reason, final.tool_calls) == (SONNET, "end_turn", ())
    [seen] = fake.requests
    assert seen.operation == "converse-stream"
    assert seen.path == "/model/anthropic.claude-3-sonnet-20240229-v1%3A0/converse-stream"
    assert seen.body["inferenceConfig"] == {"maxTokens": 2000, "temperature": 0.7, "topP": 1.0}
    assert seen.body["additionalModelRequestFields"] == {"top_k": 5}
    assert seen.body["system"] == [{"text": SYSTEM}]


async def test_deltas_are_yielded_while_the_answer_is_still_arriving(fake, provider):
    paused = Paused(Answer(text=("first ", "second")), after=2)  # messageStart and the first delta, then a pause
    fake.reply(paused)
    stream = provider.stream(ask(llm(fake)))
    assert await asyncio.wait_for(anext(stream), 5) == "first "
    paused.resume.set()
    rest = [item async for item in stream]
    assert rest[0] == "second"
    assert rest[-1].text == "first second"


async def test_a_streamed_tool_call(fake, provider):
    fake.reply(Answer(text=("Checking.",), stop_reason="tool_use",
                      tool_uses=[ToolUse("tooluse_9", "get_weather", {"city": "Paris", "units": "metric"})]))
    deltas, final = await collect(provider, ask(llm(fake), tools=[WEATHER]))
    assert deltas == ["Checking."]
    assert final.tool_calls == (ToolCall("tooluse_9", "get_weather", {"city": "Paris", "units": "metric"}),)
    assert final.finish_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)
    assert fake.requests[0].body["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"


async def test_an_abandoned_stream_leaves_the_provider_usable(fake, provider):
    paused = Paused(Answer(text=("a", "b")), after=2)
    fake.reply(paused)
    stream = provider.stream(ask(llm(fake)))
    assert await anext(stream) == "a"
    await stream.aclose()
    paused.resume.set()
    assert (await provider.complete(ask(llm(fake)))).text == "Hello from Bedrock."


# --- clients ------------------------------------------------------------------------------------------------


async def test_a_client_is_reused_per_configuration_and_closed_by_aclose(fake, provider):
    await provider.complete(ask(llm(fake)))
    await provider.complete(ask(llm(fake, temperature=0.1)))  # sampling options do not need another client
    await provider.complete(ask(llm(fake, timeout=30)))  # the timeout configures the client
    await provider.aclose()
    await provider.complete(ask(llm(fake)))
    peers = [r.peer for r in fake.requests]
    assert peers[0] == peers[1]  # the same pooled connection
    assert peers[2] != peers[1]
    assert peers[3] not in peers[:3]  # aclose closed the pool


# The first loop closes without aclose(): its client can only be forgotten, and aiohttp says so when it goes.
@pytest.mark.filterwarnings("ignore:Unclosed:ResourceWarning")
def test_a_client_opened_in_a_closed_event_loop_is_not_reused():
    provider = make_provider()
    with ThreadedFakeBedrock() as fake:
        config = llm(fake)
        first = asyncio.run(provider.complete(ask(config)))
        second = asyncio.run(provider.complete(ask(config)))
        asyncio.run(provider.aclose())
        gc.collect()
    assert first.text == second.text == "Hello from Bedrock."
    assert len(fake.requests) == 2


# --- credentials ------------------------------------------------------------------------------------------------


async def test_without_keys_the_aws_credential_chain_signs_the_request(fake, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-environment-0123456789")
    provider = BedrockProvider()
    try:
        await provider.complete(ask(llm(fake)))
    finally:
        await provider.aclose()
    assert "Credential=AKIAFROMENVIRONMENT1/" in fake.requests[0].headers["authorization"]


async def test_no_credentials_at_all_is_a_clear_error_before_any_request(fake):
    provider = BedrockProvider()
    provider.configure(make_settings())
    try:
        with pytest.raises(ProviderError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set") as caught:
            await provider.complete(ask(llm(fake)))
    finally:
        await provider.aclose()
    assert not caught.value.retryable
    assert fake.requests == []


@pytest.mark.parametrize(("environ", "missing"), [
    ({"AWS_SECRET_ACCESS_KEY": ""}, "AWS_SECRET_ACCESS_KEY is not set"),
    ({"AWS_ACCESS_KEY_ID": ""}, "AWS_ACCESS_KEY_ID is not set"),
])
async def test_half_a_key_pair_names_the_missing_variable(fake, environ, missing):
    provider = make_provider(**environ)
    with pytest.raises(ProviderError, match=missing) as caught:
        await provider.complete(ask(llm(fake)))
    assert not caught.value.retryable
    assert fake.requests == []


def test_importing_the_plugin_does_not_import_the_sdk():
    code = "import sys, agentrunner_bedrock; print('botocore' in sys.modules, 'aiobotocore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, []),
    ({"top_k": 40}, []),
    ({"top_k": 40, "model": "us.anthropic.claude-3-5-sonnet-20240620-v1:0"}, []),
    ({"top_k": 40, "model": "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123"}, []),
    ({"top_k": 40, "model": "amazon.titan-text-express-v1"}, ["top_k"]),
    ({"top_k": 40, "model": "eu.meta.llama3-2-3b-instruct-v1:0"}, ["top_k"]),
    ({"temperature": 1.5}, ["temperature"]),
    ({"temperature": 1.5, "model": "ai21.jamba-1-5-large-v1:0"}, []),
    ({"region": "US East"}, ["region"]),
    ({"endpoint_url": "https://a.example", "base_url": "https://b.example"}, ["base_url"]),
    ({"endpoint_url": "https://me:pw@bedrock.example"}, ["endpoint_url"]),
])
def test_validate_reports_values_bedrock_would_refuse(fields, expected):
    problems = BedrockProvider().validate(llm(None, **fields))
    assert [field for field, _ in problems] == expected
    assert all(message for _, message in problems)
