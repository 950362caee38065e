"""The public interfaces plugins implement and the values that cross them.

Everything a plugin needs from the core is here or in ``agentrunner`` itself;
the default plugins inside the core import nothing else (a test checks it), so
any of them could move to its own distribution unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
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

    ``complete(request)`` sends ``request.system_prompt``, ``request.messages``
    and ``request.tools`` with the ``llm_config`` fields the agent set, and
    returns the answer in the common representation (text, ``ToolCall``s with
    their JSON arguments, ``Usage``, the model that answered). Failures raise
    ``ProviderError``: ``retryable`` for 429, 5xx, connection errors and
    timeouts (with ``retry_after`` when the server sent ``Retry-After``), not
    retryable for the rest; the message says what happened and never holds a
    credential. A provider makes one attempt per call: the agent's
    ``retry_config`` is the only retry layer, so SDK retries are turned off.

    Optional members, looked up with ``getattr``:

    - ``supported_options``: the ``llm_config`` fields the provider honours;
      ``agentrunner validate`` reports any other field an agent sets.
    - ``validate(llm_config)`` and ``validate_agent(agent)``: further problems as
      ``(field, message)`` pairs (the field relative to ``llm_config``, or to the
      agent for ``validate_agent``), reported as errors.
    - ``configure(settings)``: called once with the platform's settings before any
      request (API keys, base URLs); it must not open connections.
    - ``stream(request)``: an async iterator of the answer's text deltas (``str``)
      as they arrive, ending with one ``CompletionResponse`` for the whole
      answer (its text, tool calls and usage).
    - ``aclose()``: called when the platform stops; closes pooled connections.
    """

    name: ClassVar[str] | str

    async def complete(self, request: CompletionRequest) -> CompletionResponse: ...


class StreamingProvider(Provider, Protocol):
    """A provider that can also stream: text deltas, then the whole ``CompletionResponse``."""

    def stream(self, request: CompletionRequest) -> AsyncIterator[str | CompletionResponse]: ...


class ToolError(Exception):
    """A tool failed in a way the model should hear about: the message goes back to it as an error result.

    Any other exception from a tool is reported to the model the same way (with
    its type); the execution goes on either way. Never put a credential in it.
    """


@attrs.frozen
class Tool:
    """One tool offered to the model for an execution: its definition and how to run it.

    ``call(arguments)`` gets the model's JSON arguments and returns the result:
    a str, or any JSON-able value (sent to the model as JSON). ``timeout`` (seconds)
    bounds one call; the tool-calling loop enforces it.
    """

    definition: ToolDefinition
    call: Callable[[Mapping[str, Any]], Awaitable[Any]]
    timeout: float | None = None


@runtime_checkable
class ToolType(Protocol):
    """A kind of tool (``function``, ``api``, ``mcp``), registered with ``register_tool_types``.

    ``required_fields`` lists the fields of a tool entry (``agentrunner.schema.ToolConfig``)
    this type needs; ``validate(tool)`` may return further problems as ``(field, message)``
    pairs. ``open(tool)`` returns the ``Tool``s one entry offers an execution (an MCP
    server offers several); it is called for each execution that uses the agent, so
    anything costly (connections, sessions, tool lists) is pooled by the tool type.

    Optional, looked up with ``getattr``: ``configure(settings)`` (before any
    ``open``; opens nothing) and ``aclose()`` (at platform stop: close pooled
    connections and sessions, stop child processes).
    """

    name: ClassVar[str] | str
    required_fields: tuple[str, ...]

    def validate(self, tool: Any) -> list[tuple[str, str]]: ...

    async def open(self, tool: Any) -> Sequence[Tool]: ...


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
    """Receives outside traffic (Slack, …) and publishes it as events, registered with ``register_gateways``.

    ``start(platform)`` runs when the SlackGateway service starts (port ``SLACK_GATEWAY_PORT``) and
    ``stop()`` when it stops. Optional: ``routes(app)`` adds the gateway's routes to that service's
    aiohttp application, and ``public_paths`` names those that authenticate by their own means (a
    signature) instead of the API key. Outside traffic becomes events with
    ``platform.orchestrator.publish_event(routing_key, payload, task_input=..., idempotency_key=...)``;
    results come back as ``agent.execution.completed`` / ``failed`` events, and a question for a human
    as ``agent.execution.awaiting_input`` (answer it with ``platform.orchestrator.provide_input``).
    """

    name: ClassVar[str] | str

    async def start(self, platform: Any) -> None: ...

    async def stop(self) -> None: ...


