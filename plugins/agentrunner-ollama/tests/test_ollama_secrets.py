"""A password in the base URL is used as basic auth and never shown: not in errors, chains or logs."""

from __future__ import annotations

import base64
import logging
import traceback

import pytest
from ollama_agents import SYSTEM_PROMPT, llm_config
from ollama_fake_server import answer, error, failing_stream, hang, raw, unused_port

from agentrunner.interfaces import CompletionRequest, Message, ProviderError

CANARY = "canary-pw-7f3a9c51"
USER = "ollama-user"


def with_userinfo(url: str, password: str = CANARY) -> str:
    return url.replace("http://", f"http://{USER}:{password}@")


def ask(base_url: str, **llm_fields) -> CompletionRequest:
    return CompletionRequest(llm_config=llm_config(base_url=base_url, **llm_fields), system_prompt=SYSTEM_PROMPT,
                             messages=[Message("user", "Hi")])


def everything_shown(exc: BaseException, caplog) -> str:
    """All the text an error can put in front of someone: message, repr, chain, traceback, captured logs."""
    logging.getLogger("agentrunner.test").exception("provider call failed: %s", exc)
    return "\n".join([str(exc), repr(exc), repr(exc.__cause__), repr(exc.__context__), repr(exc.args),
                      "".join(traceback.format_exception(exc)), caplog.text])


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("reply", [
    error(401, f"unauthorized: bad password {CANARY}"),
    error(500, f"proxy failed for {USER}:{CANARY}"),
    error(429, "busy", headers={"Retry-After": "1"}),
    error(500, "x" * 495 + CANARY),
    raw(200, f"<html>login as {USER} with {CANARY}</html>", content_type="text/html"),
    failing_stream("Hi", message=f"runner crashed ({CANARY})"),
    hang(),
], ids=["401-echo", "500-echo", "429", "cut-at-the-secret", "not-json", "stream-error", "timeout"])
async def test_the_password_never_appears_in_an_error_or_a_log(fake_ollama, provider, caplog, reply, streaming):
    caplog.set_level(logging.DEBUG)
    fake_ollama.push(reply)

    with pytest.raises(ProviderError) as caught:
        if streaming:
            async for _ in provider.stream(ask(with_userinfo(fake_ollama.url), timeout=0.2)):
                pass
        else:
            await provider.complete(ask(with_userinfo(fake_ollama.url), timeout=0.2))

    assert CANARY not in everything_shown(caught.value, caplog)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    [seen] = fake_ollama.requests
    assert seen.headers["Authorization"] == "Basic " + base64.b64encode(f"{USER}:{CANARY}".encode()).decode()


async def test_connection_refused_names_the_url_without_its_userinfo(provider, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{unused_port()}"

    with pytest.raises(ProviderError) as caught:
        await provider.complete(ask(with_userinfo(url)))

    shown = everything_shown(caught.value, caplog)
    assert CANARY not in shown and USER not in shown
    assert f"cannot connect to {url}:" in str(caught.value)


async def test_a_percent_encoded_password_is_masked_in_both_forms(fake_ollama, provider, caplog):
    password = "p@ss/w0rd:" + CANARY
    encoded = "p%40ss%2Fw0rd%3A" + CANARY
    fake_ollama.push(error(502, f"upstream refused {password} ({encoded})"))

    with pytest.raises(ProviderError) as caught:
        await provider.complete(ask(with_userinfo(fake_ollama.url, encoded)))

    assert CANARY not in everything_shown(caught.value, caplog)
    assert str(caught.value) == "ollama: bad gateway (502): upstream refused *** (***)"


async def test_a_successful_call_logs_nothing_secret(fake_ollama, provider, caplog):
    caplog.set_level(logging.DEBUG)
    fake_ollama.push(answer("fine"))

    response = await provider.complete(ask(with_userinfo(fake_ollama.url)))

    assert response.text == "fine"
    assert CANARY not in caplog.text


async def test_with_credentials_given_an_authentication_failure_says_to_check_them(fake_ollama, provider):
    fake_ollama.push(error(401, "unauthorized"))

    with pytest.raises(ProviderError) as caught:
        await provider.complete(ask(with_userinfo(fake_ollama.url)))

    assert str(caught.value) == ("ollama: authentication failed (401): unauthorized "
                                 "(check the user and password in the base URL)")
