"""The ``bedrock`` provider: Amazon Bedrock through the Bedrock Runtime Converse API (aiobotocore)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import attrs

from agentrunner.interfaces import CompletionRequest, CompletionResponse, ProviderError
from agentrunner_bedrock.converse import StreamAssembler, converse_params, model_family, parse_answer
from agentrunner_bedrock.errors import PREFIX, provider_error, safe_url

DEFAULT_REGION = "us-east-1"

#: Connections kept open per client; botocore's default (10) would queue a busy worker's executions.
MAX_POOL_CONNECTIONS = 50

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")

#: Model families whose Converse API takes no system prompt and no tools (AWS "supported models" table).
_NO_SYSTEM_NO_TOOLS = ("amazon.titan-text-", "mistral.mistral-7b-instruct", "mistral.mixtral-8x7b-instruct")

#: Families whose temperature must stay within 0..1 (Bedrock answers ValidationException above).
_TEMPERATURE_UP_TO_ONE = frozenset({"anthropic", "amazon"})

_END = object()

#: botocore's data loader, shared by every session: the service model is parsed once per process.
_loader: Any = None


@attrs.define
class _OpenClient:
    """A bedrock-runtime client, kept open in the event loop that created it."""

    loop: asyncio.AbstractEventLoop
    client: Any
    stack: contextlib.AsyncExitStack
    endpoint: str


class BedrockProvider:
    """Sends agents' conversations to Bedrock with ``converse`` / ``converse_stream``.

    One HTTP attempt per call (botocore's retries are off: ``retry_config`` is the only retry
    layer); clients are opened lazily in the running loop, one per region, endpoint,
    credentials and timeout, and closed by ``aclose``.
    """

    name = "bedrock"
    supported_options = frozenset({
        "provider", "model", "temperature", "max_tokens", "top_p", "top_k", "timeout", "region", "endpoint_url",
        "base_url",
    })

    def __init__(self) -> None:
        self._settings: Any = None
        self._session: Any = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[tuple, _OpenClient] = {}
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def configure(self, settings: Any) -> None:
        """Remember the settings (AWS keys, region, endpoint); nothing is opened before a request."""
        self._settings = settings

    # --- validation ------------------------------------------------------------------------

    def validate(self, llm_config: Any) -> list[tuple[str, str]]:
        """Values Bedrock would refuse, found before any request."""
        problems: list[tuple[str, str]] = []
        vendor, _ = model_family(llm_config.model)
        if llm_config.top_k is not None and vendor and vendor != "anthropic":
            problems.append(("top_k", f"only Anthropic models on Bedrock accept top_k; model {llm_config.model} "
                                      "does not (leave top_k out)"))
        if vendor in _TEMPERATURE_UP_TO_ONE and llm_config.temperature > 1.0:
            problems.append(("temperature", f"must be between 0.0 and 1.0 for {vendor} models on Bedrock "
                                            f"(got {llm_config.temperature:g})"))
        if llm_config.region is not None and not _REGION.match(llm_config.region):
            problems.append(("region", f"not an AWS region name like us-east-1 (got {llm_config.region!r})"))
        if llm_config.endpoint_url and llm_config.base_url and llm_config.endpoint_url != llm_config.base_url:
            problems.append(("base_url", "conflicts with endpoint_url: both set the Bedrock endpoint, set only one"))
        for field in ("endpoint_url", "base_url"):
            url = getattr(llm_config, field)
            if url and safe_url(url) != url:
                problems.append((field, "must not hold a user name or password: Bedrock requests are signed with "
                                        "the AWS keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"))
        return problems

    def validate_agent(self, agent: Any) -> list[tuple[str, str]]:
        """Models whose Converse API takes no system prompt or no tools make the agent unusable."""
        model = agent.llm_config.model
        _, base = model_family(model)
        if not base.startswith(_NO_SYSTEM_NO_TOOLS):
            return []
        problems: list[tuple[str, str]] = []
        if agent.system_prompt:
            problems.append(("system_prompt", f"model {model} does not accept a system prompt in the Bedrock "
                                              "Converse API; choose a model that does (e.g. "
                                              "anthropic.claude-3-haiku-20240307-v1:0)"))
        if agent.tools:
            problems.append(("tools", f"model {model} does not accept tools in the Bedrock Converse API; remove "
                                      "the tools or choose a model with tool use (e.g. "
                                      "anthropic.claude-3-haiku-20240307-v1:0)"))
        return problems

    # --- calls -----------------------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """One ``converse`` call: the whole answer with its tool calls and usage."""
        params = self._params(request)
        opened = await self._client(request.llm_config)
        answer = await self._attempt(opened.client.converse(**params), opened.endpoint, request.llm_config.timeout)
        return parse_answer(answer, request.llm_config.model)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | CompletionResponse]:
        """One ``converse_stream`` call: text deltas as they arrive, then the whole answer."""
        llm = request.llm_config
        params = self._params(request)
        opened = await self._client(llm)
        answer = await self._attempt(opened.client.converse_stream(**params), opened.endpoint, llm.timeout)
        events = answer["stream"]
        assembler = StreamAssembler(model=llm.model)
        finished = False
        try:
            iterator = aiter(events)
            while True:
                event = await self._attempt(anext(iterator, _END), opened.endpoint, llm.timeout)
                if event is _END:
                    break
                delta = assembler.feed(event)
                if delta:
                    yield delta
            finished = True
        finally:
            if not finished:  # a failed or abandoned stream: drop its connection rather than reuse it
                events.close()
        yield assembler.response()

    async def aclose(self) -> None:
        """Close the clients opened in this event loop; forget those of loops that are gone."""
        loop = asyncio.get_running_loop()
        clients, self._clients = self._clients, {}
        for opened in clients.values():
            if opened.loop is loop:
                await opened.stack.aclose()
        self._session = self._session_loop = None

    # --- helpers ---------------------------------------------------------------------------

    def _params(self, request: CompletionRequest) -> dict[str, Any]:
        try:
            return converse_params(request)
        except ValueError as exc:
            raise ProviderError(f"{PREFIX}{exc}") from None

    async def _attempt(self, awaitable: Awaitable[Any], endpoint: str, timeout: float) -> Any:
        """Await one SDK step; its failure becomes a ``ProviderError`` raised with no SDK exception attached.

        The error is raised outside the ``except`` block, so neither ``__cause__`` nor
        ``__context__`` carries the SDK's exception (and the request it holds) into a log.
        """
        error: ProviderError | None = None
        try:
            return await awaitable
        except Exception as exc:
            error = provider_error(exc, endpoint=endpoint, timeout=timeout, secrets=self._secrets())
            if error is None:
                raise
        raise error

    def _setting(self, name: str, default: Any = None) -> Any:
        return getattr(self._settings, name, default) if self._settings is not None else default

    def _credentials(self) -> dict[str, str]:
        """Keys from the settings, or {} to let botocore's credential chain find them."""
        key_id = _reveal(self._setting("aws_access_key_id"))
        secret = _reveal(self._setting("aws_secret_access_key"))
        if key_id and secret:
            credentials = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
            token = os.environ.get("AWS_SESSION_TOKEN")
            if token and os.environ.get("AWS_ACCESS_KEY_ID") == key_id:  # temporary keys from the environment
                credentials["aws_session_token"] = token
            return credentials
        if key_id or secret:
            missing, present = (("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID") if key_id
                                else ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
            raise ProviderError(f"{PREFIX}{missing} is not set ({present} is): set both, or neither to use the "
                                "AWS credential chain (environment, shared files, instance role)")
        return {}

    def _secrets(self) -> list[str]:
        """Every credential value a message must not show."""
        values = [_reveal(self._setting("aws_access_key_id")), _reveal(self._setting("aws_secret_access_key")),
                  os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")]
        return [value for value in values if value]

    async def _client(self, llm: Any) -> _OpenClient:
        """The open client for this call's region, endpoint, credentials and timeout, in this loop."""
        loop = asyncio.get_running_loop()
        region = llm.region or self._setting("aws_region") or DEFAULT_REGION
        endpoint = llm.endpoint_url or llm.base_url or self._setting("aws_bedrock_endpoint") or None
        if endpoint:  # requests are signed with AWS keys: a password in the URL would only leak into logs
            endpoint = safe_url(endpoint)
        credentials = self._credentials()
        fingerprint = hashlib.sha256("\0".join(sorted(credentials.values())).encode()).hexdigest()
        key = (loop, region, endpoint, fingerprint, llm.timeout)
        opened = self._clients.get(key)
        if opened is not None:
            return opened
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            opened = self._clients.get(key)
            if opened is None:
                self._forget_closed_loops()
                opened = await self._open(loop, region, endpoint, credentials, llm.timeout)
                self._clients[key] = opened
        return opened

    def _forget_closed_loops(self) -> None:
        """Clients of a closed loop cannot be used or closed any more: only forgotten."""
        self._clients = {key: opened for key, opened in self._clients.items() if not opened.loop.is_closed()}

    async def _open(self, loop: asyncio.AbstractEventLoop, region: str, endpoint: str | None,
                    credentials: dict[str, str], timeout: float) -> _OpenClient:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        if self._session is None or self._session_loop is not loop:
            self._session, self._session_loop = _new_session(get_session), loop
        config = AioConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=timeout,
            read_timeout=timeout,
            max_pool_connections=MAX_POOL_CONNECTIONS,
            user_agent_extra="agentrunner-bedrock",
        )
        shown = endpoint or f"https://bedrock-runtime.{region}.amazonaws.com"
        stack = contextlib.AsyncExitStack()
        creator = self._session.create_client("bedrock-runtime", region_name=region, endpoint_url=endpoint,
                                              config=config, **credentials)
        client = await self._attempt(stack.enter_async_context(creator), shown, timeout)
        return _OpenClient(loop=loop, client=client, stack=stack, endpoint=shown)


def _new_session(get_session: Any) -> Any:
    """An aiobotocore session (credential lookups belong to one loop) using the shared data loader."""
    global _loader
    session = get_session()
    if _loader is None:
        _loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _loader)
    return session


def _reveal(value: Any) -> str | None:
    """A setting's secret value (``Secret`` or plain str), or None."""
    if value is None:
        return None
    reveal = getattr(value, "get_secret_value", None)
    return (reveal() if callable(reveal) else str(value)) or None
