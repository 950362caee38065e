"""Bedrock's failures become ProviderErrors: retryable or not, in plain words, one attempt each, no secret."""

from __future__ import annotations

import email.utils
import logging
import socket
import time
import traceback
from urllib.parse import quote

import pytest
from bedrock_fake_server import Answer, Failure, Hang, Paused, StreamFailure
from bedrock_helpers import KEY_ID, SECRET, llm

from agentrunner.interfaces import CompletionRequest, Message, ProviderError

QUESTION = [Message("user", "Hello?")]


def ask(config) -> CompletionRequest:
    return CompletionRequest(llm_config=config, system_prompt="Be brief.", messages=QUESTION)


async def call(provider, request: CompletionRequest, operation: str) -> ProviderError:
    """The ProviderError of one complete() or one whole stream()."""
    with pytest.raises(ProviderError) as caught:
        if operation == "complete":
            await provider.complete(request)
        else:
            async for _ in provider.stream(request):
                pass
    return caught.value


OPERATIONS = pytest.mark.parametrize("operation", ["complete", "stream"])


@OPERATIONS
@pytest.mark.parametrize(("failure", "retryable", "words"), [
    (Failure(429, "ThrottlingException", "Too many requests, please wait before trying again."), True,
     "rate limited (429, ThrottlingException): Too many requests, please wait before trying again."),
    (Failure(429, "ModelNotReadyException", "Model is not ready"), True, "model not ready (429"),
    (Failure(500, "InternalServerException", "Internal failure"), True, "server error (500, InternalServerException)"),
    (Failure(503, "ServiceUnavailableException", "Service is unavailable"), True, "service unavailable (503"),
    (Failure(408, "ModelTimeoutException", "Model took too long"), True, "the model did not answer in time (408"),
    (Failure(502, "BadGateway", ""), True, "bad gateway (502, BadGateway)"),
    (Failure(400, "ValidationException", "Malformed input request: temperature"), False,
     "bad request (400, ValidationException): Malformed input request: temperature"),
    (Failure(401, "UnauthorizedException", "Missing token"), False, "authentication failed (401"),
    (Failure(403, "UnrecognizedClientException", "The security token included in the request is invalid."), False,
     "authentication failed (403, UnrecognizedClientException): The security token included in the request is "
     "invalid. (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"),
    (Failure(403, "AccessDeniedException", "You don't have access to the model with the specified model ID."), False,
     "access denied (403, AccessDeniedException): You don't have access to the model"),
    (Failure(404, "ResourceNotFoundException", "Could not resolve the foundation model"), False,
     "not found (404, ResourceNotFoundException)"),
    (Failure(424, "ModelErrorException", "The model failed"), False, "the model failed (424"),
])
async def test_an_error_answer_is_one_attempt_with_a_clear_message(fake, provider, operation, failure, retryable,
                                                                   words):
    fake.reply(failure)
    error = await call(provider, ask(llm(fake)), operation)
    assert str(error).startswith("bedrock: " + words)
    assert error.retryable is retryable
    assert error.status == failure.status
    assert error.retry_after is None
    assert len(fake.requests) == 1  # the SDK did not retry


@OPERATIONS
async def test_retry_after_in_seconds_is_kept(fake, provider, operation):
    fake.reply(Failure(429, "ThrottlingException", "slow down", {"Retry-After": "7"}))
    error = await call(provider, ask(llm(fake)), operation)
    assert (error.retryable, error.retry_after) == (True, 7.0)
    assert len(fake.requests) == 1


async def test_retry_after_as_an_http_date_becomes_seconds(fake, provider):
    fake.reply(Failure(503, "ServiceUnavailableException", "busy",
                       {"Retry-After": email.utils.formatdate(time.time() + 30, usegmt=True)}))
    error = await call(provider, ask(llm(fake)), "complete")
    assert error.retryable
    assert 25 <= error.retry_after <= 31


