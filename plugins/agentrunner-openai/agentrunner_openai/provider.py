"""The ``openai`` provider: OpenAI's Chat Completions API, or any server that speaks it.

The official SDK is imported when the first request is made, not at import time, so
``agentrunner --help`` stays fast with this plugin installed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from agentrunner.interfaces import CompletionRequest, CompletionResponse, ProviderError
from agentrunner_openai.errors import display_url, provider_error, scrub, unexpected_answer
from agentrunner_openai.wire import StreamAssembler, completion_response, request_body

log = logging.getLogger("agentrunner_openai")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Sent to an OpenAI-compatible server given by a base URL when no key is set: local servers
#: (vLLM, LM Studio) ignore it, but the SDK will not send a request without one.
PLACEHOLDER_KEY = "agentrunner-no-key"

#: The ``llm_config`` fields this provider honours; ``agentrunner validate`` reports the others
#: (top_k, num_ctx, num_predict, repeat_penalty, region, endpoint_url) when an agent sets them.
SUPPORTED_OPTIONS = frozenset({
    "provider", "model", "temperature", "max_tokens", "top_p", "frequency_penalty", "presence_penalty",
    "timeout", "response_format", "seed", "base_url",
})

_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _secret_value(secret: Any) -> str:
    if secret is None:
        return ""
    getter = getattr(secret, "get_secret_value", None)
    return getter() if callable(getter) else str(secret)


class OpenAIProvider:
    """Chat Completions through the official ``openai`` SDK, one HTTP attempt per call.

    Clients are made inside the running event loop on first use and reused for every
    request with the same base URL, key, organization and timeout; ``aclose`` closes them.
    """

    name = "openai"
    supported_options = SUPPORTED_OPTIONS

    def __init__(self, settings: Any = None) -> None:
        self._settings = settings
        self._clients: dict[tuple[str, str, str | None, float], tuple[asyncio.AbstractEventLoop, Any]] = {}

    def configure(self, settings: Any) -> None:
        """Remember the settings (key, organization, base URL); nothing is opened here."""
        self._settings = settings

    def validate(self, llm_config: Any) -> list[tuple[str, str]]:
        """Values the schema accepts but OpenAI cannot work with."""
        problems: list[tuple[str, str]] = []
        if llm_config.model == "echo" and "model" not in llm_config.explicit_fields:
            problems.append(("model", "required by provider 'openai' (the default model 'echo' belongs to the echo "
                                      "provider): set llm_config.model or DEFAULT_LLM_MODEL, e.g. gpt-4"))
        response_format = llm_config.response_format
        if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            schema = response_format.get("json_schema")
            name = schema.get("name") if isinstance(schema, dict) else None
            if isinstance(schema, dict) and not (isinstance(name, str) and _SCHEMA_NAME.match(name)):
                problems.append(("response_format.json_schema.name",
                                 "required by OpenAI: letters, digits, _ and -, at most 64 characters"))
        return problems

    # --- Requests -------------------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """One Chat Completions request; failures are ``ProviderError``s (see ``errors``)."""
        import openai

        llm = request.llm_config
        client, base_url, secrets = self._client(llm)
        try:
            completion = await client.chat.completions.create(**request_body(request), timeout=llm.timeout)
        except (openai.OpenAIError, _transport_errors()) as exc:
            error = provider_error(exc, base_url=base_url, timeout=llm.timeout, secrets=secrets)
        except ValueError:  # a 200 whose body is not JSON
            error = unexpected_answer(base_url, "its body is not JSON")
        else:
            if isinstance(getattr(completion, "choices", None), list) and completion.choices:
                return completion_response(completion, llm.model)
            error = unexpected_answer(base_url, "it is not a chat completion")
        # Raised outside the handler so the SDK exception (its request holds the key) is not chained.
        raise error

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | CompletionResponse]:
        """Text deltas as they arrive, then the whole answer (text, tool calls, usage, model)."""
        import openai

        llm = request.llm_config
        client, base_url, secrets = self._client(llm)
        error: ProviderError | None = None
        try:
            chunks = await client.chat.completions.create(
                **request_body(request), stream=True, stream_options={"include_usage": True}, timeout=llm.timeout)
        except (openai.OpenAIError, _transport_errors()) as exc:
            error = provider_error(exc, base_url=base_url, timeout=llm.timeout, secrets=secrets)
        if error is not None:
            raise error
        assembler = StreamAssembler(llm.model)
        try:
            async for chunk in chunks:
                delta = assembler.add(chunk)
                if delta:
                    yield delta
        except (openai.OpenAIError, _transport_errors()) as exc:
            error = provider_error(exc, base_url=base_url, timeout=llm.timeout, secrets=secrets)
        except ValueError:  # an event that is not JSON
            error = unexpected_answer(base_url, "its events are not chat completion chunks")
        finally:
            await chunks.close()
        if error is None and not assembler.chunks:
            error = unexpected_answer(base_url, "the stream ended without an answer")
        if error is not None:
            raise error
        yield assembler.response()

    # --- Clients --------------------------------------------------------------------------

    def _client(self, llm: Any) -> tuple[Any, str, tuple[str, ...]]:
        """The pooled client for ``llm``'s endpoint in the running loop, its base URL and the secrets
        no message may show."""
        import openai

        settings = self._settings
        base_url = llm.base_url or getattr(settings, "openai_base_url", None) or DEFAULT_BASE_URL
        api_key = _secret_value(getattr(settings, "openai_api_key", None))
        if not api_key:
            if base_url.rstrip("/") == DEFAULT_BASE_URL:
                raise ProviderError(f"{self.name}: OPENAI_API_KEY is not set (needed for {DEFAULT_BASE_URL})",
                                    retryable=False)
            api_key = PLACEHOLDER_KEY
        secrets = (api_key,) if api_key != PLACEHOLDER_KEY else ()
        organization = getattr(settings, "openai_org_id", None) or None
        key = (base_url, api_key, organization, float(llm.timeout))
        loop = asyncio.get_running_loop()
        cached = self._clients.get(key)
        if cached is not None and cached[0] is loop:
            return cached[1], base_url, secrets
        try:
            client = openai.AsyncOpenAI(api_key=api_key, organization=organization, base_url=base_url,
                                        max_retries=0, timeout=llm.timeout)
        except openai.OpenAIError as exc:
            message = scrub(f"{self.name}: cannot use {display_url(base_url)}: {exc}", secrets)
        else:
            # A client of another (closed) loop is dropped: its connections belong to that loop.
            self._clients[key] = (loop, client)
            return client, base_url, secrets
        raise ProviderError(message, retryable=False)

    async def aclose(self) -> None:
        """Close the clients of the running loop; clients of loops already closed are dropped."""
        loop = asyncio.get_running_loop()
        clients, self._clients = self._clients, {}
        for owner, client in clients.values():
            if owner is not loop:
                continue
            try:
                await client.close()
            except Exception:  # one client failing to close must not keep the others open
                log.warning("an OpenAI client did not close cleanly", exc_info=True)


def _transport_errors() -> type[Exception]:
    """``httpx2.HTTPError``: transport failures the SDK lets through while a stream is read."""
    import httpx2

    return httpx2.HTTPError
