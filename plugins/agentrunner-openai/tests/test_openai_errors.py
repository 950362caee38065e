"""Failures as ``ProviderError``s: retryable or not, ``retry_after``, a message a user understands,
one HTTP attempt per call, and never a credential in a message, a traceback or a log."""

from __future__ import annotations

import email.utils
import logging
import socket
import time
import traceback

import pytest
from agentrunner_openai import OpenAIProvider
from agentrunner_openai.errors import display_url, retry_after, scrub
from openai_fake_server import Answer, Failure, Hang, Raw

from agentrunner.interfaces import CompletionRequest, Message, ProviderError
from agentrunner.schema import LLMConfig
from agentrunner.settings import load_settings

CANARY = "sk-canary-7f3a9c1e5b2d4086a1c3e5f7b9d0"


def provider_for(base_url: str, key: str = CANARY) -> OpenAIProvider:
    provider = OpenAIProvider()
    provider.configure(load_settings(environ={"OPENAI_API_KEY": key, "OPENAI_BASE_URL": base_url}, env_file=None))
    return provider


def ask(**fields) -> CompletionRequest:
    config = LLMConfig(provider="openai", model="gpt-4", **fields)
    return CompletionRequest(config, "You help.", [Message("user", "Hello?")])


@pytest.fixture
async def provider(fake_openai):
    provider = provider_for(fake_openai.base_url)
    yield provider
    await provider.aclose()


async def failure_of(provider: OpenAIProvider, request: CompletionRequest, *, stream: bool = False) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        if stream:
            async for _ in provider.stream(request):
                pass
        else:
            await provider.complete(request)
    return caught.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- HTTP statuses ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("failure", "retryable", "message"), [
    (Failure(400, "Invalid value for 'temperature'."), False,
     "openai: bad request (400): Invalid value for 'temperature'."),
    (Failure(401, "Incorrect API key provided.", "invalid_request_error"), False,
     "openai: authentication failed (401): Incorrect API key provided."),
    (Failure(403, "You are not allowed to sample from this model.", "permission_error"), False,
     "openai: permission denied (403): You are not allowed to sample from this model."),
    (Failure(404, "The model `gpt-5` does not exist or you do not have access to it."), False,
     "openai: not found (404): The model `gpt-5` does not exist or you do not have access to it."),
    (Failure(422, "Unprocessable."), False, "openai: unprocessable request (422): Unprocessable."),
    (Failure(429, "Rate limit reached for gpt-4.", "requests"), True, "openai: rate limited (429): Rate limit reached"),
    (Failure(500, "The server had an error.", "server_error"), True,
     "openai: server error (500): The server had an error."),
    (Failure(503, "The engine is currently overloaded.", "server_error"), True,
     "openai: service unavailable (503): The engine is currently overloaded."),
    (Failure(529, "Overloaded.", "server_error"), True, "openai: overloaded (529): Overloaded."),
])
async def test_an_error_status_is_mapped_after_exactly_one_request(fake_openai, provider, failure, retryable, message,
                                                                   stream):
    fake_openai.reply(failure)
    error = await failure_of(provider, ask(), stream=stream)
    assert str(error).startswith(message)
    assert error.retryable is retryable
    assert error.status == failure.status
    assert error.retry_after is None
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "7"}, 7.0),
    ({"Retry-After": "0.5"}, 0.5),
    ({"retry-after-ms": "1500", "Retry-After": "2"}, 1.5),
])
async def test_retry_after_in_seconds_is_passed_on(fake_openai, provider, headers, expected):
    fake_openai.reply(Failure(429, "Rate limit reached.", headers=headers))
    error = await failure_of(provider, ask())
    assert (error.retryable, error.retry_after, error.status) == (True, expected, 429)
    assert f"retry after {expected:g} s" in str(error)
    assert len(fake_openai.requests) == 1


async def test_retry_after_as_an_http_date_is_passed_on(fake_openai, provider):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake_openai.reply(Failure(503, "Back soon.", headers={"Retry-After": when}))
    error = await failure_of(provider, ask())
    assert error.retryable and error.status == 503
    assert 25 <= error.retry_after <= 31
    assert len(fake_openai.requests) == 1


async def test_a_proxy_page_instead_of_json_still_gives_a_readable_message(fake_openai, provider):
    fake_openai.reply(Failure(502, body="<html><body><h1>502 Bad Gateway</h1>\n" + "x" * 2000 + "</body></html>"))
    error = await failure_of(provider, ask())
    assert str(error).startswith("openai: bad gateway (502): <html><body><h1>502 Bad Gateway</h1> xxx")
    assert len(str(error)) < 600
    assert error.retryable


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("raw", [
    Raw("<html><body>Welcome to nginx!</body></html>", "text/html"),
    Raw('{"detail": "Not an OpenAI server"}'),
    Raw("not json at all"),
    Raw('data: {"detail": "x"}\n\ndata: [DONE]\n\n', "text/event-stream"),
    Raw("data: not json\n\n", "text/event-stream"),
])
async def test_a_200_that_is_not_a_chat_completion_is_a_clear_error(fake_openai, provider, raw, stream):
    fake_openai.reply(raw)
    error = await failure_of(provider, ask(), stream=stream)
    assert str(error).startswith(f"openai: unexpected answer from {fake_openai.base_url}: ")
    assert "OpenAI-compatible" in str(error)
    assert not error.retryable
    assert len(fake_openai.requests) == 1


