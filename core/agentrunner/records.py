"""What the platform stores: executions, agent state, schedules, dead letters.

These attrs classes cross the state-store interface; a backend maps them to
its tables (the reference's ``execution_history``, ``agent_state`` and
``schedules``, see ``sql/``) and back, field for field.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

import attrs

#: Every status an execution can have; the last five are terminal.
STATUSES = ("queued", "running", "awaiting_input", "completed", "failed", "timed_out", "cancelled")
TERMINAL_STATUSES = frozenset({"completed", "failed", "timed_out", "cancelled"})


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (every stored timestamp is)."""
    return datetime.now(UTC)


def new_id() -> str:
    """A new identifier of 32 hex digits (execution ids, trace ids, dead-letter ids).

    The first 12 digits are the time in milliseconds, the other 20 random, so ids
    sort by creation time and new rows land at the end of a primary-key index
    instead of on a random page of it (a commit then writes far fewer pages).
    Unique, not secret: ``random`` is seeded from the OS and reseeded in forked
    children, and avoids a system call per id on the task path.
    """
    return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@attrs.define
class Execution:
    """One task for one agent, from submission to its terminal status.

    ``usage`` holds token usage (``input_tokens``, ``output_tokens``, ``model``);
    ``details`` holds mode-specific detail (tool calls, a plan, …).
    """

    execution_id: str
    agent_name: str
    task_type: str
    status: str = "queued"
    input: Any = None
    data: dict[str, Any] = attrs.Factory(dict)
    result: Any = None
    error_message: str | None = None
    trace_id: str = attrs.Factory(new_id)
    usage: dict[str, Any] = attrs.Factory(dict)
    details: dict[str, Any] = attrs.Factory(dict)
    attempts: int = 0
    idempotency_key: str | None = None
    parent_execution_id: str | None = None
    created_at: datetime = attrs.Factory(utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return round((self.completed_at - self.started_at).total_seconds(), 6)

    def to_json(self) -> dict[str, Any]:
        """The execution as the HTTP API returns it."""
        return {
            "execution_id": self.execution_id,
            "agent_name": self.agent_name,
            "task_type": self.task_type,
            "status": self.status,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "completed_at": _iso(self.completed_at),
            "duration_seconds": self.duration_seconds,
            "input": self.input,
            "data": self.data,
            "result": self.result,
            "error_message": self.error_message,
            "trace_id": self.trace_id,
            "usage": self.usage,
            "details": self.details,
            "attempts": self.attempts,
            "idempotency_key": self.idempotency_key,
            "parent_execution_id": self.parent_execution_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Execution:
        """The inverse of ``to_json`` (an execution that travelled as JSON)."""
        fields = _EXECUTION_FIELDS if cls is Execution else frozenset(field.name for field in attrs.fields(cls))
        values = {key: value for key, value in data.items() if key in fields}
        for key in ("created_at", "started_at", "completed_at"):
            if values.get(key) is not None:
                values[key] = datetime.fromisoformat(values[key])
        return cls(**values)


_EXECUTION_FIELDS = frozenset(field.name for field in attrs.fields(Execution))


@attrs.define
class AgentState:
    """An agent's persistent state (the reference's ``agent_state`` row).

    ``version`` grows by one on every write; a writer that passes the version
    it read is refused when someone else wrote in between.
    """

    agent_name: str
    state_data: dict[str, Any] = attrs.Factory(dict)
    conversation_history: list[Any] = attrs.Factory(list)
    metadata: dict[str, Any] = attrs.Factory(dict)
    version: int = 0
    created_at: datetime = attrs.Factory(utcnow)
    updated_at: datetime = attrs.Factory(utcnow)
    last_activity: datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentState:
        """The inverse of ``to_json`` (what a cache holds)."""
        return cls(
            agent_name=data["agent_name"], state_data=data["state_data"],
            conversation_history=data["conversation_history"], metadata=data["metadata"], version=data["version"],
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
            last_activity=datetime.fromisoformat(data["last_activity"]) if data["last_activity"] else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_name": self.agent_name,
            "state_data": self.state_data,
            "conversation_history": self.conversation_history,
            "metadata": self.metadata,
            "version": self.version,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "last_activity": _iso(self.last_activity),
        }


@attrs.define
class Schedule:
    """A schedule (the reference's ``schedules`` row); one defined in YAML is named after its agent."""

    schedule_name: str
    agent_name: str
    schedule_type: str  # "cron" | "interval"
    schedule_config: dict[str, Any]
    task_data: dict[str, Any] = attrs.Factory(dict)
    enabled: bool = True
    created_at: datetime = attrs.Factory(utcnow)
    updated_at: datetime = attrs.Factory(utcnow)
    last_execution: datetime | None = None


@attrs.define
class DeadLetter:
    """A task that exhausted its retries: what was sent, and why it failed."""

    id: str
    execution_id: str
    agent_name: str
    routing_key: str
    payload: dict[str, Any]
    error_message: str
    attempts: int
    failed_at: datetime = attrs.Factory(utcnow)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "execution_id": self.execution_id,
            "agent_name": self.agent_name,
            "routing_key": self.routing_key,
            "payload": self.payload,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "failed_at": _iso(self.failed_at),
        }