class BackendFactory(Protocol):
    """An event bus, state store or cache backend, registered by name.

    Calling the factory with the settings builds the backend without opening
    anything; ``await backend.start()`` connects and ``await backend.stop()``
    closes. ``await backend.health()`` raises when the backend is unusable.
    """

    name: ClassVar[str] | str

    def __call__(self, settings: Any) -> Any: ...


EventBusFactory = BackendFactory
StateStoreFactory = BackendFactory
CacheFactory = BackendFactory


# --- Backends -------------------------------------------------------------------


@attrs.frozen
class Event:
    """A message on the event bus.

    ``headers`` carry what travels with a message: ``trace_id``, the chain
    ``depth`` and ``origin_agent`` of an event caused by an execution, and the
    bus's ``delivery_count`` (1 on first delivery).
    """

    routing_key: str
    payload: Any
    headers: Mapping[str, Any] = attrs.field(factory=dict)
    message_id: str = ""


EventHandler = Callable[[Event], Awaitable[None]]


class Subscription(Protocol):
    """A consumer on a named queue; its bindings can change while it runs."""

    async def bind(self, pattern: str) -> None: ...

    async def unbind(self, pattern: str) -> None: ...

    async def cancel(self) -> None: ...


class EventBus(Protocol):
    """Topic routing with the matching rules of a RabbitMQ topic exchange.

    Queues are named; every message published is copied to each queue with a
    binding pattern that matches its routing key, and consumers of one queue
    compete for its messages. A handler that returns acknowledges the message;
    one that raises has it delivered again, up to ``max_deliveries`` times, then
    dead-lettered. ``publish`` returns once the bus has accepted the message.
    A bus whose messages never leave the process sets ``process_local = True``.
    """

    name: ClassVar[str] | str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> None: ...

    async def publish(self, routing_key: str, payload: Any, headers: Mapping[str, Any] | None = None, *,
                      persistent: bool = True, also: Sequence[str] = ()) -> None:
        """``persistent=False``: a notification that has another way to arrive, which the bus may lose
        when it restarts (RabbitMQ: a transient message, never written to disk). ``also``: more routing
        keys the one message is routed by; a queue any of the keys match gets it once, and it arrives
        with ``routing_key`` (RabbitMQ: the BCC header, which the broker removes)."""

    async def subscribe(
        self, queue: str, patterns: Sequence[str], handler: EventHandler, *, concurrency: int = 1,
        exclusive: bool = False, single_active: bool = False, prefetch: int | None = None,
        auto_ack: bool = False,
    ) -> Subscription:
        """Consume ``queue`` (created if missing, bound to ``patterns``) with ``concurrency``
        handlers at a time. An ``exclusive`` queue belongs to this subscription and is
        deleted when it is cancelled; other queues keep their messages while nobody consumes.
        ``single_active``: of all the subscriptions to the queue, in every process, one at a
        time receives its messages, and handles them one by one in order (RabbitMQ's
        single active consumer) — for tasks that must not overtake each other. ``prefetch``: at most
        this many messages delivered to the subscription and not yet handled (None: the bus's
        default); with ``prefetch=concurrency`` a process only takes what it can start now.
        ``auto_ack``: a message is settled as it is delivered, so a handler that raises does not get it
        again — for notifications that have another way to arrive (RabbitMQ: no acknowledgement frames)."""

    async def queue_depth(self, queue: str) -> int: ...


