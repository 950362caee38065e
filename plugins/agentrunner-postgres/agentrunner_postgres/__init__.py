"""agentrunner-postgres: the ``postgres`` state store (executions, agent state, schedules, dead letters).

Registered through the ``agentrunner`` entry point ``postgres = agentrunner_postgres``; chosen with
``STATE_BACKEND=postgres``, or by setting ``DATABASE_URL`` or ``POSTGRES_HOST``. asyncpg is imported
when the store starts, so installing the plugin does not slow down ``agentrunner --help``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import agentrunner
from agentrunner_postgres.migrations import Migration, MigrationError, load_migrations
from agentrunner_postgres.store import PostgresStateStore

__all__ = ["Migration", "MigrationError", "PostgresStateStore", "load_migrations", "register_state_stores"]


@agentrunner.hookimpl
def register_state_stores(register: Callable[[Any], None]) -> None:
    register(PostgresStateStore)
