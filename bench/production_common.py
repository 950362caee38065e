"""What systems (b) and (c) of bench/production.py share: settings from the environment, the row, the intake.

Each runs as a child process of the benchmark, which passes its settings in ``BENCH_*`` variables.
Both write the same row as agentrunner's ``execution_history`` (the reference's columns, the table
made from sql/002_execution_history.sql) into a schema of their own in the benchmark's database.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
#: every queue, exchange and Redis key of one benchmark run starts with this
PREFIX = os.environ.get("BENCH_PREFIX", "bench-local")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")

INSERT = """
    INSERT INTO execution_history (execution_id, agent_name, task_type, status, started_at, completed_at,
                                   duration_seconds, result, trace_id, input, attempts)
    VALUES ($1, $2, 'autonomous', 'completed', $3, $4, $5, $6::jsonb, $7, $8::jsonb, 1)
"""


def now() -> datetime:
    return datetime.now(UTC)


def echo(execution_id: str, agent_name: str, text: Any) -> tuple[Any, tuple]:
    """The task's work (echo its input, like agentrunner's echo provider) and the INSERT's arguments."""
    started = now()
    result = text
    completed = now()
    arguments = (execution_id, agent_name, started, completed, (completed - started).total_seconds(),
                 json.dumps(result), uuid.uuid4().hex, json.dumps({"text": text}))
    return result, arguments


def new_id() -> str:
    return uuid.uuid4().hex


def serve_intake(port: int, submit: Callable[[str, str, Any, float], Awaitable[Any]],
                 on_startup: Callable[[Any], Awaitable[None]] | None = None) -> None:
    """The HTTP intake of (b) and (c): ``POST /agents/{name}/tasks {"input", "wait"}`` answers when recorded.

    ``submit(execution_id, agent_name, input, wait)`` hands the task on and returns its result once the
    row is written; the answer is shaped like agentrunner's (``status: completed``).
    """
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        execution_id = new_id()
        name = request.match_info["name"]
        try:
            result = await submit(execution_id, name, body.get("input"), float(body.get("wait") or 30))
        except Exception as exc:
            return web.json_response({"execution_id": execution_id, "status": "failed",
                                      "error": f"{type(exc).__name__}: {exc}"}, status=500)
        return web.json_response({"execution_id": execution_id, "agent_name": name, "status": "completed",
                                  "result": result})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/agents/{name}/tasks", handle)
    app.router.add_get("/health", health)
    if on_startup is not None:
        app.on_startup.append(on_startup)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
