"""The AgentOrchestrator: from a submitted task to a stored result.

A task is recorded as an execution (``queued``), published on the event bus
under its mode's routing key, consumed by a worker slot, run by its execution
mode, and its result or error stored; ``agent.execution.completed`` or
``agent.execution.failed`` is published. The store is the source of truth: a
message only names an execution, so a redelivered or recovered message never
runs a finished execution again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs

from agentrunner import logs
from agentrunner.eventloop import start_eagerly
from agentrunner.health import HealthMonitor
from agentrunner.interfaces import (
    BusUnavailable,
    CompletionRequest,
    CompletionResponse,
    Event,
    Message,
    ProviderError,
    Tool,
    ToolCall,
    ToolDefinition,
    ToolError,
    Usage,
)
from agentrunner.metrics import Metrics
from agentrunner.records import DeadLetter, Execution, new_id, utcnow
from agentrunner.streams import ExecutionStream, StreamHub
from agentrunner.topics import TopicTrie

log = logging.getLogger("agentrunner.orchestrator")

#: An event chain deeper than this is dropped (DESIGN.md: the loop guard).
MAX_CHAIN_DEPTH = 8
#: internal routing keys ``agentrunner.done.{process}``: an execution the process submitted finished (or waits
#: for a human)
DONE_PREFIX = "agentrunner.done"
#: internal routing key of answers to a human question, from the process that got them to the one waiting
INPUT_KEY = "agentrunner.input"
#: How many finished executions each process remembers for wait() (bounded: memory stays flat).
FINISHED_KEPT = 1024
EVENTS_QUEUE = "agentrunner.events"
#: A task published with its execution (a first delivery) runs at once and is claimed (status ``running``
#: in the store) only if it takes longer than this many seconds: a quick one is recorded with a single write.
CLAIM_AFTER = 0.05
#: A task submitted by a caller that waits for it (``submit(record_later=True)``, the HTTP API's ``wait``) is
#: not stored when submitted: it travels whole, and the process that runs it records it once, when it ends
#: (or at its claim, CLAIM_AFTER into a longer run). Until it is stored no one else knows its id; the
#: submitting process stores it anyway once it has waited this many seconds without an answer, so an
#: execution queued or running for longer is listed, and before it answers a caller whose wait ran out.
RECORD_AFTER = 0.05
#: The header of a task whose execution may not be stored yet (the consumer stores it by its first write).
UNRECORDED_HEADER = "unrecorded"
#: The header of a completion event that carries the finished execution to the process that submitted it
#: (the event is routed to that process too, so one message is both): JSON text of at most
#: NOTICE_HEADER_MAX bytes, which fits in the smallest frame RabbitMQ allows (4096, RABBITMQ_FRAME_MAX)
#: with the other headers; a larger execution goes in a notice of its own.
EXECUTION_HEADER = "agentrunner_execution"
NOTICE_HEADER_MAX = 3000


class AgentNotFound(LookupError):
    """No agent of that name is loaded."""


class ExecutionNotFound(LookupError):
    """No execution with that id exists."""


class InvalidTransition(Exception):
    """The execution's status does not allow the operation (e.g. cancelling a finished one)."""


class DeadLetterNotFound(LookupError):
    """No dead letter with that id exists."""


class ShuttingDown(Exception):
    """The orchestrator has stopped taking new tasks."""


class ToolLoopError(Exception):
    """The tool-calling loop gave up: too many steps, or the same call again and again. Not retried."""

    retryable = False


class BudgetExceeded(Exception):
    """An execution spent its token or tool-call budget (EXECUTION_MAX_TOKENS, EXECUTION_MAX_TOOL_CALLS). Not
    retried: a runaway agent stops itself."""

    retryable = False


class ToolOpenError(Exception):
    """A tool entry could not be made ready (e.g. its MCP server is down); the task may be retried."""


def _inserting(insert: Execution | None) -> dict[str, Any]:
    """The ``insert`` argument of a store write, given only when there is one (a store that never gets a
    task submitted with ``record_later`` need not take it)."""
    return {"insert": insert} if insert is not None else {}


def _answer_none(future: asyncio.Future, *_: Any) -> None:
    if not future.done():
        future.set_result(None)


