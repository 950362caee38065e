"""What reaches Ollama: every llm_config field under Ollama's name, the system prompt, auth, the endpoint."""

from __future__ import annotations

import base64

from agentrunner_ollama.provider import DEFAULT_TIMEOUT, request_timeout
from ollama_agents import REFERENCE_AGENT, SYSTEM_PROMPT, llm_config, load_agent
from ollama_fake_server import answer, unused_port

from agentrunner.interfaces import CompletionRequest, CompletionResponse, Message, Usage
from agentrunner.schema import LLMConfig


def ask(config, text: str = "Why is the sky blue?", **kwargs) -> CompletionRequest:
    return CompletionRequest(llm_config=config, system_prompt=SYSTEM_PROMPT, messages=[Message("user", text)], **kwargs)


async def test_the_reference_agent_reaches_ollama_field_by_field(fake_ollama, provider):
    agent, warnings = load_agent(REFERENCE_AGENT)
    assert warnings == []

    response = await provider.complete(ask(agent.llm_config))

    [seen] = fake_ollama.requests
    assert (seen.method, seen.path) == ("POST", "/api/chat")
    assert seen.body == {
        "model": "llama2",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
        "stream": False,
        # num_predict (512) wins over max_tokens (2000); timeout is the client's, not a body field
        "options": {"temperature": 0.7, "num_predict": 512, "num_ctx": 4096, "repeat_penalty": 1.1},
    }
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == "agentrunner-ollama"
    assert "Authorization" not in seen.headers
    assert response == CompletionResponse(text="Hello from Ollama", usage=Usage(input_tokens=26, output_tokens=12),
                                          model="llama2", finish_reason="stop")
    assert request_timeout(agent.llm_config) == 120


async def test_optional_fields_are_absent_when_the_agent_leaves_them_out(fake_ollama, provider):
    await provider.complete(ask(llm_config()))

    [body] = fake_ollama.bodies
    # the reference's fields keep their schema defaults; top_p and the penalties keep the Modelfile's
    assert body["options"] == {"temperature": 0.7, "num_predict": 2000}
    assert "format" not in body and "tools" not in body
    assert set(body) == {"model", "messages", "stream", "options"}


async def test_optional_fields_are_sent_when_set(fake_ollama, provider):
    config = llm_config(temperature=0.2, max_tokens=300, top_p=0.9, top_k=40, seed=42, frequency_penalty=0.5,
                        presence_penalty=-0.5, num_ctx=8192, repeat_penalty=1.3,
                        response_format={"type": "json_object"})

    await provider.complete(ask(config))

    [body] = fake_ollama.bodies
    assert body["options"] == {"temperature": 0.2, "num_predict": 300, "top_p": 0.9, "top_k": 40, "seed": 42,
                               "frequency_penalty": 0.5, "presence_penalty": -0.5, "num_ctx": 8192,
                               "repeat_penalty": 1.3}
    assert body["format"] == "json"


async def test_a_field_set_to_its_default_value_is_still_the_agents_choice(fake_ollama, provider):
    await provider.complete(ask(llm_config(top_p=1.0, frequency_penalty=0.0)))

    [body] = fake_ollama.bodies
    assert body["options"] == {"temperature": 0.7, "num_predict": 2000, "top_p": 1.0, "frequency_penalty": 0.0}


async def test_num_predict_wins_over_max_tokens_and_max_tokens_fills_in_without_it(fake_ollama, provider):
    await provider.complete(ask(llm_config(max_tokens=100, num_predict=-1)))
    await provider.complete(ask(llm_config(max_tokens=100)))

    assert [body["options"]["num_predict"] for body in fake_ollama.bodies] == [-1, 100]


async def test_a_json_schema_response_format_becomes_the_format_itself(fake_ollama, provider):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    await provider.complete(ask(llm_config(response_format={"type": "json_schema",
                                                            "json_schema": {"name": "reply", "schema": schema}})))
    await provider.complete(ask(llm_config(response_format={"type": "text"})))

    schema_body, text_body = fake_ollama.bodies
    assert schema_body["format"] == schema
    assert "format" not in text_body


async def test_the_conversation_follows_the_system_prompt_in_order(fake_ollama, provider):
    history = [Message("user", "Hi"), Message("assistant", "Hello! How can I help?"), Message("user", "A joke?")]
    await provider.complete(CompletionRequest(llm_config=llm_config(), system_prompt=SYSTEM_PROMPT, messages=history))
    await provider.complete(CompletionRequest(llm_config=llm_config(), system_prompt="", messages=history[:1]))

    with_prompt, without_prompt = fake_ollama.bodies
    assert with_prompt["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "A joke?"},
    ]
    assert without_prompt["messages"] == [{"role": "user", "content": "Hi"}]


async def test_llm_config_base_url_wins_over_ollama_base_url(fake_ollama):
    from agentrunner_ollama import OllamaProvider

    from agentrunner.settings import load_settings

    provider = OllamaProvider()
    provider.configure(load_settings(environ={"OLLAMA_BASE_URL": f"http://127.0.0.1:{unused_port()}"},
                                     env_file=None))
    try:
        response = await provider.complete(ask(llm_config(base_url=fake_ollama.url + "/")))
    finally:
        await provider.aclose()

    assert response.text == "Hello from Ollama"
    assert [request.path for request in fake_ollama.requests] == ["/api/chat"]


async def test_userinfo_in_the_base_url_is_sent_as_basic_auth(fake_ollama, provider):
    url = fake_ollama.url.replace("http://", "http://ollama-user:p%40ss:w0rd@")
    await provider.complete(ask(llm_config(base_url=url)))

    [seen] = fake_ollama.requests
    assert seen.headers["Authorization"] == "Basic " + base64.b64encode(b"ollama-user:p@ss:w0rd").decode()
    assert seen.path == "/api/chat"


async def test_the_model_that_answered_and_its_done_reason_are_reported(fake_ollama, provider):
    fake_ollama.push(answer("Truncated", model="llama2:13b", done_reason="length", prompt_eval_count=None,
                            eval_count=7))

    response = await provider.complete(ask(llm_config()))

    assert (response.model, response.finish_reason) == ("llama2:13b", "length")
    assert response.usage == Usage(input_tokens=0, output_tokens=7)  # Ollama leaves the count out for a cached prompt


def test_local_models_get_the_references_120_s_unless_the_agent_sets_a_timeout():
    assert request_timeout(llm_config()) == DEFAULT_TIMEOUT == 120
    assert request_timeout(llm_config(timeout=60)) == 60
    assert request_timeout(llm_config(timeout=300)) == 300
    assert request_timeout(LLMConfig(provider="ollama", model="llama2", timeout=30)) == 30
