"""Failures become ProviderErrors: retryable or not, Retry-After honoured, one HTTP attempt per call."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from agentrunner_ollama.provider import retry_after_seconds
from ollama_agents import SYSTEM_PROMPT, llm_config
from ollama_fake_server import error, hang, raw, unused_port

from agentrunner.interfaces import CompletionRequest, Message, ProviderError


def ask(**llm_fields) -> CompletionRequest:
    return CompletionRequest(llm_config=llm_config(**llm_fields), system_prompt=SYSTEM_PROMPT,
                             messages=[Message("user", "Hi")])


async def call(provider, request: CompletionRequest, streaming: bool) -> None:
    if streaming:
        async for _ in provider.stream(request):
            pass
    else:
        await provider.complete(request)


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("reply", "retryable", "retry_after", "message"), [
    (error(429, "too many requests", headers={"Retry-After": "7"}), True, 7.0,
     "ollama: rate limited (429): too many requests"),
    (error(500, "llama runner process has terminated: signal: killed"), True, None,
     "ollama: server error (500): llama runner process has terminated: signal: killed"),
    (error(503, "server busy, please try again.  maximum pending requests exceeded"), True, None,
     "ollama: service unavailable (503): server busy, please try again. maximum pending requests exceeded"),
    (error(529, "overloaded"), True, None, "ollama: server error (529): overloaded"),
    (error(400, 'invalid options: "mirostat_eta"'), False, None,
     'ollama: bad request (400): invalid options: "mirostat_eta"'),
    (error(401, "unauthorized"), False, None, "ollama: authentication failed (401): unauthorized (a protected "
     "Ollama server takes its credentials in the base URL: http://user:password@127.0.0.1:{port})"),
    (error(403, "forbidden"), False, None, "ollama: access denied (403): forbidden (a protected "
     "Ollama server takes its credentials in the base URL: http://user:password@127.0.0.1:{port})"),
    (error(404, "model 'llama2' not found"), False, None,
     "ollama: model 'llama2' not found (404) on {url}: run `ollama pull llama2` there first"),
    (raw(404, "404 page not found"), False, None,
     "ollama: not found (404): 404 page not found (is {url} an Ollama server? its chat API is {url}/api/chat)"),
    (error(422, "unprocessable"), False, None, "ollama: unprocessable request (422): unprocessable"),
], ids=["429", "500", "503", "529", "400", "401", "403", "404-model", "404-path", "422"])
async def test_an_error_status_is_mapped_after_exactly_one_request(fake_ollama, provider, reply, retryable,
                                                                   retry_after, message, streaming):
    fake_ollama.push(reply)

    with pytest.raises(ProviderError) as caught:
        await call(provider, ask(), streaming)

    port = fake_ollama.url.rsplit(":", 1)[1]
    assert str(caught.value) == message.format(url=fake_ollama.url, port=port)
    assert (caught.value.status, caught.value.retryable, caught.value.retry_after) == (
        reply.status, retryable, retry_after)
    assert len(fake_ollama.requests) == 1


async def test_retry_after_as_an_http_date(fake_ollama, provider):
    when = datetime.now(UTC) + timedelta(seconds=30)
    fake_ollama.push(error(429, "slow down", headers={"Retry-After": format_datetime(when, usegmt=True)}))

    with pytest.raises(ProviderError) as caught:
        await provider.complete(ask())

    assert caught.value.retryable
    assert 27 <= caught.value.retry_after <= 30


def test_retry_after_values():
    assert retry_after_seconds("0") == 0
    assert retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds("-3") == 0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("nan") is None
    assert retry_after_seconds(None) is None


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_connection_refused_is_retryable_and_says_where(provider, streaming):
    url = f"http://127.0.0.1:{unused_port()}"

    with pytest.raises(ProviderError) as caught:
        await call(provider, ask(base_url=url), streaming)

    message = str(caught.value)
    assert caught.value.retryable and caught.value.status is None
    assert message.startswith(f"ollama: cannot connect to {url}: ")
    assert message.endswith(f"(is Ollama running at {url}?)")


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_a_server_that_never_answers_times_out_after_llm_config_timeout(fake_ollama, provider, streaming):
    fake_ollama.push(hang())
    started = time.monotonic()

    with pytest.raises(ProviderError) as caught:
        await call(provider, ask(timeout=1.0), streaming)  # room for a busy machine to send the request

    assert 0.95 <= time.monotonic() - started < 6
    assert caught.value.retryable
    assert str(caught.value) == f"ollama: no answer within 1 s (timeout) from {fake_ollama.url}"
    assert len(fake_ollama.requests) == 1


async def test_an_answer_that_is_not_ollamas_json_is_not_retried(fake_ollama, provider):
    fake_ollama.push(raw(200, "<html>Welcome to nginx</html>", content_type="text/html"))

    with pytest.raises(ProviderError) as caught:
        await provider.complete(ask())

    assert not caught.value.retryable
    assert str(caught.value) == (f"ollama: {fake_ollama.url}/api/chat did not answer with Ollama's JSON: "
                                 "<html>Welcome to nginx</html>")
    assert len(fake_ollama.requests) == 1


async def test_a_broken_base_url_is_a_clear_error():
    from agentrunner_ollama import OllamaProvider

    class Settings:
        ollama_base_url = "http://[::1"

    provider = OllamaProvider()
    provider.configure(Settings())
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(ask())
    finally:
        await provider.aclose()

    assert str(caught.value) == "ollama: OLLAMA_BASE_URL is not a valid URL"
    assert not caught.value.retryable


async def test_an_error_in_a_successful_answer_is_the_models_failure(fake_ollama, provider):
    fake_ollama.push(raw(200, '{"error": "model runner has unexpectedly stopped"}', content_type="application/json"))

    with pytest.raises(ProviderError) as caught:
        await provider.complete(ask())

    assert caught.value.retryable
    assert str(caught.value) == "ollama: the model failed while answering: model runner has unexpectedly stopped"