async def _ended_within(task: asyncio.Future, seconds: float) -> bool:
    """Whether ``task`` has ended ``seconds`` from now at the latest (it is left running if not).

    What ``asyncio.wait({task}, timeout=seconds)`` does for one task, with a future, a callback and a
    timer instead of sets and a callback per waited-for task (this runs once per execution).
    """
    if task.done():
        return True
    waiter = asyncio.get_running_loop().create_future()
    task.add_done_callback(functools.partial(_answer_none, waiter))
    timer = asyncio.get_running_loop().call_later(seconds, _answer_none, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
    return task.done()


class _Slot:
    """The worker slot of one task handler: given back when the execution ends (or while it waits for a
    child or an answer, then taken again); never given back twice, so the slots cannot grow."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self.held = False

    async def acquire(self) -> None:
        await self._semaphore.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._semaphore.release()

    @contextlib.asynccontextmanager
    async def released(self) -> AsyncIterator[None]:
        """Give the slot back for the duration (a parent waiting for its child must not starve it)."""
        if not self.held:
            yield
            return
        self.release()
        try:
            yield
        finally:
            await self.acquire()  # if this is cancelled, the slot stays given back: nothing to release


class RegistrationTimeout(Exception):
    """Registering the agents on the event bus (their queues, event bindings, restored state and
    ``agent.registered``) took longer than ``AGENT_REGISTRATION_TIMEOUT``."""


class ExecutionFailed(Exception):
    """A sub-execution started with ``ctx.submit`` did not complete."""

    def __init__(self, execution: Execution) -> None:
        super().__init__(f"execution {execution.execution_id} of agent {execution.agent_name!r} "
                         f"ended {execution.status}: {execution.error_message or ''}".rstrip(": "))
        self.execution = execution


def task_routing_key(mode: str, agent_name: str) -> str:
    """The reference's routing key for a task of ``mode`` (custom modes: ``{mode}.task.submitted``)."""
    if mode in ("continuous", "scheduled"):
        return f"{mode}.task.{agent_name}"
    return f"{mode}.task.submitted"


#: Bounds of the period at which idle agents are looked for (a quarter of the shortest idle timeout).
IDLE_CHECK_MIN, IDLE_CHECK_MAX = 0.05, 30.0

#: Modes whose tasks of one agent run one at a time, in order, on a queue of the agent's own.
ORDERED_MODES = frozenset({"continuous"})


def task_binding(mode: str) -> str:
    """The binding pattern of a mode's task queue."""
    return f"{mode}.task.*" if mode in ("continuous", "scheduled") else f"{mode}.task.submitted"


@attrs.define
class RetryPolicy:
    """An agent's ``retry_config``: how many times, and how long to wait before each retry."""

    max_retries: int
    retry_delay_seconds: float
    exponential_backoff: bool = True
    backoff_multiplier: float = 2.0
    max_retry_delay: float = 60.0

    @classmethod
    def of(cls, agent: Any) -> RetryPolicy:
        config = agent.retry_config
        return cls(config.max_retries, config.retry_delay_seconds, config.exponential_backoff,
                   config.backoff_multiplier, config.max_retry_delay)

    def delay(self, retry: int, *, jitter: bool = False, at_least: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), capped by ``max_retry_delay``."""
        delay = self.retry_delay_seconds
        if self.exponential_backoff:
            delay *= self.backoff_multiplier ** (retry - 1)
        delay = min(delay, self.max_retry_delay)
        if jitter:  # spread retries of many callers hitting one rate limit ("equal jitter")
            delay = delay / 2 + random.uniform(0, delay / 2)
        if at_least is not None:
            delay = max(delay, at_least)
        return delay


@attrs.define
class TaskView:
    """What ``ctx.task`` shows a mode."""

    execution_id: str
    input: Any
    data: dict[str, Any]
    trace_id: str
    attempt: int
    parent_execution_id: str | None


async def _streamed(provider: Any, request: CompletionRequest, stream: ExecutionStream) -> CompletionResponse:
    """One streamed model call: each text delta goes to the readers; the provider's last item is the answer."""
    response = None
    text: list[str] = []
    async for item in provider.stream(request):
        if isinstance(item, CompletionResponse):
            response = item
        elif item:
            text.append(item)
            stream.push("delta", {"text": item})
    if response is None:  # a provider that streams text only
        response = CompletionResponse(text="".join(text))
    return response


class ExecutionContext:
    """The ``ctx`` an execution mode receives (DESIGN.md: custom execution modes)."""

    def __init__(self, orchestrator: Orchestrator, agent: Any, execution: Execution, state: dict[str, Any]):
        self._orchestrator = orchestrator
        self._execution = execution
        self.agent = agent
        self.task = TaskView(execution.execution_id, execution.input, execution.data, execution.trace_id,
                             execution.attempts, execution.parent_execution_id)
        self.state = state
        self.usage = Usage()
        self.model = ""
        self.details: dict[str, Any] = {}
        self._tools: dict[str, Tool] | None = None
        #: the store's claim of this attempt: None until one is made (a task run before it is claimed)
        self._claim: asyncio.Future | None = None
        #: the worker slot this execution runs in, given back once it has ended (None: not run from one)
        self._slot: _Slot | None = None
        #: the execution as submitted, when it may not be stored yet: its claim or its end stores it
        self._insert: Execution | None = None

    async def _claimed(self) -> bool:
        """Whether this attempt holds the execution (``running`` in the store), claiming it now if it
        ran unclaimed so far; False when it may not go on (cancelled, or finished by another delivery)."""
        if self._claim is None:
            execution = self._execution
            self._claim = asyncio.ensure_future(
                self._orchestrator.store.claim_execution(execution.execution_id, execution.started_at,
                                                         **_inserting(self._insert)))
        claimed = await asyncio.shield(self._claim)  # ask() and the time limit may both be waiting for it
        if claimed is None:
            return False
        self._execution.attempts = claimed.attempts
        return True

    def _slot_released(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Without this execution's worker slot for the duration (it waits for a child or an answer)."""
        return self._slot.released() if self._slot is not None else contextlib.nullcontext()

    async def complete(self, messages: list[Message], **overrides: Any) -> CompletionResponse:
        """Ask the agent's own LLM; provider errors worth retrying follow the agent's retry policy.

        An agent with ``tools`` runs the tool-calling loop: its tools are offered,
        the ones the model asks for run (concurrently within a turn) and their
        results go back, until the model answers. ``tools=`` offers exactly the
        given definitions instead, for a single call with no loop; other keywords
        override ``llm_config`` fields for one call with no loop (e.g.
        ``response_format={"type": "json_object"}`` for a structured answer).
        """
        llm_overrides = {key: value for key, value in overrides.items() if key != "tools"}
        if llm_overrides:  # e.g. response_format for one structured answer
            return await self._complete_once(list(messages), tuple(overrides.get("tools", ())), llm_overrides)
        if "tools" in overrides or not self.agent.tools:
            return await self._complete_once(list(messages), tuple(overrides.get("tools", ())))
        return await self._tool_loop(list(messages))

    def agents(self) -> list[str]:
        """The names of the agents loaded now (collaborators a mode may ``submit`` to), sorted."""
        return sorted(self._orchestrator.config.agents)

    async def _tool_loop(self, conversation: list[Message]) -> CompletionResponse:
        tools = await self._open_tools()
        definitions = tuple(tool.definition for tool in tools.values())
        settings = self._orchestrator.settings
        max_steps, repeat_limit = settings.agent_max_tool_steps, settings.agent_tool_repeat_limit
        last_call, repeats = None, 0
        for _ in range(max_steps):
            response = await self._complete_once(list(conversation), definitions)  # a provider may keep it
            if not response.tool_calls:
                return response
            for call in response.tool_calls:
                signature = (call.name, json.dumps(call.arguments, sort_keys=True, default=str))
                repeats = repeats + 1 if signature == last_call else 1
                last_call = signature
                if repeats > repeat_limit:
                    raise ToolLoopError(
                        f"the model called tool {call.name!r} with the same arguments {repeat_limit + 1} times in "
                        f"a row; stopped (AGENT_TOOL_REPEAT_LIMIT={repeat_limit})")
            budget = settings.execution_max_tool_calls
            made = len(self.details.get("tool_calls", ()))
            if budget and made + len(response.tool_calls) > budget:  # none of this turn's calls runs
                raise BudgetExceeded(f"the model asked for {len(response.tool_calls)} more tool call(s) after {made}, "
                                     f"beyond the execution's budget of {budget} (EXECUTION_MAX_TOOL_CALLS)")
            conversation.append(Message("assistant", response.text, tool_calls=response.tool_calls))
            conversation.extend(await asyncio.gather(*(self._call_tool(tools, call) for call in response.tool_calls)))
        raise ToolLoopError(f"the model was still asking for tools after {max_steps} turns; stopped "
                            f"(AGENT_MAX_TOOL_STEPS={max_steps})")

    async def _open_tools(self) -> dict[str, Tool]:
        """Every tool of the agent's ``tools`` entries, by the name the model calls it (once per execution)."""
        if self._tools is not None:
            return self._tools
        registry = self._orchestrator.registry
        tools: dict[str, Tool] = {}
        owners: dict[str, str] = {}
        for entry in self.agent.tools:
            try:
                opened = await registry.tool_types[entry.type].open(entry)
            except (ToolError, OSError, TimeoutError) as exc:
                raise ToolOpenError(f"tool {entry.name!r} ({entry.type}) is not available: {exc}") from None
            for tool in opened:
                name = tool.definition.name
                if name in tools:
                    raise ToolOpenError(f"tools {owners[name]!r} and {entry.name!r} both offer a tool named {name!r}")
                tools[name], owners[name] = tool, entry.name
        self._tools = tools
        return tools

    async def _call_tool(self, tools: dict[str, Tool], call: ToolCall) -> Message:
        """Run one tool call; any failure becomes an error result for the model, never an exception."""
        started = time.perf_counter()
        tool = tools.get(call.name)
        error = None
        content = ""
        if tool is None:
            error = f"there is no tool named {call.name!r} (tools: {', '.join(sorted(tools)) or 'none'})"
        else:
            try:
                result = await asyncio.wait_for(tool.call(dict(call.arguments)), tool.timeout)
                content = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
            except TimeoutError:
                error = f"tool {call.name!r} did not answer within {tool.timeout:g} s"
            except ToolError as exc:
                error = str(exc) or f"tool {call.name!r} failed"
            except Exception as exc:  # a broken tool must not end the execution: the model hears about it
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        self._orchestrator.metrics.tool_called(call.name, error is None)
        self.details.setdefault("tool_calls", []).append({
            "name": call.name, "arguments": call.arguments, "duration_ms": duration_ms,
            "result_chars": len(content), "error": error})
        if error is not None:
            return Message("tool", error, tool_call_id=call.id, is_error=True)
        return Message("tool", content, tool_call_id=call.id)

    async def _complete_once(self, messages: list[Message], tools: tuple[ToolDefinition, ...],
                             llm_overrides: Mapping[str, Any] | None = None) -> CompletionResponse:
        orchestrator = self._orchestrator
        llm_config = self.agent.llm_config
        if llm_overrides:
            llm_config = attrs.evolve(llm_config, **llm_overrides,
                                      explicit_fields=llm_config.explicit_fields | frozenset(llm_overrides))
        provider = orchestrator.registry.providers[llm_config.provider]
        request = CompletionRequest(llm_config=llm_config, system_prompt=self.agent.system_prompt,
                                    messages=messages, tools=tools)
        policy = RetryPolicy.of(self.agent)
        stream = orchestrator.streams.get(self._execution.execution_id)
        if stream is not None and getattr(provider, "stream", None) is None:
            stream = None  # the answer reaches the reader whole, with ``done``
        attempt = 0
        while True:
            try:
                if stream is None:
                    response = await provider.complete(request)
                else:
                    response = await _streamed(provider, request, stream)
                break
            except ProviderError as exc:
                attempt += 1
                if not exc.retryable or attempt > policy.max_retries:
                    raise
                delay = policy.delay(attempt, jitter=True, at_least=exc.retry_after)
                log.warning("provider %s: %s; retry %d in %.1fs", provider.name, exc, attempt, delay,
                            extra=self._log_extra())
                if stream is not None:  # readers drop the partial answer of the failed attempt
                    stream.push("retry", {"attempt": attempt + 1, "error": str(exc)})
                await asyncio.sleep(delay)
        self.usage = self.usage + response.usage
        budget = orchestrator.settings.execution_max_tokens
        if budget and self.usage.input_tokens + self.usage.output_tokens > budget:
            raise BudgetExceeded(f"the execution used {self.usage.input_tokens + self.usage.output_tokens} LLM "
                                 f"tokens, more than its budget of {budget} (EXECUTION_MAX_TOKENS)")
        orchestrator.metrics.tokens_used(llm_config.provider, response.model or llm_config.model,
                                         response.usage.input_tokens, response.usage.output_tokens)
        self.model = response.model or self.model
        return response

    async def submit(self, agent_name: str, input: Any, data: Mapping[str, Any] | None = None) -> Any:
        """Run another agent as a child of this execution and return its result."""
        child, _ = await self._orchestrator.submit(agent_name, input, data=dict(data or {}),
                                                   parent_execution_id=self._execution.execution_id,
                                                   trace_id=self._execution.trace_id)
        # Waiting for a child must not hold a worker slot, or parents could starve their children.
        async with self._slot_released():
            finished = await self._orchestrator.wait(child.execution_id, None)
        if finished is None or finished.status != "completed":
            raise ExecutionFailed(finished or child)
        return finished.result

    async def ask(self, question: str) -> Any:
        """Ask a human: the execution waits in ``awaiting_input`` (its question in ``details``)
        until ``POST /executions/{id}/input`` answers, and the answer is returned.

        The wait holds no worker slot and counts towards the execution's time limit."""
        orchestrator = self._orchestrator
        execution_id = self._execution.execution_id
        if not await self._claimed():  # before the question is registered: nothing is left behind
            raise asyncio.CancelledError(f"execution {execution_id} was cancelled or finished elsewhere")
        answer = asyncio.get_running_loop().create_future()
        orchestrator._questions[execution_id] = answer
        self.details["question"] = question
        try:
            await orchestrator.store.update_execution(execution_id, expect_status=("running",),
                                                      status="awaiting_input", details=self.details)
            orchestrator._wake(await orchestrator.store.get_execution(execution_id))
            execution = self._execution
            await orchestrator._notify_submitter(execution_id, "awaiting_input")
            await orchestrator.bus.publish(  # a gateway shows the question where the task came from
                "agent.execution.awaiting_input",
                {"execution_id": execution_id, "agent_name": execution.agent_name, "question": question,
                 "trace_id": execution.trace_id}, orchestrator.event_headers(execution))
            async with self._slot_released():
                value = await answer
        finally:
            orchestrator._questions.pop(execution_id, None)
        self.details.setdefault("answers", []).append({"question": question, "answer": value})
        return value

    async def publish(self, routing_key: str, payload: Any) -> None:
        """Publish an event caused by this execution (it never triggers this agent again)."""
        await self._orchestrator.bus.publish(routing_key, payload, self._orchestrator.event_headers(self._execution))

    def _log_extra(self) -> dict[str, Any]:
        return {"trace_id": self._execution.trace_id, "execution_id": self._execution.execution_id,
                "agent": self.agent.name}


class Orchestrator:
    """Submits tasks, runs them in bounded worker slots, and records their outcome."""

    def __init__(self, *, settings: Any, registry: Any, config: Any, store: Any, bus: Any, state: Any,
                 slots: int | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.config = config
        self.store = store
        self.bus = bus
        self.state = state  # the StateManager
        self.slots = slots or max(1, settings.worker_processes * settings.worker_threads_per_process)
        if settings.task_routing_strategy == "weighted":  # a weight-3 process runs (and takes) three times as much
            self.slots *= settings.worker_weight
        self.metrics = Metrics()
        self.process_id = new_id()  # names this process in what it publishes about itself
        self._reply_to: dict[str, str] = {}  # execution being handled → the process that submitted it
        self.health = HealthMonitor(self, settings)
        self._slots = asyncio.Semaphore(self.slots)
        self.streams = StreamHub()
        self._waiters: dict[str, list[asyncio.Future]] = {}
        # Executions this process submitted and has not seen finish, and the last ones it saw finish:
        # wait() needs no store read for them (the common case: HTTP submit with `wait`).
        self._submitted: set[str] = set()
        # Submitted with record_later and not stored yet: id → (when to store it, the execution as submitted),
        # in submission order; and those being stored now (see RECORD_AFTER).
        self._unrecorded: dict[str, tuple[float, Execution]] = {}
        self._recording: dict[str, asyncio.Future] = {}
        self._recorder: asyncio.Task | None = None
        self._finished: collections.OrderedDict[str, Execution] = collections.OrderedDict()
        self._running: dict[str, asyncio.Future] = {}  # execution id → its mode's future
        self._questions: dict[str, asyncio.Future] = {}  # execution id → the answer a human will give
        self._agent_locks: dict[str, asyncio.Lock] = {}
        self._delayed: set[asyncio.Task] = set()  # task handlers waiting for a retry's not_before
        self._background: set[asyncio.Task] = set()
        self._subscriptions: list[Any] = []
        self._ordered: dict[str, Any] = {}  # continuous agent → its single-active task queue
        self._consuming = False
        self._events_subscription: Any = None
        self._event_trie = TopicTrie()
        self._event_patterns: dict[str, frozenset[str]] = {}
        self._accepting = False
        self.tasks_handled = 0  # task messages handled (an `agentrunner worker` child is replaced after N)
        self._handlers = 0  # task messages being handled, from delivery to acknowledgement
        self._idle = asyncio.Event()
        self._idle.set()

    # --- lifecycle -------------------------------------------------------------

    async def start(self, *, consume: bool = True, recover: bool = True) -> None:
        """Subscribe the task and event queues and re-queue what a previous run left unfinished."""
        self._accepting = True
        if consume:
            # TASK_ROUTING_STRATEGY, between the processes consuming one queue: round_robin deals tasks in
            # turn whatever each process has in hand; least_busy lets a process hold only what it can start
            # now; weighted does that with WORKER_WEIGHT consumers, so a process gets its weight's share
            strategy = self.settings.task_routing_strategy
            consumers = self.settings.worker_weight if strategy == "weighted" else 1
            prefetch = self.slots if strategy in ("least_busy", "weighted") else None
            # a handler for each message the process may hold (RABBITMQ_PREFETCH_COUNT), at least twice the
            # slots: a handler whose execution has ended gives its slot back while it records the result
            # and publishes the event — under load that waits on the store and the broker for a while — and
            # meanwhile the next task starts; the slots still bound the executions running at once
            handlers = 2 * self.slots if prefetch is not None else max(2 * self.slots,
                                                                       self.settings.rabbitmq_prefetch_count)
            for mode in sorted(self.registry.execution_modes):
                if mode in ORDERED_MODES:
                    continue  # one queue per agent (sync_ordered_queues)
                for _ in range(consumers):
                    subscription = await self.bus.subscribe(f"agentrunner.tasks.{mode}", [task_binding(mode)],
                                                            self._on_task, concurrency=handlers,
                                                            prefetch=prefetch)
                    self._subscriptions.append(subscription)
            self._consuming = True
            async with self._registering(sorted(self.config.agents)):
                await self.sync_ordered_queues()
                await self._restore_agents()
                for name in sorted(self.config.agents):
                    await self._announce(self.config.agents[name])
                self._events_subscription = await self.bus.subscribe(EVENTS_QUEUE, [], self._on_event,
                                                                     concurrency=self.slots)
                await self.sync_event_subscriptions()
            await self.health.start_heartbeats()
            self._spawn(self._unload_idle_agents())
            # A durable bus still holds the tasks of a stopped process (and redelivers those a killed one
            # was running); only a process-local bus loses them, and then the store says what to re-queue.
            if recover and getattr(self.bus, "process_local", False):
                await self._recover()
        if not getattr(self.bus, "process_local", False):
            # executions finished by other processes wake this process's waiters through the bus
            waiters = await self.bus.subscribe(f"agentrunner.waiters.{self.process_id}",
                                               [f"{DONE_PREFIX}.{self.process_id}"],
                                               self._on_execution_event, concurrency=4, exclusive=True,
                                               auto_ack=True)  # a lost notice: the waiter reads the store
            self._subscriptions.append(waiters)
            if consume:  # answers to the questions of executions this process runs, given elsewhere
                inputs = await self.bus.subscribe(f"agentrunner.input.{self.process_id}", [INPUT_KEY],
                                                  self._on_input, concurrency=4, exclusive=True)
                self._subscriptions.append(inputs)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop intake, let running executions finish within ``grace`` seconds, then stop.

        Executions still running after the grace period are put back to ``queued``
        (they run again on the next start), so none is left ``running``.
        """
        self._accepting = False
        self._consuming = False
        await self.health.stop()
        for subscription in [*self._subscriptions, *self._ordered.values(), self._events_subscription]:
            if subscription is not None:
                await subscription.cancel()
        self._ordered.clear()
        for task in list(self._delayed):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for execution_id, inner in list(self._running.items()):
            # put back first, so the cancelled run cannot record a terminal status over it
            await self.store.update_execution(execution_id, expect_status=("running",), status="queued")
            inner.cancel()
        with contextlib.suppress(TimeoutError):  # the cancelled handlers end at once
            await asyncio.wait_for(self._idle.wait(), 5)
        # submitted here and still unknown to the store: stored now (their tasks are on the bus)
        await asyncio.gather(*(self._record_now(execution_id) for execution_id in list(self._unrecorded)),
                             *self._recording.values())
        if self._recorder is not None:
            self._recorder.cancel()
        for task in list(self._background):
            task.cancel()

    async def _recover(self) -> None:
        """Publish again the executions a stopped or killed process left queued or running."""
        for execution in await self.store.executions_with_status(("queued", "running")):
            if execution.execution_id in self._running:
                continue
            agent = self.config.get(execution.agent_name)
            if agent is None:
                await self._finish(execution, "failed", error=f"agent {execution.agent_name!r} no longer exists")
                continue
            log.info("re-queueing execution %s of %s left %s", execution.execution_id, execution.agent_name,
                     execution.status)
            await self._publish_task(agent, execution)

    # --- submission ------------------------------------------------------------

    async def submit(self, agent_name: str, input: Any, *, data: dict[str, Any] | None = None,
                     idempotency_key: str | None = None, parent_execution_id: str | None = None,
                     trace_id: str | None = None, stream: bool = False,
                     record_later: bool = False) -> tuple[Execution, bool]:
        """Record and publish a task; returns the execution and whether it is new.

        With an ``idempotency_key`` already used for this agent, the first
        execution is returned and nothing is published. ``stream`` keeps the
        text deltas of its model calls for readers (``streams``).

        ``record_later``: the caller waits for the result (``wait``), so nobody else can know the
        execution's id yet. On a durable bus it is then not stored now: the task carries it, and it is
        stored by the write that records its end — one write instead of two — or after
        ``RECORD_AFTER`` seconds without an answer, or before ``wait`` gives up (``RECORD_AFTER``).
        """
        if not self._accepting and parent_execution_id is None:
            raise ShuttingDown("the orchestrator is not taking new tasks")
        agent = self.config.get(agent_name)
        if agent is None:
            raise AgentNotFound(agent_name)
        execution = Execution(
            execution_id=new_id(), agent_name=agent_name, task_type=agent.execution_mode, input=input,
            data=data or {}, idempotency_key=idempotency_key, parent_execution_id=parent_execution_id,
            trace_id=trace_id or new_id(),
        )
        if stream:
            self.streams.open(execution.execution_id)
        if record_later and idempotency_key is None and not stream \
                and not getattr(self.bus, "process_local", False):
            # (an idempotency key needs the store's unique constraint now; an in-memory bus loses its
            # tasks with the process, and only a stored execution is queued again at the next start)
            await self._submit_unrecorded(agent, execution)
            return execution, True
        stored, created = await self.store.create_execution(execution)
        if created:
            self.metrics.task_submitted(agent_name)
            self._submitted.add(stored.execution_id)
            try:
                await self._publish_task(agent, stored, whole=True)
            except BusUnavailable as exc:  # refused (a full queue) or no broker: the submitter hears it now
                self._submitted.discard(stored.execution_id)
                self.streams.discard(stored.execution_id)
                await self.store.update_execution(stored.execution_id, expect_status=("queued",), status="failed",
                                                  completed_at=utcnow(), error_message=f"not queued: {exc}")
                raise
        elif stream:  # an idempotent repeat: the first execution is the one to follow
            self.streams.discard(execution.execution_id)
        return stored, created

    async def _submit_unrecorded(self, agent: Any, execution: Execution) -> None:
        execution_id = execution.execution_id
        self.metrics.task_submitted(agent.name)
        self._submitted.add(execution_id)
        self._unrecorded[execution_id] = (asyncio.get_running_loop().time() + RECORD_AFTER, execution)
        if self._recorder is None:
            self._recorder = asyncio.ensure_future(self._record_when_due())
        try:
            await self._publish_task(agent, execution, whole=True, unrecorded=True)
        except BusUnavailable as exc:
            self._submitted.discard(execution_id)
            self._unrecorded.pop(execution_id, None)
            # stored as failed (it may have been stored as queued meanwhile), and the submitter hears it now
            await self.store.update_execution(execution_id, expect_status=("queued",), insert=execution,
                                              status="failed", completed_at=utcnow(),
                                              error_message=f"not queued: {exc}")
            raise

    async def _record_when_due(self) -> None:
        """Store the executions submitted with record_later that got no answer within RECORD_AFTER."""
        loop = asyncio.get_running_loop()
        try:
            while self._unrecorded:
                due, _ = next(iter(self._unrecorded.values()))  # the oldest: submission order
                if due > loop.time():
                    # (at most every 10 ms: most answers come first, and each would wake it otherwise)
                    await asyncio.sleep(max(due - loop.time(), 0.01))
                    continue
                now, due_now = loop.time(), []
                for execution_id, (due, _) in self._unrecorded.items():
                    if due > now:
                        break
                    due_now.append(execution_id)
                for execution_id in due_now:
                    self._start_recording(execution_id)
        finally:
            self._recorder = None

    def _start_recording(self, execution_id: str) -> asyncio.Future | None:
        entry = self._unrecorded.pop(execution_id, None)
        if entry is not None:
            recording = asyncio.ensure_future(self._record(entry[1]))
            self._recording[execution_id] = recording
            recording.add_done_callback(lambda _: self._recording.pop(execution_id, None))
        return self._recording.get(execution_id)

    async def _record(self, execution: Execution) -> None:
        # the process running it may have stored it already (claimed or finished): that row stands
        try:
            await self.store.update_execution(execution.execution_id, expect_status=(), insert=execution)
        except Exception as exc:  # its consumer stores it anyway, when it ends or at its claim
            log.warning("could not store the queued execution %s (%s); it is stored when it runs",
                        execution.execution_id, exc)

    async def _record_now(self, execution_id: str) -> None:
        """Make sure an execution submitted here with record_later is in the store."""
        recording = self._start_recording(execution_id)
        if recording is not None:
            await asyncio.shield(recording)

    async def _publish_task(self, agent: Any, execution: Execution, *, not_before: float | None = None,
                            whole: bool = False, unrecorded: bool = False) -> None:
        """Put the task on the bus; ``not_before`` (a Unix time) makes the consumer wait until then.

        A delayed retry travels as a message right away, so it survives this process. ``whole``: the
        execution just created travels with it, so its first delivery can run without reading the store.
        """
        headers: dict[str, Any] = {"trace_id": execution.trace_id, "task": True}
        if not_before is not None:
            headers["not_before"] = not_before
        if unrecorded:
            headers[UNRECORDED_HEADER] = True
        if not getattr(self.bus, "process_local", False):
            # whoever submitted it may wait for it: the process that finishes it tells that one directly
            headers["reply_to"] = self._reply_to.get(execution.execution_id, self.process_id)
        payload: dict[str, Any] = {"execution_id": execution.execution_id, "agent_name": agent.name}
        if whole:
            payload["execution"] = execution.to_json()
        await self.bus.publish(task_routing_key(agent.execution_mode, agent.name), payload, headers)

    async def wait(self, execution_id: str, timeout: float | None) -> Execution | None:
        """The execution once terminal (or ``awaiting_input``), or as it is when ``timeout`` runs out."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(execution_id, []).append(future)
        try:
            execution = self._finished.get(execution_id)
            if execution is not None:
                return execution
            if execution_id not in self._submitted:  # not ours, or asked for later: the store knows
                execution = await self.store.get_execution(execution_id)
                if execution is None or execution.terminal or execution.status == "awaiting_input":
                    return execution
            if timeout is None:
                return await future
            # (a timer that answers None, rather than wait_for and shield: two futures and a task fewer)
            timer = asyncio.get_running_loop().call_later(timeout, _answer_none, future)
            try:
                execution = await future
            finally:
                timer.cancel()
            if execution is not None:
                return execution
            await self._record_now(execution_id)  # the caller gets its id: the store must know it
            return await self.store.get_execution(execution_id)
        finally:
            waiters = self._waiters.get(execution_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(execution_id, None)

    def _wake(self, execution: Execution) -> None:
        self._unrecorded.pop(execution.execution_id, None)  # its consumer stored it
        if execution.terminal:
            self.streams.finish(execution)
            self._submitted.discard(execution.execution_id)
            self._finished[execution.execution_id] = execution
            if len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
        for future in self._waiters.get(execution.execution_id, []):
            if not future.done():
                future.set_result(execution)

    def _submitter_elsewhere(self, execution_id: str) -> str | None:
        """The process that submitted an execution, if it is another one (it is told when it ends)."""
        reply_to = self._reply_to.get(execution_id)
        return reply_to if reply_to and reply_to != self.process_id else None

    async def _notify_submitter(self, execution_id: str, status: str, execution: Execution | None = None) -> None:
        """Wake the waiters of the process that submitted an execution, if that is another process: one
        message to that process rather than a copy of every event to every process. A finished execution
        travels whole, so the waiter needs no read of the store."""
        reply_to = self._submitter_elsewhere(execution_id)
        if reply_to:
            payload: dict[str, Any] = {"execution_id": execution_id, "status": status}
            if execution is not None:
                payload["execution"] = execution.to_json()
            try:
                await self.bus.publish(f"{DONE_PREFIX}.{reply_to}", payload, {"internal": True}, persistent=False)
            except Exception as exc:  # its waiters time out and read the store instead
                log.warning("could not tell process %s that %s is %s: %s", reply_to, execution_id, status, exc)

    async def _on_execution_event(self, event: Event) -> None:
        """Wake local waiters of executions finished (or waiting for a human) in another process."""
        payload = event.payload or {}
        execution_id = payload.get("execution_id")
        whole = payload.get("execution")
        if whole is None and EXECUTION_HEADER in event.headers:  # a completion event routed here too
            whole = json.loads(event.headers[EXECUTION_HEADER])
        if whole:
            # kept among the finished even with nobody waiting yet: the notice may arrive before the
            # submitter starts waiting (it was still awaiting the broker's confirm of the task's publish,
            # or waits later), and a wait then finds it here instead of reading the store
            self._wake(Execution.from_json(whole))
            return
        if payload.get("status") != "awaiting_input":
            self._submitted.discard(execution_id)  # finished, here or elsewhere
        if any(not future.done() for future in self._waiters.get(execution_id, ())):
            execution = await self.store.get_execution(execution_id)
            if execution is not None:
                self._wake(execution)

    async def cancel(self, execution_id: str) -> Execution:
        """Cancel a queued or running execution; a finished one cannot be cancelled."""
        execution = await self.store.get_execution(execution_id)
        if execution is None:
            raise ExecutionNotFound(execution_id)
        if execution.terminal:
            raise InvalidTransition(f"execution {execution_id} is already {execution.status}")
        inner = self._running.get(execution_id)
        changed = await self.store.update_execution(
            execution_id, expect_status=("queued", "running", "awaiting_input"), status="cancelled",
            completed_at=utcnow(), error_message="cancelled by request")
        if inner is not None:
            inner.cancel()
        execution = await self.store.get_execution(execution_id)
        if changed:
            self._wake(execution)
        return execution

    async def provide_input(self, execution_id: str, value: Any) -> Execution:
        """Answer the question of an execution in ``awaiting_input``; it resumes ``running``.

        The execution may wait in another process (a worker): the answer then travels on the bus
        to the process holding it. With a process-local bus only this process can hold it.
        """
        answer = self._questions.get(execution_id)
        here = answer is not None and not answer.done()
        if not here and getattr(self.bus, "process_local", False):
            raise InvalidTransition(f"execution {execution_id} is not waiting for input in this process")
        if not await self.store.update_execution(execution_id, expect_status=("awaiting_input",), status="running"):
            raise InvalidTransition(f"execution {execution_id} is not awaiting input")
        resumed = await self.store.get_execution(execution_id)  # as it resumes, before the mode moves on
        if here:
            answer.set_result(value)
        else:
            await self.bus.publish(INPUT_KEY, {"execution_id": execution_id, "value": value}, {"internal": True})
        return resumed

    async def _on_input(self, event: Event) -> None:
        """An answer given in another process, for an execution waiting in this one."""
        answer = self._questions.get((event.payload or {}).get("execution_id"))
        if answer is not None and not answer.done():
            answer.set_result(event.payload.get("value"))

    async def retry_dead_letter(self, item_id: str) -> Execution:
        """Run a dead-lettered execution again from its first attempt; the dead letter is removed."""
        letter = await self.store.get_dead_letter(item_id)
        if letter is None:
            raise DeadLetterNotFound(item_id)
        agent = self.config.get(letter.agent_name)
        if agent is None:
            raise AgentNotFound(letter.agent_name)
        reset = await self.store.update_execution(
            letter.execution_id, expect_status=("failed", "timed_out"), status="queued", attempts=0,
            error_message=None, result=None, started_at=None, completed_at=None)
        if not reset:
            raise InvalidTransition(f"execution {letter.execution_id} is not failed; it cannot be retried")
        await self.store.delete_dead_letter(item_id)
        self._finished.pop(letter.execution_id, None)  # it is not finished any more
        self._submitted.add(letter.execution_id)
        execution = await self.store.get_execution(letter.execution_id)
        await self._publish_task(agent, execution)
        return execution

    # --- consuming tasks ---------------------------------------------------------

    async def _on_task(self, event: Event) -> None:
        self._handlers += 1
        self._idle.clear()
        try:
            not_before = event.headers.get("not_before")
            if not_before is not None and float(not_before) > time.time():
                # a retry waiting out its backoff, without a slot; a stop cancels the wait and the bus
                # keeps the message
                task = asyncio.current_task()
                self._delayed.add(task)
                try:
                    await asyncio.sleep(float(not_before) - time.time())
                finally:
                    self._delayed.discard(task)
            execution_id = event.payload["execution_id"]
            reply_to = event.headers.get("reply_to")
            if reply_to:
                self._reply_to[execution_id] = reply_to
            whole = event.payload.get("execution")
            # submitted with record_later: perhaps not stored yet, so the first write of any delivery (its
            # claim, or its end) stores it from the message if need be
            insert = Execution.from_json(whole) if whole is not None and event.headers.get(UNRECORDED_HEADER) \
                else None
            # the execution as submitted runs at once on a first delivery only: a redelivery may follow an
            # attempt that ran (or finished) already, so it is claimed from the store first
            if event.headers.get("delivery_count", 1) != 1:
                whole = None
            await self._handle_task(execution_id, event.payload["agent_name"], whole, insert)
        finally:
            self._reply_to.pop(event.payload.get("execution_id"), None)
            self._handlers -= 1
            self.tasks_handled += 1
            if not self._handlers:
                self._idle.set()

    async def _handle_task(self, execution_id: str, agent_name: str, whole: dict[str, Any] | None = None,
                           insert: Execution | None = None) -> None:
        # The slot goes back once the execution has ended (_finish), before it is recorded and its event
        # published: the slots bound executions running, so the next task need not wait for the store and
        # the broker, and a busy process batches more writes and messages (the handlers are 2 × the slots).
        slot = _Slot(self._slots)
        await slot.acquire()
        try:
            await self._take_task(execution_id, agent_name, whole, slot, insert)
        finally:
            slot.release()

    async def _take_task(self, execution_id: str, agent_name: str, whole: dict[str, Any] | None,
                         slot: _Slot, insert: Execution | None = None) -> None:
        if not self._accepting:
            # stopping: the bus must keep the message (a durable bus redelivers it; the store has the
            # execution queued for the in-memory bus's recovery) — returning would acknowledge it
            raise asyncio.CancelledError("stopping: the task goes back to the bus")
        if execution_id in self._running:
            return  # a redelivery while this process runs it
        agent = self.config.get(agent_name)
        if agent is None:
            execution = await self.store.get_execution(execution_id) or insert
            if execution is not None and not execution.terminal:
                await self._finish(execution, "failed", error=f"agent {agent_name!r} is not loaded", insert=insert)
            return
        mode = self.registry.execution_modes[agent.execution_mode]
        lock = self._agent_locks.setdefault(agent.name, asyncio.Lock()) if getattr(
            mode, "ordered", agent.execution_mode == "continuous") else contextlib.nullcontext()
        async with lock:
            if whole is not None:
                # run at once, unclaimed: a quick execution is recorded by one write (_finish), a longer
                # one is claimed after CLAIM_AFTER s, and stops there if it was cancelled meanwhile
                # (parsed once: the execution as submitted, when it is kept for a first write that stores it)
                execution = Execution.from_json(whole) if insert is None else attrs.evolve(insert)
                execution.status, execution.started_at, execution.attempts = "running", utcnow(), \
                    execution.attempts + 1
                await self._run(agent, mode, execution, claimed=False, slot=slot, insert=insert)
                return
            # the claim reads the execution too; None: finished, cancelled or unknown (a redelivery)
            execution = await self.store.claim_execution(execution_id, utcnow(),
                                                         **_inserting(insert))
            if execution is not None:
                await self._run(agent, mode, execution, slot=slot)

    async def _run(self, agent: Any, mode: Any, execution: Execution, *, claimed: bool = True,
                   slot: _Slot | None = None, insert: Execution | None = None) -> None:
        uses_state = getattr(mode, "uses_state", agent.execution_mode not in ("autonomous", "scheduled"))
        stored_state = None
        if uses_state:
            stored_state = await self.state.get(agent.name)
            self.state.touch(agent.name)
        state = dict(stored_state.state_data) if stored_state else {}
        snapshot = json.dumps(state, sort_keys=True, default=str) if uses_state else None
        ctx = ExecutionContext(self, agent, execution, state)
        ctx._slot = slot
        ctx._insert = insert
        if claimed:
            ctx._claim = asyncio.get_running_loop().create_future()
            ctx._claim.set_result(execution)
        soft, hard = self._time_limits(agent)
        # every log line of this execution — ours, a provider's, a tool's — carries its ids
        token = logs.EXECUTION.set(ctx._log_extra())
        try:
            try:
                result = await self._execute_with_limits(mode, ctx, soft, hard)
                if uses_state and json.dumps(state, sort_keys=True, default=str) != snapshot:
                    # a conflicting write by another process fails this attempt, which is then retried
                    await self._save_state(agent.name, stored_state, state)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise  # the worker itself is being cancelled
                return  # the execution was cancelled by request or put back by a shutdown: its status is set
            except TimeoutError:
                await self._finish(execution, "timed_out", ctx=ctx,
                                   error=f"the execution exceeded its time limit of {soft:g} s")
            except Exception as exc:  # a mode, tool or provider failure: retry or fail
                await self._failed(agent, execution, ctx, exc)
            else:
                await self._finish(execution, "completed", ctx=ctx, result=result)
        finally:
            logs.EXECUTION.reset(token)

    def _time_limits(self, agent: Any) -> tuple[float, float]:
        """The soft limit (cancel cleanly) and the hard limit (abandon) of one execution.

        The soft limit is the agent's own timeout (``schedule_config`` or
        ``collaborative_config.timeout_seconds``) or ``TASK_DEFAULT_TIMEOUT``,
        capped by ``CELERY_TASK_SOFT_TIME_LIMIT``; the hard limit gives the mode
        ``CELERY_TASK_TIME_LIMIT - CELERY_TASK_SOFT_TIME_LIMIT`` more seconds to
        clean up, capped by ``CELERY_TASK_TIME_LIMIT``.
        """
        settings = self.settings
        own = getattr(agent.mode_config, "timeout_seconds", None) if agent.mode_config is not None else None
        soft = min(float(own or settings.task_default_timeout), float(settings.celery_task_soft_time_limit))
        grace = max(0.0, float(settings.celery_task_time_limit - settings.celery_task_soft_time_limit))
        hard = min(soft + grace, float(settings.celery_task_time_limit))
        return soft, max(hard, soft)

    async def _execute_with_limits(self, mode: Any, ctx: ExecutionContext, soft: float, hard: float) -> Any:
        """Run the mode; at the soft limit cancel it, at the hard limit abandon it (both: TimeoutError)."""
        execution_id = ctx.task.execution_id
        # started eagerly: an execution that ends without waiting (a model answering without I/O) holds its
        # slot for no turn of the event loop — on a busy loop two turns are milliseconds, and the slots
        # would bound how many such executions a process runs per second
        ended, inner = start_eagerly(mode.execute(ctx))
        if ended:
            return inner
        self._running[execution_id] = inner
        try:
            waited = 0.0
            if ctx._claim is None:  # unclaimed: claim it unless it ends within CLAIM_AFTER
                waited = min(CLAIM_AFTER, soft)
                if not await _ended_within(inner, waited) and not await ctx._claimed():
                    inner.cancel()  # cancelled meanwhile, or finished by another delivery: nothing to record
                    await _ended_within(inner, max(0.0, hard - waited))
                    raise asyncio.CancelledError
            if await _ended_within(inner, soft - waited):
                return inner.result()
            inner.cancel()  # the soft limit: the mode sees CancelledError and may clean up
            if not await _ended_within(inner, max(0.0, hard - soft)):
                log.error("execution %s ignored cancellation; abandoned at the hard time limit", execution_id,
                          extra=ctx._log_extra())
            raise TimeoutError
        except BaseException:  # cancelled, or the claim failed (the store is down): the mode stops too
            inner.cancel()
            raise
        finally:
            self._running.pop(execution_id, None)

    async def _save_state(self, agent_name: str, stored: Any, state: dict[str, Any]) -> None:
        from agentrunner.records import AgentState

        record = stored or AgentState(agent_name=agent_name)
        record.state_data = state
        record.conversation_history = list(state.get("conversation_history", []))
        record.last_activity = utcnow()
        await self.state.put(record, expect_version=record.version if stored is not None else None)

    async def _failed(self, agent: Any, execution: Execution, ctx: ExecutionContext, exc: Exception) -> None:
        """Retry the task per ``retry_config``, or fail it and dead-letter it.

        Provider errors are not retried here: ``ctx.complete`` already spent the
        agent's retries on them (one retry layer only), and a failed child
        execution was retried as its own task.
        """
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        policy = RetryPolicy.of(agent)
        retryable = not isinstance(exc, ProviderError | ExecutionFailed) and getattr(exc, "retryable", True)
        if retryable and execution.attempts <= policy.max_retries:
            if not await ctx._claimed():  # the retry counts this attempt: the store must have it
                return  # cancelled meanwhile, or finished by another delivery
            delay = policy.delay(execution.attempts)
            requeued = await self.store.update_execution(
                execution.execution_id, expect_status=("running",), status="queued", error_message=message)
            if requeued:
                log.warning("execution %s failed (%s); retry %d of %d in %.1fs", execution.execution_id, message,
                            execution.attempts, policy.max_retries, delay, extra=ctx._log_extra())
                await self._publish_task(agent, execution, not_before=time.time() + delay)
            return
        log.error("execution %s failed after %d attempt(s): %s", execution.execution_id, execution.attempts,
                  message, extra=ctx._log_extra())
        await self._finish(execution, "failed", ctx=ctx, error=message, dead_letter=DeadLetter(
            id=new_id(), execution_id=execution.execution_id, agent_name=agent.name,
            routing_key=task_routing_key(agent.execution_mode, agent.name),
            payload={"execution_id": execution.execution_id, "agent_name": agent.name},
            error_message=message, attempts=execution.attempts))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finish(self, execution: Execution, status: str, *, ctx: ExecutionContext | None = None,
                      result: Any = None, error: str | None = None, dead_letter: DeadLetter | None = None,
                      insert: Execution | None = None) -> bool:
        """Record a terminal status once, wake waiters, and publish the system event.

        Returns False when the execution already had a terminal status (e.g. cancelled).
        """
        fields: dict[str, Any] = {"status": status, "completed_at": utcnow(), "result": result,
                                  "error_message": error}
        if ctx is not None and ctx._slot is not None:
            ctx._slot.release()  # the execution has ended: what is left is recording it
        if ctx is not None:
            fields["usage"] = {"input_tokens": ctx.usage.input_tokens, "output_tokens": ctx.usage.output_tokens,
                               "model": ctx.model or ctx.agent.llm_config.model}
            if ctx.details:
                fields["details"] = ctx.details
            if ctx._claim is None:  # ran unclaimed: this write records the attempt too
                fields.update(started_at=execution.started_at, attempts=execution.attempts)
                if ctx._insert is not None:  # and may be the first: the execution is stored if it is not yet
                    insert = execution
        changed = await self.store.update_execution(execution.execution_id,
                                                    expect_status=("queued", "running", "awaiting_input"),
                                                    **_inserting(insert), **fields)
        if not changed:
            return False  # cancelled meanwhile: the first terminal status stands
        if dead_letter is not None:  # before waking anyone, so a woken waiter finds it
            await self.store.add_dead_letter(dead_letter)
        for key, value in fields.items():
            setattr(execution, key, value)
        started = execution.started_at
        self.metrics.execution_ended(execution.agent_name, status,
                                     (fields["completed_at"] - started).total_seconds() if started else None)
        self._wake(execution)
        routing_key = "agent.execution.completed" if status == "completed" else "agent.execution.failed"
        payload = {"execution_id": execution.execution_id, "agent_name": execution.agent_name, "status": status,
                   "result": result, "error_message": error, "trace_id": execution.trace_id}
        headers = self.event_headers(execution)
        reply_to = self._submitter_elsewhere(execution.execution_id)
        if not reply_to:
            await self.bus.publish(routing_key, payload, headers)
            return True
        whole = json.dumps(execution.to_json())  # ASCII: as many bytes as characters
        if len(whole) <= NOTICE_HEADER_MAX:
            # the event is the submitter's notice too: routed to its process as well, one message
            headers[EXECUTION_HEADER] = whole
            await self.bus.publish(routing_key, payload, headers, also=[f"{DONE_PREFIX}.{reply_to}"])
        else:  # the notice and the event go out together: one broker round trip, not two
            await asyncio.gather(self._notify_submitter(execution.execution_id, status, execution),
                                 self.bus.publish(routing_key, payload, headers))
        return True

    # --- events -----------------------------------------------------------------

    def event_headers(self, execution: Execution) -> dict[str, Any]:
        """Headers of an event caused by ``execution``: one level deeper in its chain."""
        depth = int(execution.data.get("chain_depth", 0)) if isinstance(execution.data, dict) else 0
        return {"trace_id": execution.trace_id, "origin_agent": execution.agent_name,
                "origin_execution": execution.execution_id, "depth": depth + 1}

    async def _restore_agents(self) -> None:
        """``restore_on_startup``: load the state of continuous agents before their first task."""
        for name, agent in sorted(self.config.agents.items()):
            config = getattr(agent, "continuous_config", None)
            if agent.execution_mode != "continuous" or (config is not None and not config.restore_on_startup):
                continue
            try:
                await self.state.load(name)
            except Exception as exc:  # the first task restores it instead
                log.warning("could not restore the state of agent %s at start: %s", name, exc)

    def _idle_timeout(self, agent_name: str) -> float:
        agent = self.config.get(agent_name)
        config = getattr(agent, "continuous_config", None) if agent is not None else None
        return float(config.idle_timeout_seconds if config is not None else self.settings.state_idle_timeout)

    async def _unload_idle_agents(self) -> None:
        """Unload agents idle for their ``idle_timeout_seconds``: their state leaves the cache (it stays in
        the store) and the next task restores it."""
        while True:
            period = IDLE_CHECK_MAX
            for name in list(self.state.loaded):
                timeout = self._idle_timeout(name)
                period = min(period, max(IDLE_CHECK_MIN, timeout / 4))
                idle = self.state.idle_for(name)
                lock = self._agent_locks.get(name)
                if idle is not None and idle >= timeout and not (lock is not None and lock.locked()):
                    await self.state.unload(name)
                    log.info("agent %s idle for %.0f s: unloaded (its state stays in the store)", name, idle)
            await asyncio.sleep(period)

    async def sync_ordered_queues(self) -> None:
        """One single-active queue per continuous agent: across every process its tasks run one at a
        time, in the order they were submitted (a turn never overtakes the one before it)."""
        if not self._consuming:
            return
        wanted = {name for name, agent in self.config.agents.items() if agent.execution_mode in ORDERED_MODES}
        for name in sorted(set(self._ordered) - wanted):
            await self._ordered.pop(name).cancel()  # its queue keeps any tasks until the agent is back
        for name in sorted(wanted - set(self._ordered)):
            mode = self.config.agents[name].execution_mode
            self._ordered[name] = await self.bus.subscribe(
                f"agentrunner.tasks.{mode}.{name}", [task_routing_key(mode, name)], self._on_task,
                single_active=True)

    async def sync_event_subscriptions(self) -> None:
        """Bind the events queue to the union of every agent's ``event_subscriptions``."""
        if self._events_subscription is None:
            return
        wanted = {name: frozenset(agent.event_subscriptions) for name, agent in self.config.agents.items()}
        for name in set(self._event_patterns) | set(wanted):
            old, new = self._event_patterns.get(name, frozenset()), wanted.get(name, frozenset())
            for pattern in old - new:
                self._event_trie.remove(pattern, name)
            for pattern in new - old:
                self._event_trie.add(pattern, name)
        before = set().union(*self._event_patterns.values()) if self._event_patterns else set()
        after = set().union(*wanted.values()) if wanted else set()
        for pattern in after - before:
            await self._events_subscription.bind(pattern)
        for pattern in before - after:
            await self._events_subscription.unbind(pattern)
        self._event_patterns = {name: patterns for name, patterns in wanted.items() if patterns}

    async def publish_event(self, routing_key: str, payload: Any, headers: Mapping[str, Any] | None = None, *,
                            task_input: Any = None, idempotency_key: str | None = None) -> None:
        """Publish an outside event (``POST /events``, a gateway) at the start of a chain.

        The tasks it starts get the payload as their input, or ``task_input`` when given (a Slack
        message's text, with the whole event in ``data.event``). With ``idempotency_key`` a delivery
        repeated by the sender (same key) starts no second task for an agent, across restarts and
        processes (the store's unique key decides).
        """
        extra: dict[str, Any] = {"depth": 0}
        if task_input is not None:
            extra["task_input"] = task_input
        if idempotency_key is not None:
            extra["idempotency_key"] = idempotency_key
        await self.bus.publish(routing_key, payload, dict(headers or {}, **extra))

    async def _on_event(self, event: Event) -> None:
        """Turn an event into a task for every agent subscribed to it, with the loop guard."""
        if event.headers.get("task") or event.headers.get("internal"):
            return  # a task message (`autonomous.task.submitted`, …) or a heartbeat is plumbing, not an event
        depth = int(event.headers.get("depth", 0) or 0)
        origin = event.headers.get("origin_agent")
        targets = sorted(self._event_trie.match(event.routing_key))
        if not targets:
            return
        if depth > MAX_CHAIN_DEPTH:
            log.warning("dropping event %s: the event chain is deeper than %d (agents %s)", event.routing_key,
                        MAX_CHAIN_DEPTH, ", ".join(targets))
            return
        for agent_name in targets:
            if agent_name == origin:
                continue  # an agent is never triggered by an event its own execution caused
            data = {"routing_key": event.routing_key, "event": event.payload, "chain_depth": depth}
            given = event.headers.get("idempotency_key")
            key = f"event:{given}" if given else f"event:{event.message_id}" if event.message_id else None
            task_input = event.headers["task_input"] if "task_input" in event.headers else event.payload
            try:
                await self.submit(agent_name, task_input, data=data, idempotency_key=key,
                                  parent_execution_id=event.headers.get("origin_execution"),
                                  trace_id=event.headers.get("trace_id"))
            except AgentNotFound:
                log.info("event %s: agent %s was removed", event.routing_key, agent_name)

    async def on_config_change(self, change: Any) -> None:
        """ConfigurationService subscriber: keep event bindings and ordered queues in step with the agents,
        and announce the agents added or changed (``agent.registered``)."""
        changed = [*change.added.values(), *change.updated.values()]
        try:
            async with self._registering(sorted(agent.name for agent in changed)):
                await self.sync_event_subscriptions()
                await self.sync_ordered_queues()
                for agent in changed:
                    await self._announce(agent)
        except RegistrationTimeout as exc:  # the next reload tries again; the running agents go on
            log.error("%s", exc)

    @contextlib.asynccontextmanager
    async def _registering(self, names: list[str]) -> AsyncIterator[None]:
        """``AGENT_REGISTRATION_TIMEOUT`` seconds for registering ``names`` on the event bus."""
        limit = self.settings.agent_registration_timeout
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                yield
        except TimeoutError:
            if not deadline.expired():
                raise
            raise RegistrationTimeout(
                f"registering the agents {', '.join(names) or '(none)'} on the event bus ({self.bus.name}) took "
                f"longer than AGENT_REGISTRATION_TIMEOUT={limit} s; check that the bus answers") from None

    async def _announce(self, agent: Any) -> None:
        """Publish ``agent.registered`` for an agent this process now runs (at start, added, changed)."""
        try:
            await self.bus.publish("agent.registered", {
                "agent_name": agent.name, "agent_type": agent.agent_type, "execution_mode": agent.execution_mode,
                "event_subscriptions": list(agent.event_subscriptions), "process": self.process_id})
        except Exception as exc:  # an announcement is informative: never fail a reload or a start for it
            log.warning("could not publish agent.registered for %s: %s", agent.name, exc)