# --- Transport failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_connection_refused_is_retryable_and_names_the_server(stream):
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    provider = provider_for(base_url)
    error = await failure_of(provider, ask(), stream=stream)
    await provider.aclose()
    assert str(error).startswith(f"openai: cannot connect to {base_url}: ")
    assert error.retryable and error.status is None


@pytest.mark.parametrize("stream", [False, True])
async def test_a_server_that_never_answers_times_out_after_llm_config_timeout(fake_openai, provider, stream):
    fake_openai.reply(Hang())
    started = time.monotonic()
    error = await failure_of(provider, ask(timeout=1.0), stream=stream)  # room for a busy machine
    assert 0.95 <= time.monotonic() - started < 6
    assert str(error) == "openai: no answer within 1 s (timeout)"
    assert error.retryable
    assert len(fake_openai.requests) == 1


async def test_an_error_event_inside_a_stream_ends_it_after_the_deltas_that_arrived(fake_openai, provider):
    fake_openai.reply(Answer(text="Partial answer", stream_error="The server had an error while processing."))
    deltas = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(ask()):
            deltas.append(item)
    assert deltas == ["Partial ", "answer"]
    assert str(caught.value) == "openai: the answer was interrupted: The server had an error while processing."
    assert caught.value.retryable
    assert len(fake_openai.requests) == 1


async def test_a_connection_cut_inside_a_stream_is_retryable(fake_openai, provider):
    fake_openai.reply(Answer(text="Partial answer", drop=True))
    error = await failure_of(provider, ask(), stream=True)
    assert str(error).startswith(f"openai: connection to {fake_openai.base_url} failed: ")
    assert error.retryable
    assert len(fake_openai.requests) == 1


# --- Secrets -------------------------------------------------------------------------------------


def assert_no_canary(error: BaseException, *secrets: str) -> None:
    shown = [str(error), repr(error), "".join(traceback.format_exception(error))]
    assert error.__cause__ is None and error.__context__ is None  # no SDK exception (its request has the key)
    for secret in (CANARY, *secrets):
        assert not any(secret in text for text in shown)


async def test_the_key_never_shows_in_errors_tracebacks_or_debug_logs(fake_openai, provider, caplog):
    caplog.set_level(logging.DEBUG)
    fake_openai.reply(
        Failure(401, f"Incorrect API key provided: {CANARY}. You can find your API key at https://platform.openai.com."),
        Failure(429, f"Rate limit reached for key {CANARY[:20]}.", headers={"Retry-After": "1"}),
        Failure(400, body=f'{{"error": "bad key {CANARY}"}}'),
        Failure(500, f"key={CANARY}"),
        Hang(),
    )
    errors = [await failure_of(provider, ask(timeout=0.3)) for _ in range(5)]
    unreachable = provider_for(f"http://127.0.0.1:{free_port()}/v1")
    errors.append(await failure_of(unreachable, ask()))
    await unreachable.aclose()
    assert str(errors[0]).startswith("openai: authentication failed (401): Incorrect API key provided: ***.")
    for error in errors:
        assert_no_canary(error, CANARY[:20])
    assert caplog.records, "the SDK's debug logging was captured"
    assert CANARY not in caplog.text
    assert not any(CANARY in str(record.args) for record in caplog.records)


async def test_a_password_in_the_base_url_is_never_shown(fake_openai):
    port = free_port()
    provider = provider_for(f"http://gateway:hunter2-secret@127.0.0.1:{port}/v1?api-key=query-secret")
    error = await failure_of(provider, ask())
    await provider.aclose()
    assert str(error).startswith(f"openai: cannot connect to http://127.0.0.1:{port}/v1: ")
    assert_no_canary(error, "hunter2-secret", "query-secret", "gateway:")


def test_display_url_keeps_only_scheme_host_port_and_path():
    assert display_url("https://u:p@example.com:8443/v1?key=k#f") == "https://example.com:8443/v1"
    assert display_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert display_url("https://api.openai.com/v1") == "https://api.openai.com/v1"


def test_scrub_removes_secrets_url_passwords_and_key_shaped_words():
    text = "key sk-abc123456789 at https://user:pw@host/v1 and my-secret-value."
    assert scrub(text, ["my-secret-value"]) == "key sk-*** at https://host/v1 and ***."


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, None),
    ({"retry-after": "3"}, 3.0),
    ({"retry-after": "-4"}, 0.0),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "nan"}, None),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
])
def test_retry_after_reads_every_form_of_the_header(headers, expected):
    assert retry_after(headers) == expected
