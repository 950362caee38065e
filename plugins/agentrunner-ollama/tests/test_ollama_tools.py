"""Native tool calling both ways: definitions out, calls in, results back in Ollama's format."""

from __future__ import annotations

from agentrunner_ollama.provider import tool_arguments
from ollama_agents import SYSTEM_PROMPT, llm_config
from ollama_fake_server import answer, tool_call

from agentrunner.interfaces import CompletionRequest, CompletionResponse, Message, ToolCall, ToolDefinition

WEATHER = ToolDefinition(
    name="get_weather",
    description="The current weather of a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolDefinition(name="get_time", description="The time in a time zone")


def ask(*messages: Message, tools=(WEATHER, TIME)) -> CompletionRequest:
    return CompletionRequest(llm_config=llm_config(), system_prompt=SYSTEM_PROMPT, messages=list(messages),
                             tools=tools)


async def test_tool_definitions_are_sent_as_ollama_functions(fake_ollama, provider):
    await provider.complete(ask(Message("user", "Weather in Paris?")))

    [body] = fake_ollama.bodies
    assert body["tools"] == [
        {"type": "function", "function": {
            "name": "get_weather", "description": "The current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {
            "name": "get_time", "description": "The time in a time zone",
            "parameters": {"type": "object", "properties": {}}}},
    ]


async def test_tool_calls_in_the_answer_become_tool_calls_with_stable_ids(fake_ollama, provider):
    fake_ollama.push(answer(tool_calls=[tool_call("get_weather", {"city": "Paris"}),
                                        tool_call("get_time", {"zone": "Europe/Paris"})]))

    response = await provider.complete(ask(Message("user", "Weather and time in Paris?")))

    assert response == CompletionResponse(
        text="",
        tool_calls=(ToolCall("call_0_get_weather", "get_weather", {"city": "Paris"}),
                    ToolCall("call_1_get_time", "get_time", {"zone": "Europe/Paris"})),
        usage=response.usage, model="llama2", finish_reason="stop")
    assert response.usage.output_tokens == 12


async def test_an_id_the_server_gives_is_kept(fake_ollama, provider):
    fake_ollama.push(answer(tool_calls=[{"id": "call_abc", **tool_call("get_time", {})}]))

    response = await provider.complete(ask(Message("user", "Time?")))

    assert response.tool_calls == (ToolCall("call_abc", "get_time", {}),)


async def test_arguments_as_text_are_parsed_and_invalid_json_is_kept_raw(fake_ollama, provider):
    fake_ollama.push(answer(tool_calls=[tool_call("get_weather", '{"city": "Oslo"}'),
                                        tool_call("get_weather", "{city: Oslo")]))

    response = await provider.complete(ask(Message("user", "Weather in Oslo?")))

    assert [call.arguments for call in response.tool_calls] == [{"city": "Oslo"}, {"_raw": "{city: Oslo"}]


def test_arguments_that_are_not_a_json_object_are_kept_raw():
    assert tool_arguments(None) == {}
    assert tool_arguments("") == {}
    assert tool_arguments("[1, 2]") == {"_raw": "[1, 2]"}
    assert tool_arguments(["a"]) == {"_raw": '["a"]'}
    assert tool_arguments({"nested": ({"a": 1},)}) == {"nested": [{"a": 1}]}


async def test_tool_results_go_back_in_ollamas_format_and_errors_are_flagged(fake_ollama, provider):
    fake_ollama.push(answer(tool_calls=[tool_call("get_weather", {"city": "Paris"}),
                                        tool_call("get_time", {"zone": "Mars/Olympus"})]),
                     answer("It is 18 °C in Paris; I could not get the time."))
    question = Message("user", "Weather and time in Paris?")
    first = await provider.complete(ask(question))
    weather, clock = first.tool_calls

    final = await provider.complete(ask(
        question,
        Message("assistant", first.text, tool_calls=first.tool_calls),
        Message("tool", '{"temperature_c": 18}', tool_call_id=weather.id),
        Message("tool", "unknown time zone 'Mars/Olympus'", tool_call_id=clock.id, is_error=True),
    ))

    assert final.text == "It is 18 °C in Paris; I could not get the time."
    second_body = fake_ollama.bodies[1]
    assert second_body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {"zone": "Mars/Olympus"}}},
        ]},
        {"role": "tool", "content": '{"temperature_c": 18}', "tool_name": "get_weather"},
        {"role": "tool", "content": "Error: unknown time zone 'Mars/Olympus'", "tool_name": "get_time"},
    ]
    assert len(second_body["tools"]) == 2


async def test_a_streamed_tool_call_arrives_in_the_final_response(fake_ollama, provider):
    fake_ollama.push(answer("Let me check ", "the weather.", tool_calls=[tool_call("get_weather", {"city": "Rome"})]))

    items = [item async for item in provider.stream(ask(Message("user", "Weather in Rome?")))]

    *deltas, final = items
    assert deltas == ["Let me check ", "the weather."]
    assert final.text == "Let me check the weather."
    assert final.tool_calls == (ToolCall("call_0_get_weather", "get_weather", {"city": "Rome"}),)
    assert (final.usage.input_tokens, final.usage.output_tokens, final.model) == (26, 12, "llama2")
    assert fake_ollama.bodies[0]["stream"] is True
    assert fake_ollama.bodies[0]["tools"][0]["function"]["name"] == "get_weather"