class StateStore(Protocol):
    """Executions, agent state, schedules and dead letters (``agentrunner.records``).

    Writes on the task path must not serialise the platform: a backend batches
    them or runs them concurrently. Every method may raise ``StoreUnavailable``.
    """

    name: ClassVar[str] | str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> None: ...

    # executions
    async def create_execution(self, execution: Any) -> tuple[Any, bool]:
        """Store a new execution; with an idempotency key already used by the same agent,
        return ``(the first execution, False)`` instead (enforced by a unique constraint)."""

    async def get_execution(self, execution_id: str) -> Any | None: ...

    async def update_execution(self, execution_id: str, *, expect_status: Sequence[str] | None = None,
                               insert: Any | None = None, **fields: Any) -> bool:
        """Set ``fields``; with ``expect_status`` only when the current status is one of them.
        Returns whether a row changed (a compare-and-set for status transitions).

        ``insert`` (an execution with this id and no idempotency key): when no execution has this id,
        store ``insert`` with ``fields`` applied instead, and return True — atomically, so that a
        concurrent ``create_execution`` of the same execution either comes first (and this updates
        it) or finds it stored. With ``expect_status=()`` it only inserts: a stored execution is left
        as it is (and False returned). The orchestrator records a task submitted by a waiting caller
        this way: one write when it ends, none when it is submitted (see ``Orchestrator.submit``)."""

    async def claim_execution(self, execution_id: str, started_at: Any, *, insert: Any | None = None) -> Any | None:
        """Start an attempt: if the status is ``queued`` or ``running`` (a crashed attempt), set
        ``running``, ``started_at``, clear ``error_message``, add one to ``attempts``, and return the
        updated execution; otherwise (finished, cancelled, unknown) return None. One round trip.

        ``insert`` (the execution as submitted): when no execution has this id, store it first, then
        claim it, atomically."""

    async def list_executions(self, *, agent_name: str | None = None, status: str | None = None,
                              limit: int = 50, cursor: str | None = None) -> tuple[list[Any], str | None]:
        """Newest first; returns the page and the cursor of the next page (None at the end)."""

    async def executions_with_status(self, statuses: Sequence[str]) -> list[Any]:
        """Executions in these statuses (recovery after a restart)."""

    # agent state
    async def get_state(self, agent_name: str) -> Any | None: ...

    async def put_state(self, state: Any, *, expect_version: int | None = None) -> Any:
        """Write an agent's state, bumping its version; with ``expect_version`` refuse
        (``StateConflict``) when the stored version differs."""

    async def delete_state(self, agent_name: str) -> bool: ...

    # schedules
    async def upsert_schedule(self, schedule: Any) -> None: ...

    async def get_schedule(self, name: str) -> Any | None: ...

    async def list_schedules(self) -> list[Any]: ...

    async def delete_schedule(self, name: str) -> bool: ...

    async def claim_schedule_tick(self, name: str, fire_time: Any) -> bool:
        """True for exactly one caller per (schedule, fire time), across processes."""

    # dead letters
    async def add_dead_letter(self, item: Any) -> None: ...

    async def list_dead_letters(self) -> list[Any]: ...

    async def get_dead_letter(self, item_id: str) -> Any | None: ...

    async def delete_dead_letter(self, item_id: str) -> bool: ...


class Cache(Protocol):
    """A key/value cache with per-key TTLs; values are JSON-able. Misses return None."""

    name: ClassVar[str] | str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> None: ...

    async def get(self, key: str) -> Any | None: ...

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...


class BusUnavailable(Exception):
    """The event bus cannot take the message now (broker unreachable); the caller may try again later."""


class MessageRejected(BusUnavailable):
    """The bus refused the message: its queue is full (e.g. RabbitMQ ``x-overflow: reject-publish``)."""


class StoreUnavailable(Exception):
    """The state store cannot be reached; the operation may be retried later."""


class StateConflict(Exception):
    """An agent's state changed since it was read (optimistic concurrency)."""


def mode_config_section(mode: Any) -> tuple[str | None, type | None]:
    """The YAML section an execution mode owns and its attrs class, or ``(None, None)``."""
    return getattr(mode, "config_section", None), getattr(mode, "config_type", None)


class ProviderError(Exception):
    """A provider call failed. ``retryable`` errors (429, 5xx, connection, timeout) are
    retried with the agent's ``retry_config``, waiting at least ``retry_after`` seconds
    when the provider said so; the others end the execution ``failed``.
    The message must never contain a credential.
    """

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
