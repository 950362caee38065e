"""Failures of the anthropic provider: one HTTP attempt each, retryable or not, in plain words, no secret."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import traceback
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from agentrunner_anthropic import AnthropicProvider
from agentrunner_anthropic.provider import retry_after_seconds
from anthropic_fake_server import answer, error, hang
from anthropic_support import CANARY_KEY, ask, settings

from agentrunner.interfaces import ProviderError


async def call(provider: AnthropicProvider, streaming: bool, **fields) -> list:
    """One call, by ``complete`` or by ``stream``; returns what the stream yielded before it ended."""
    if not streaming:
        await provider.complete(ask(**fields))
        return []
    received = []
    async for item in provider.stream(ask(**fields)):
        received.append(item)
    return received


async def failure(provider: AnthropicProvider, streaming: bool, **fields) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await call(provider, streaming, **fields)
    return caught.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


streaming = pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])


@streaming
@pytest.mark.parametrize(("status", "words", "retryable"), [
    (500, "server error (500)", True),
    (503, "service unavailable (503)", True),
    (529, "overloaded (529)", True),
    (400, "bad request (400)", False),
    (401, "authentication failed (401)", False),
    (403, "permission denied (403)", False),
    (404, "not found (404)", False),
    (422, "unprocessable request (422)", False),
])
async def test_an_http_error_is_one_attempt_and_says_what_happened(provider, fake, streaming, status, words,
                                                                   retryable):
    fake.script(error(status, "what the API said"))

    failed = await failure(provider, streaming)

    assert str(failed) == f"anthropic: {words}: what the API said"
    assert (failed.retryable, failed.status, failed.retry_after) == (retryable, status, None)
    assert len(fake.requests) == 1  # the SDK did not retry


@streaming
async def test_rate_limited_is_retryable_after_the_seconds_of_retry_after(provider, fake, streaming):
    fake.script(error(429, "Number of request tokens has exceeded your per-minute rate limit",
                      {"retry-after": "7"}))

    failed = await failure(provider, streaming)

    assert str(failed) == ("anthropic: rate limited (429): "
                           "Number of request tokens has exceeded your per-minute rate limit")
    assert (failed.retryable, failed.status, failed.retry_after) == (True, 429, 7.0)
    assert len(fake.requests) == 1


async def test_retry_after_may_be_an_http_date(provider, fake):
    fake.script(error(429, "slow down", {"retry-after": format_datetime(datetime.now(UTC) + timedelta(seconds=30),
                                                                        usegmt=True)}))
    failed = await failure(provider, False)
    assert failed.retryable and 25 <= failed.retry_after <= 30
    assert len(fake.requests) == 1


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "2"}, 2.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"retry-after": "-3"}, 0.0),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "nan"}, None),
    ({}, None),
])
def test_retry_after_seconds(headers, seconds):
    assert retry_after_seconds(headers) == seconds


async def test_an_error_event_in_the_middle_of_a_stream_is_retryable_when_the_api_was_overloaded(provider, fake):
    fake.script(answer("A partial answer that never ends", stream_error=("overloaded_error", "Overloaded")))
    received = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(ask()):
            received.append(item)

    assert received == ["A"]
    assert str(caught.value) == "anthropic: overloaded (529) during the answer: Overloaded"
    assert (caught.value.retryable, caught.value.status) == (True, 529)
    assert len(fake.requests) == 1


async def test_a_stream_cut_before_message_stop_is_retryable(provider, fake):
    fake.script(answer("An answer cut short", cut=True))
    received = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(ask()):
            received.append(item)

    assert received == ["An"]
    assert str(caught.value) == "anthropic: the answer stopped before its end (no message_stop event)"
    assert caught.value.retryable
    assert len(fake.requests) == 1


@streaming
async def test_connection_refused_is_retryable_and_names_the_url_without_its_password(streaming):
    port = free_port()
    provider = AnthropicProvider()
    provider.configure(settings(f"http://admin:hunter2-secret@127.0.0.1:{port}"))
    try:
        failed = await failure(provider, streaming)
    finally:
        await provider.aclose()

    assert str(failed).startswith(f"anthropic: cannot connect to http://127.0.0.1:{port}: ")
    assert "hunter2-secret" not in str(failed) and "admin" not in str(failed)
    assert failed.retryable and failed.status is None


@streaming
async def test_a_server_that_never_answers_is_a_retryable_timeout_after_llm_config_timeout(provider, fake, streaming):
    fake.script(hang())
    started = time.monotonic()

    failed = await failure(provider, streaming, timeout=1.0)  # room for a busy machine to send the request

    assert 0.95 <= time.monotonic() - started < 6
    assert str(failed) == "anthropic: no answer within 1 s (timeout)"
    assert failed.retryable and failed.status is None
    assert len(fake.requests) == 1


async def test_a_stream_that_stalls_halfway_is_a_retryable_timeout(provider, fake):
    fake.script(answer("Some words and then silence", hold=asyncio.Event()))
    received = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(ask(timeout=1.0)):
            received.append(item)

    assert received == ["Some"]
    assert str(caught.value) == "anthropic: no answer within 1 s (timeout)"
    assert caught.value.retryable
    assert len(fake.requests) == 1


@streaming
async def test_a_missing_key_is_a_clear_error_and_nothing_is_sent(fake, streaming):
    provider = AnthropicProvider()
    provider.configure(settings(fake.url, key=None))

    failed = await failure(provider, streaming)

    assert "ANTHROPIC_API_KEY is not set" in str(failed)
    assert not failed.retryable
    assert fake.requests == []


async def test_the_key_never_reaches_an_error_its_chain_or_a_log_line(provider, fake, caplog):
    caplog.set_level(logging.DEBUG)
    # a gateway that repeats the credentials it received in its error messages
    fake.script(error(401, f"invalid x-api-key: Bearer {CANARY_KEY}"),
                error(429, f"key {CANARY_KEY} is over its quota", {"retry-after": "1"}),
                error(500, f"internal error while checking {CANARY_KEY}"),
                error(401, f"invalid x-api-key: Bearer {CANARY_KEY}"),
                hang(),
                answer("fine"))
    failures = [await failure(provider, False), await failure(provider, False), await failure(provider, False),
                await failure(provider, True), await failure(provider, False, timeout=0.2)]
    assert (await provider.complete(ask())).text == "fine"
    refused = AnthropicProvider()
    refused.configure(settings(f"http://127.0.0.1:{free_port()}"))
    failures.append(await failure(refused, False))
    await refused.aclose()

    assert [failed.status for failed in failures] == [401, 429, 500, 401, None, None]
    assert str(failures[0]) == "anthropic: authentication failed (401): invalid x-api-key: Bearer **********"
    for failed in failures:
        assert CANARY_KEY not in str(failed) and CANARY_KEY not in repr(failed)
        assert failed.__cause__ is None and failed.__context__ is None  # no SDK exception (or request) attached
        assert CANARY_KEY not in "".join(traceback.format_exception(failed))
    assert caplog.records  # the SDK and httpx2 did log at DEBUG
    assert CANARY_KEY not in caplog.text
    for record in caplog.records:
        assert CANARY_KEY not in record.getMessage()
