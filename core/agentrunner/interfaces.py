"""The public interfaces plugins implement and the values that cross them.

Everything a plugin needs from the core is here or in ``agentrunner`` itself;
the default plugins inside the core import nothing else (a test checks it), so
any of them could move to its own distribution unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs

# --- Messages exchanged with a provider -------------------------------------


@attrs.frozen
class ToolCall:
    """A model's request to run one tool with JSON arguments."""

    id: str
    name: str
    arguments: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Message:
    """One chat message. ``role`` is ``user``, ``assistant`` or ``tool``.

    An assistant message may carry ``tool_calls``; a ``tool`` message answers
    the call named by ``tool_call_id`` (``is_error`` when the tool failed).
    """

    role: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    is_error: bool = False


@attrs.frozen
class ToolDefinition:
    """A tool offered to the model: its name, what it does, its JSON Schema."""

    name: str
    description: str
    parameters: Mapping[str, Any] = attrs.field(factory=lambda: {"type": "object", "properties": {}})


@attrs.frozen
class Usage:
    """Token usage of one or more model calls."""

    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens)


@attrs.frozen
class CompletionRequest:
    """What the runtime asks a provider: the agent's ``llm_config`` and a conversation."""

    llm_config: Any  # agentrunner.schema.LLMConfig
    system_prompt: str
    messages: Sequence[Message]
    tools: Sequence[ToolDefinition] = ()


@attrs.frozen
class CompletionResponse:
    """A provider's answer: text, tool calls (possibly both), usage and the model that answered."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = Usage()
    model: str = ""
    finish_reason: str = "stop"


# --- Components ---------------------------------------------------------------


@runtime_checkable
class Provider(Protocol):
    """An LLM provider, registered with ``register_providers``.

    ``supported_options`` names the ``llm_config`` fields the provider honours;
    ``agentrunner validate`` reports any other field an agent sets. ``stream``
    yields text deltas and is optional.
    """

    name: ClassVar[str] | str
    supported_options: frozenset[str]

    async def complete(self, request: CompletionRequest) -> CompletionResponse: ...


class StreamingProvider(Provider, Protocol):
    """A provider that can also stream its answer as text deltas."""

    def stream(self, request: CompletionRequest) -> AsyncIterator[str]: ...


@runtime_checkable
class ToolType(Protocol):
    """A kind of tool (``function``, ``api``, ``mcp``), registered with ``register_tool_types``.

    ``required_fields`` lists the fields of a tool entry this type needs (for
    validation); ``validate(tool)`` may return further problems as
    ``(field, message)`` pairs.
    """

    name: ClassVar[str] | str
    required_fields: tuple[str, ...]

    def validate(self, tool: Any) -> list[tuple[str, str]]: ...


@runtime_checkable
class ExecutionMode(Protocol):
    """How an agent runs a task, registered with ``register_execution_modes``.

    ``execute(ctx)`` returns the execution's result (a str or JSON-able value).
    A mode may own a YAML section: ``config_section`` names it and
    ``config_type`` is the attrs class it is structured into (validated like
    the built-in ones).
    """

    name: ClassVar[str] | str

    async def execute(self, ctx: Any) -> Any: ...


class Gateway(Protocol):
    """Receives outside traffic (Slack, …) and publishes it as events."""

    name: ClassVar[str] | str

    async def start(self, platform: Any) -> None: ...

    async def stop(self) -> None: ...


class BackendFactory(Protocol):
    """An event bus, state store or cache backend, registered by name.

    ``distribution`` is the pip distribution that provides it (shown when it
    is selected but missing); calling the factory with the settings opens
    nothing yet — ``await backend.start()`` does.
    """

    name: ClassVar[str] | str

    def __call__(self, settings: Any) -> Any: ...


EventBusFactory = BackendFactory
StateStoreFactory = BackendFactory
CacheFactory = BackendFactory


def mode_config_section(mode: Any) -> tuple[str | None, type | None]:
    """The YAML section an execution mode owns and its attrs class, or ``(None, None)``."""
    return getattr(mode, "config_section", None), getattr(mode, "config_type", None)