@pytest.mark.parametrize(("exception_type", "retryable", "words"), [
    ("throttlingException", True, "rate limited (429, throttlingException): slow down"),
    ("modelStreamErrorException", True, "the model's stream failed (424"),
    ("serviceUnavailableException", True, "service unavailable (503"),
    ("internalServerException", True, "server error (500"),
    ("validationException", False, "bad request (400, validationException)"),
])
async def test_an_exception_event_inside_a_stream(fake, provider, exception_type, retryable, words):
    fake.reply(StreamFailure(exception_type, "slow down"))
    received = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(ask(llm(fake))):
            received.append(item)
    assert received == ["Partial "]  # what arrived before the failure was delivered
    assert str(caught.value).startswith("bedrock: " + words)
    assert caught.value.retryable is retryable
    assert len(fake.requests) == 1


@OPERATIONS
async def test_connection_refused_is_retryable(provider, operation):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await call(provider, ask(llm(None, endpoint_url=f"http://127.0.0.1:{port}")), operation)
    assert str(error).startswith(f"bedrock: cannot connect to http://127.0.0.1:{port}: ")
    assert error.retryable


@OPERATIONS
async def test_a_server_that_never_answers_times_out_after_llm_config_timeout(fake, provider, operation):
    fake.reply(Hang())
    started = time.monotonic()
    error = await call(provider, ask(llm(fake, timeout=1.0)), operation)  # room for a busy machine
    assert 0.95 <= time.monotonic() - started < 6
    assert str(error) == "bedrock: no answer within 1 s (timeout)"
    assert error.retryable
    assert len(fake.requests) == 1


async def test_a_stream_that_stalls_times_out_too(fake, provider):
    fake.reply(Paused(Answer(text=("first ", "second")), after=2))  # the rest never comes
    received = []
    with pytest.raises(ProviderError, match=r"no answer within 1 s \(timeout\)") as caught:
        async for item in provider.stream(ask(llm(fake, timeout=1.0))):
            received.append(item)
    assert received == ["first "]
    assert caught.value.retryable
    assert len(fake.requests) == 1


# --- secrets ----------------------------------------------------------------------------------------------------


async def test_credentials_a_server_echoes_back_are_redacted_from_the_error(fake, provider):
    echo = f"signature mismatch for {KEY_ID} with secret {SECRET}"
    fake.reply(Failure(403, "SignatureDoesNotMatch", echo), StreamFailure("validationException", echo))
    errors = [await call(provider, ask(llm(fake)), operation) for operation in ("complete", "stream")]
    assert str(errors[0]) == ("bedrock: authentication failed (403, SignatureDoesNotMatch): signature mismatch for "
                              "*** with secret *** (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    assert str(errors[1]) == ("bedrock: bad request (400, validationException): signature mismatch for *** "
                              "with secret ***")


async def test_the_secret_key_never_appears_in_an_error_its_chain_or_the_logs(fake, provider, caplog):
    caplog.set_level(logging.DEBUG)
    fake.reply(Failure(403, "UnrecognizedClientException", "The security token included in the request is invalid."),
               Failure(400, "ValidationException", "Malformed input request"),
               StreamFailure("throttlingException", "Too many requests"),
               Failure(500, "InternalServerException", "Internal failure"), Hang())
    errors = [await call(provider, ask(llm(fake, timeout=0.3)), operation)
              for operation in ("complete", "complete", "stream", "stream", "complete")]
    with_password = f"http://user:{quote(SECRET, safe='')}@127.0.0.1:9"
    errors.append(await call(provider, ask(llm(None, endpoint_url=with_password)), "complete"))
    for error in errors:
        shown = "\n".join([str(error), repr(error), *traceback.format_exception(error)])
        assert SECRET not in shown and quote(SECRET, safe="") not in shown
        assert KEY_ID not in str(error)
        assert error.__cause__ is None and error.__context__ is None  # no SDK exception travels along
    assert SECRET not in caplog.text and quote(SECRET, safe="") not in caplog.text
    assert any(record.name.startswith("botocore") for record in caplog.records)  # the SDK did log, at DEBUG
