"""The ``postgres`` state store: executions, agent state, schedules and dead letters in PostgreSQL.

The tables are the repository's ``sql/`` migrations (``migrations.py``), applied by ``start()``
unless the store is built with ``migrate=False``. JSON columns are JSONB (the pool's codec turns
them into Python values both ways) and timestamps are ``timestamptz``, read back timezone-aware
in UTC.

Writes on the task path never serialise the platform: each operation is one statement (two for
the rare loser of a race) on a pooled connection, and concurrent creates, claims and finishes are
group-committed (``batching``): those that arrive while earlier ones run go together, as one
statement over ``unnest`` arrays, so a busy process pays one round trip and one commit for many.
Every decision that must hold across processes is the database's: the unique constraints decide
``create_execution`` and ``claim_schedule_tick``, row locks order concurrent claims and
compare-and-sets, ``put_state`` is a conditional write on the version.

Outages raise ``StoreUnavailable`` within bounded time (POSTGRES_POOL_TIMEOUT to connect or find
a free connection, POSTGRES_STATEMENT_TIMEOUT plus it per statement); the pool reconnects on the
next operation once the server is back. A statement whose connection dies under it (a server
restart, ``pg_terminate_backend``) is tried once more on a new connection, and the second attempt
recognises its own first write, should that have committed, so the retry changes nothing twice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from agentrunner.interfaces import StateConflict, StoreUnavailable
from agentrunner.records import TERMINAL_STATUSES, AgentState, DeadLetter, Execution, Schedule, utcnow
from agentrunner_postgres.batching import GroupWriter
from agentrunner_postgres.connection import ConnectionConfig, is_connection_lost, is_outage, sql_log
from agentrunner_postgres.migrations import (
    MigrationError,
    Progress,
    apply_migrations,
    load_migrations,
    missing_migrations,
)

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("agentrunner_postgres.store")

T = TypeVar("T")

#: Schedule tick claims older than this (relative to a new claim) are pruned.
CLAIM_RETENTION = timedelta(days=7)

# --- Values ↔ columns -----------------------------------------------------------------------

_EXECUTION_FIELDS = tuple(field.name for field in attrs.fields(Execution))
_EXECUTION_COLUMNS = ", ".join(_EXECUTION_FIELDS)
_EXECUTION_TIMES = frozenset({"created_at", "started_at", "completed_at"})
_EXECUTION_DICTS = tuple(i for i, name in enumerate(_EXECUTION_FIELDS) if name in ("data", "usage", "details"))
_EXECUTION_UPDATABLE = frozenset(_EXECUTION_FIELDS) - {"execution_id"}
_STATE_COLUMNS = ("agent_name, state_data, conversation_history, metadata, version, created_at, updated_at, "
                  "last_activity")
_SCHEDULE_COLUMNS = ("schedule_name, agent_name, schedule_type, schedule_config, task_data, enabled, created_at, "
                     "updated_at, last_execution")
_DEAD_LETTER_COLUMNS = "id, execution_id, agent_name, routing_key, payload, error_message, attempts, failed_at"
#: Each execution column's type in the arrays of a batched statement; JSONB travels as text (a list value
#: would otherwise read as another array dimension) and is cast back in the statement.
_EXECUTION_ARRAY_TYPES = {
    "execution_id": "text", "agent_name": "text", "task_type": "text", "status": "text", "input": "jsonb",
    "data": "jsonb", "result": "jsonb", "error_message": "text", "trace_id": "text", "usage": "jsonb",
    "details": "jsonb", "attempts": "int4", "idempotency_key": "text", "parent_execution_id": "text",
    "created_at": "timestamptz", "started_at": "timestamptz", "completed_at": "timestamptz",
    "duration_seconds": "float8",
}
_CLAIMABLE = ("queued", "running")
_TERMINAL = sorted(TERMINAL_STATUSES)

#: One encoder for every JSONB value: json.dumps with options builds a new encoder per call.
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _utc(value: datetime | None) -> datetime | None:
    """A timestamp to store: naive means UTC (as in the SQLite store), aware ones keep their instant."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _execution_value(field: str, value: Any) -> Any:
    return _utc(value) if field in _EXECUTION_TIMES else value


def _array(field: str, values: Sequence[Any]) -> list[Any]:
    """One column of a batch, as the array parameter ``_unnest`` declares for it."""
    if _EXECUTION_ARRAY_TYPES[field] == "jsonb":
        return [None if value is None else _encode_json(value) for value in values]
    return [_execution_value(field, value) for value in values]


def _unnest(fields: Sequence[str], alias: str) -> str:
    """``unnest($1::text[], …) AS alias(field, …)``: one row per write of a batch, a parameter per column."""
    arrays = ", ".join(f"${i}::{_EXECUTION_ARRAY_TYPES[field].replace('jsonb', 'text')}[]"
                       for i, field in enumerate(fields, 1))
    return f"unnest({arrays}) AS {alias}({', '.join(fields)})"


def _recordset(fields: Sequence[str], alias: str) -> str:
    """``json_to_recordset($1::text::json) AS alias(field type, …)``: the rows of a batch in one JSON parameter.

    What the hottest batch (an execution's end, stored with its row) sends instead of ``_unnest``'s
    array per column: asyncpg checks every element of an array parameter against three abstract base
    classes before encoding it, and one JSON text built by the C encoder costs the client about a
    quarter less per row (the server about the same)."""
    columns = ", ".join(f"{field} {_EXECUTION_ARRAY_TYPES[field]}" for field in fields)
    return f"json_to_recordset($1::text::json) AS {alias}({columns})"  # text: not through the json codec


def _rows_json(rows: Sequence[Execution]) -> str:
    """Executions as the JSON array ``_recordset`` reads: each column by name, timestamps in ISO 8601 (a
    naive one as UTC), JSON columns as the values themselves."""
    out = []
    for row in rows:
        values: dict[str, Any] = {}
        for field in _INSERT_COLUMNS:
            value = getattr(row, field)
            if field in _EXECUTION_TIMES and value is not None:
                value = _utc(value).isoformat()
            values[field] = value
        out.append(values)
    return _encode_json(out)


def _column(field: str, alias: str) -> str:
    """A column of an ``_unnest`` row, back in its own type."""
    return f"{alias}.{field}::jsonb" if _EXECUTION_ARRAY_TYPES[field] == "jsonb" else f"{alias}.{field}"


def _execution(row: asyncpg.Record) -> Execution:
    values = list(row)
    for index in _EXECUTION_DICTS:
        if values[index] is None:  # a row written by other tools may leave them NULL
            values[index] = {}
    return Execution(*values)


def _state(row: asyncpg.Record) -> AgentState:
    return AgentState(
        agent_name=row["agent_name"],
        state_data=row["state_data"] if row["state_data"] is not None else {},
        conversation_history=row["conversation_history"] if row["conversation_history"] is not None else [],
        metadata=row["metadata"] if row["metadata"] is not None else {},
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_activity=row["last_activity"],
    )


def _schedule(row: asyncpg.Record) -> Schedule:
    return Schedule(
        schedule_name=row["schedule_name"],
        agent_name=row["agent_name"],
        schedule_type=row["schedule_type"],
        schedule_config=row["schedule_config"] if row["schedule_config"] is not None else {},
        task_data=row["task_data"] if row["task_data"] is not None else {},
        enabled=bool(row["enabled"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_execution=row["last_execution"],
    )


def _dead_letter(row: asyncpg.Record) -> DeadLetter:
    return DeadLetter(*row)


def _affected(status: str) -> int:
    """The row count of a command tag such as ``UPDATE 1`` or ``DELETE 0``."""
    return int(status.rpartition(" ")[2] or 0)


def _encode_cursor(created_at: datetime, execution_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), execution_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, execution_id = json.loads(raw)
        if not isinstance(created_at, str) or not isinstance(execution_id, str):
            raise ValueError
        moment = datetime.fromisoformat(created_at)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValueError(f"invalid cursor: {cursor!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC), execution_id


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: the store changes no session state (no SET, LISTEN or advisory lock on pooled
    connections), so asyncpg's default ``RESET ALL`` round trip on every release is pure cost.
    asyncpg still rolls back a transaction left open before calling this."""


class PostgresStateStore:
    """The PostgreSQL state store (``STATE_BACKEND=postgres``), see the module docstring.

    ``auto_migrate`` (the ``migrate`` argument, default True): ``start()`` applies the migrations;
    when False it only checks that they were applied (``agentrunner db migrate`` applies them).
    """

    name = "postgres"

    def __init__(self, settings: Any, *, migrate: bool | None = None) -> None:
        # Imported here, not at start(): `agentrunner worker` builds the platform once before it forks, and
        # its fork server preloads what is imported by then, so no recycled child imports asyncpg again.
        import asyncpg  # noqa: F401

        self.config = ConnectionConfig.from_settings(settings)
        # DB_AUTO_MIGRATE=false: start() only checks the schema (`agentrunner db migrate` is a deploy step)
        self.auto_migrate = migrate if migrate is not None else bool(getattr(settings, "db_auto_migrate", True))
        self._pool: asyncpg.Pool | None = None
        # group commit of the task path's writes (see batching): creates, claims, updates by shape
        self._creates: GroupWriter[Execution, tuple[Execution, bool]] = GroupWriter(
            self._create_batch, key=lambda execution: execution.execution_id)
        self._claims: GroupWriter[tuple[str, datetime | None], Execution | None] = GroupWriter(
            self._claim_batch, key=lambda claim: claim[0])
        self._updates: dict[tuple[Any, ...], GroupWriter[tuple[str, tuple[Any, ...]], bool]] = {}

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Migrate (or check the schema), then open the pool; raise ``StoreUnavailable`` naming what to check."""
        if self._pool is not None:
            return
        if self.config.dsn is None:
            raise StoreUnavailable("the postgres state store needs DATABASE_URL or POSTGRES_HOST")
        if self.auto_migrate:
            await self.migrate()
        pool = await self._create_pool()
        try:
            if not self.auto_migrate:
                await self._check_schema(pool)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool
        log.info("PostgreSQL state store at %s: pool of %d to %d connections", self.config.target,
                 self.config.min_size, self.config.max_size)

    async def stop(self) -> None:
        """Close the pool, waiting up to POSTGRES_POOL_TIMEOUT for operations in flight."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.config.pool_timeout)
        except Exception:  # timed out, or a connection failed to close: drop them all
            pool.terminate()

    async def health(self) -> None:
        """Raise ``StoreUnavailable`` unless the store is started and the database answers."""
        await self._run(lambda conn, _retry: conn.fetchval("SELECT 1"), "the health check")

    async def migrate(self, progress: Progress | None = None) -> list[str]:
        """Apply the migrations not applied yet (see ``migrations``); return their file names.

        Works on a stopped store too (``agentrunner db migrate``): it uses a connection of its own.
        ``progress`` is called with a line of text per file applied.
        """
        import asyncpg

        migrations = load_migrations()
        async with self._admin_connection() as conn:
            try:
                return await apply_migrations(conn, migrations, progress)
            except MigrationError:
                raise
            except Exception as exc:
                if is_outage(exc):
                    raise self.config.unavailable(exc, "the migrations") from exc
                if isinstance(exc, asyncpg.PostgresError):  # e.g. a role that may not create tables
                    raise MigrationError(self.config.mask(
                        f"cannot migrate the database at {self.config.target}: {type(exc).__name__}: {exc}")) from exc
                raise

    async def maintenance(self, *, execution_days: float = 90, state_days: float = 30, vacuum: bool = True,
                          progress: Progress | None = None) -> dict[str, Any]:
        """The reference's "Database Maintenance"; returns what it did.

        Deletes finished executions that started more than ``execution_days`` ago (never started:
        created), agent state whose ``last_activity`` is older than ``state_days``, and schedule tick
        claims older than ``CLAIM_RETENTION``; then ``VACUUM ANALYZE`` of agent_state, execution_history
        and schedules (outside any transaction). Executions that are not finished are never deleted.
        """
        if execution_days < 0 or state_days < 0:
            raise ValueError("maintenance ages must not be negative")
        now = utcnow()
        report: dict[str, Any] = {}

        def say(message: str) -> None:
            log.info("maintenance: %s", message)
            if progress is not None:
                progress(message)

        async with self._admin_connection() as conn:
            try:
                report["executions_deleted"] = _affected(await conn.execute(
                    "DELETE FROM execution_history WHERE status = ANY($1::text[]) "
                    "AND (started_at < $2 OR (started_at IS NULL AND created_at < $2))",
                    _TERMINAL, now - timedelta(days=execution_days)))
                say(f"deleted {report['executions_deleted']} finished executions older than {execution_days:g} days")
                report["states_deleted"] = _affected(await conn.execute(
                    "DELETE FROM agent_state WHERE last_activity < $1", now - timedelta(days=state_days)))
                say(f"deleted {report['states_deleted']} agent states inactive for {state_days:g} days")
                report["schedule_claims_deleted"] = _affected(await conn.execute(
                    "DELETE FROM schedule_runs WHERE fire_time < $1", now - CLAIM_RETENTION))
                say(f"deleted {report['schedule_claims_deleted']} schedule tick claims")
                report["vacuumed"] = []
                if vacuum:
                    for table in ("agent_state", "execution_history", "schedules"):
                        await conn.execute(f"VACUUM ANALYZE {table}")
                        report["vacuumed"].append(table)
                        say(f"vacuumed and analyzed {table}")
            except Exception as exc:
                if is_outage(exc):
                    raise self.config.unavailable(exc, "the maintenance") from exc
                raise
        return report

    async def _create_pool(self) -> asyncpg.Pool:
        import asyncpg

        try:
            return await asyncpg.create_pool(
                **self.config.connect_kwargs(),
                min_size=self.config.min_size,
                max_size=self.config.max_size,
                init=self._init_connection,
                reset=_keep_session,
            )
        except Exception as exc:
            raise self.config.connect_error(exc) from exc

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        for type_name in ("jsonb", "json"):
            await conn.set_type_codec(type_name, encoder=_encode_json, decoder=json.loads, schema="pg_catalog")
        if self.config.echo_sql:
            conn.add_query_logger(_log_query)

    @contextlib.asynccontextmanager
    async def _admin_connection(self) -> Any:
        """A connection of its own, without statement timeout, for migrations and maintenance."""
        import asyncpg

        try:
            conn = await asyncpg.connect(**self.config.connect_kwargs(admin=True))
        except Exception as exc:
            raise self.config.connect_error(exc) from exc
        if self.config.echo_sql:
            conn.add_query_logger(_log_query)
        try:
            yield conn
        finally:
            try:
                await asyncio.wait_for(conn.close(), self.config.pool_timeout)
            except Exception:  # the server went away: nothing to close politely
                conn.terminate()

    async def _check_schema(self, pool: asyncpg.Pool) -> None:
        migrations = load_migrations()
        try:
            async with pool.acquire(timeout=self.config.pool_timeout) as conn:
                missing = await missing_migrations(conn, migrations)
        except Exception as exc:
            raise self.config.connect_error(exc) from exc
        if missing:
            raise StoreUnavailable(f"the database at {self.config.target} lacks migrations {', '.join(missing)}: "
                                   f"run `agentrunner db migrate` (the store was built with migrate=False)")

    # --- running statements -----------------------------------------------------------------

    async def _run(self, op: Callable[[asyncpg.Connection, bool], Awaitable[T]], doing: str) -> T:
        """Run ``op(conn, retry)`` on a pooled connection. When the connection dies under it, run it
        once more on a new one with ``retry=True``: the op then recognises its own committed write."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("the PostgreSQL state store is not started")
        for attempt in range(2):
            try:
                conn = await pool.acquire(timeout=self.config.pool_timeout)
            except Exception as exc:
                raise self._acquire_error(pool, exc) from exc
            try:
                return await op(conn, attempt > 0)
            except Exception as exc:
                lost = is_connection_lost(exc)
                if lost:
                    # A server restart or failover takes every connection: drop this one and have the
                    # pool replace the others as they are next used, so the retry gets a live one.
                    with contextlib.suppress(Exception):
                        conn.terminate()
                    await pool.expire_connections()
                if lost and attempt == 0:
                    log.info("the connection to PostgreSQL was lost during %s (%s): trying once more", doing,
                             type(exc).__name__)
                    continue
                if is_outage(exc):
                    raise self.config.unavailable(exc, doing) from exc
                raise
            finally:
                with contextlib.suppress(Exception):  # asyncpg terminates a connection it cannot reset
                    await pool.release(conn, timeout=self.config.pool_timeout)
        raise AssertionError("unreachable")

    def _acquire_error(self, pool: asyncpg.Pool, exc: BaseException) -> StoreUnavailable:
        if self._pool is not pool or pool.is_closing():
            return StoreUnavailable("the PostgreSQL state store was stopped")
        if isinstance(exc, TimeoutError) and pool.get_size() >= pool.get_max_size() and not pool.get_idle_size():
            return StoreUnavailable(
                f"no free connection to PostgreSQL at {self.config.target} within {self.config.pool_timeout:g} s: "
                f"all {pool.get_max_size()} are busy (POSTGRES_MAX_POOL_SIZE + POSTGRES_POOL_MAX_OVERFLOW, "
                f"POSTGRES_POOL_TIMEOUT)")
        return self.config.connect_error(exc)

    # --- executions ---------------------------------------------------------------------------

    async def create_execution(self, execution: Execution) -> tuple[Execution, bool]:
        """Store a new execution, or return ``(the existing one, False)`` when the agent already used its
        idempotency key or the execution id is stored (a redelivered task): the unique constraints decide.

        Concurrent creates are group-committed (``batching``): one INSERT for all of them, in which a
        duplicate key skips its own row only, then looks the winner up as a lone create would."""
        return await self._creates.submit(execution)

    def _create_op(self, execution: Execution
                   ) -> Callable[[asyncpg.Connection, bool], Awaitable[tuple[Execution, bool]]]:
        """One create, as a statement of its own (and the way a batch's losers find their winner)."""
        values = [_execution_value(field, getattr(execution, field)) for field in _EXECUTION_FIELDS]
        values.append(execution.duration_seconds)

        async def op(conn: asyncpg.Connection, retry: bool) -> tuple[Execution, bool]:
            # A winner can vanish between the two statements (deleted by maintenance): insert again.
            for _ in range(3):
                if await conn.fetchval(_INSERT_EXECUTION, *values):
                    return execution, True
                row = await conn.fetchrow(_EXISTING_EXECUTION, execution.agent_name, execution.idempotency_key,
                                          execution.execution_id)
                if row is not None:
                    # Ids are new per submission: on a retry, a row with ours is our own first insert.
                    return _execution(row), retry and row["execution_id"] == execution.execution_id
            raise StoreUnavailable(f"the execution {execution.execution_id} conflicts with a row that keeps vanishing")

        return op

    async def _create_batch(self, executions: Sequence[Execution]) -> list[tuple[Execution, bool]]:
        columns = _INSERT_COLUMNS
        arrays = [_array(field, [getattr(execution, field) for execution in executions]) for field in columns]

        async def op(conn: asyncpg.Connection, retry: bool) -> list[tuple[Execution, bool]]:
            if retry or len(executions) == 1:  # a lone write, or a retry: the single statement's checks
                return [await self._create_op(execution)(conn, retry) for execution in executions]
            inserted = {row[0] for row in await conn.fetch(_INSERT_EXECUTIONS, *arrays)}
            return [(execution, True) if execution.execution_id in inserted
                    else await self._create_op(execution)(conn, False) for execution in executions]

        return await self._run(op, "create_execution")

    async def get_execution(self, execution_id: str) -> Execution | None:
        sql = f"SELECT {_EXECUTION_COLUMNS} FROM execution_history WHERE execution_id = $1"

        async def op(conn: asyncpg.Connection, _retry: bool) -> Execution | None:
            row = await conn.fetchrow(sql, execution_id)
            return _execution(row) if row is not None else None

        return await self._run(op, "get_execution")

    async def update_execution(self, execution_id: str, *, expect_status: Sequence[str] | None = None,
                               insert: Execution | None = None, **fields: Any) -> bool:
        """Set ``fields``; with ``expect_status`` only while the status is one of them (compare-and-set).
        Returns whether the execution was updated. An unknown field is a ``TypeError``. ``insert``: when
        no execution has this id, store ``insert`` with ``fields`` applied instead (one upsert statement;
        with ``expect_status=()`` an insert that leaves a stored execution as it is).

        Concurrent updates of the same fields and expected statuses are group-committed (``batching``)."""
        if isinstance(expect_status, str):
            expect_status = [expect_status]
        unknown = set(fields) - _EXECUTION_UPDATABLE
        if unknown:
            raise TypeError(f"update_execution() got unknown execution field(s): {', '.join(sorted(unknown))}")
        if expect_status is not None and not expect_status and insert is None:
            return False
        kind = (tuple(fields), tuple(expect_status) if expect_status is not None else None, insert is not None)
        writer = self._updates.get(kind)
        if writer is None:
            shape = _UpdateShape(*kind[:2])
            write = self._upsert_batch if insert is not None else self._update_batch
            writer = self._updates[kind] = GroupWriter(lambda updates: write(shape, updates),
                                                       key=lambda update: update[0])
        if insert is None:
            return await writer.submit((execution_id, tuple(fields.values())))
        if insert.execution_id != execution_id:
            raise ValueError(f"update_execution({execution_id!r}): insert is execution {insert.execution_id!r}")
        return await writer.submit((execution_id, tuple(fields.values()), attrs.evolve(insert, **fields)))

    async def _update_batch(self, shape: _UpdateShape, updates: Sequence[tuple[str, tuple[Any, ...]]]) -> list[bool]:
        async def op(conn: asyncpg.Connection, retry: bool) -> list[bool]:
            if retry or len(updates) == 1:
                return [await shape.run_one(conn, retry, execution_id, values) for execution_id, values in updates]
            return await shape.run_many(conn, updates)

        return await self._run(op, "update_execution")

    async def _upsert_batch(self, shape: _UpdateShape,
                            upserts: Sequence[tuple[str, tuple[Any, ...], Execution]]) -> list[bool]:
        rows = _rows_json([row for _, _, row in upserts])
        statuses = [shape.expect_status] if shape.expect_status is not None else []

        async def op(conn: asyncpg.Connection, retry: bool) -> list[bool]:
            changed = {row[0] for row in await conn.fetch(shape.upsert, rows, *statuses)}
            if not retry or shape.expect_status is None:
                return [execution_id in changed for execution_id, _, _ in upserts]
            # after a lost connection: an upsert that did commit finds its own values now
            return [execution_id in changed or await shape.run_landed(conn, execution_id, values)
                    for execution_id, values, _ in upserts]

        return await self._run(op, "update_execution")

    async def claim_execution(self, execution_id: str, started_at: datetime, *,
                              insert: Execution | None = None) -> Execution | None:
        """Start an attempt (``queued``/``running`` → ``running``, attempts + 1) and return the execution,
        in one statement; row locks apply concurrent claims one after the other. Concurrent claims of
        different executions are group-committed (``batching``). ``insert``: the execution as submitted,
        stored first (then claimed) when no execution has this id — one upsert statement."""
        if insert is not None and insert.execution_id != execution_id:
            raise ValueError(f"claim_execution({execution_id!r}): insert is execution {insert.execution_id!r}")
        return await self._claims.submit((execution_id, _utc(started_at), insert))

    def _claim_op(self, execution_id: str, started: datetime | None, insert: Execution | None = None
                  ) -> Callable[[asyncpg.Connection, bool], Awaitable[Execution | None]]:
        if insert is not None:
            claimed = attrs.evolve(insert, status="running", started_at=started, error_message=None,
                                   attempts=insert.attempts + 1, completed_at=None)
            values = [_execution_value(field, getattr(claimed, field)) for field in _EXECUTION_FIELDS]

        async def op(conn: asyncpg.Connection, retry: bool) -> Execution | None:
            if insert is None:
                row = await conn.fetchrow(_CLAIM_AGAIN if retry else _CLAIM, execution_id, started, _CLAIMABLE)
            else:
                row = await conn.fetchrow(_CLAIM_OR_INSERT_AGAIN if retry else _CLAIM_OR_INSERT, *values, _CLAIMABLE)
            if row is None and retry:
                row = await conn.fetchrow(_OURS, execution_id, started)
            return _execution(row) if row is not None else None

        return op

    async def _claim_batch(self, claims: Sequence[tuple[str, datetime | None, Execution | None]]
                           ) -> list[Execution | None]:
        ids, started = [claim[0] for claim in claims], [claim[1] for claim in claims]

        async def op(conn: asyncpg.Connection, retry: bool) -> list[Execution | None]:
            if retry or len(claims) == 1 or any(claim[2] is not None for claim in claims):
                return [await self._claim_op(*claim)(conn, retry) for claim in claims]
            rows = {row["execution_id"]: row for row in await conn.fetch(_CLAIM_MANY, ids, started, _CLAIMABLE)}
            return [_execution(rows[execution_id]) if execution_id in rows else None for execution_id in ids]

        return await self._run(op, "claim_execution")

    async def list_executions(self, *, agent_name: str | None = None, status: str | None = None,
                              limit: int = 50, cursor: str | None = None) -> tuple[list[Execution], str | None]:
        """Newest first (``created_at``, then id); the cursor is opaque and keeps the filters' order."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        where: list[str] = []
        params: list[Any] = []
        if agent_name is not None:
            params.append(agent_name)
            where.append(f"agent_name = ${len(params)}")
        if status is not None:
            params.append(status)
            where.append(f"status = ${len(params)}")
        if cursor is not None:
            params.extend(_decode_cursor(cursor))
            where.append(f"(created_at, execution_id) < (${len(params) - 1}, ${len(params)})")
        sql = f"SELECT {_EXECUTION_COLUMNS} FROM execution_history"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.append(limit + 1)
        sql += f" ORDER BY created_at DESC, execution_id DESC LIMIT ${len(params)}"

        async def op(conn: asyncpg.Connection, _retry: bool) -> list[asyncpg.Record]:
            return await conn.fetch(sql, *params)

        rows = await self._run(op, "list_executions")
        page = [_execution(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = _encode_cursor(page[-1].created_at, page[-1].execution_id)
        return page, next_cursor

    async def executions_with_status(self, statuses: Sequence[str]) -> list[Execution]:
        """Executions in these statuses, oldest first (recovery after a restart)."""
        statuses = [statuses] if isinstance(statuses, str) else list(statuses)
        if not statuses:
            return []
        sql = (f"SELECT {_EXECUTION_COLUMNS} FROM execution_history WHERE status = ANY($1::text[]) "
               "ORDER BY created_at, execution_id")

        async def op(conn: asyncpg.Connection, _retry: bool) -> list[asyncpg.Record]:
            return await conn.fetch(sql, statuses)

        return [_execution(row) for row in await self._run(op, "executions_with_status")]

    # --- agent state ---------------------------------------------------------------------------

    async def get_state(self, agent_name: str) -> AgentState | None:
        sql = f"SELECT {_STATE_COLUMNS} FROM agent_state WHERE agent_name = $1"

        async def op(conn: asyncpg.Connection, _retry: bool) -> AgentState | None:
            row = await conn.fetchrow(sql, agent_name)
            return _state(row) if row is not None else None

        return await self._run(op, "get_state")

    async def put_state(self, state: AgentState, *, expect_version: int | None = None) -> AgentState:
        """Write the state with the next version and return it as stored (``created_at`` of the first
        write, ``updated_at`` now). With ``expect_version`` (0: no state stored yet) a different stored
        version raises ``StateConflict``. One conditional statement decides, so writers in other
        processes are refused just the same."""
        name = state.agent_name
        updated_at = utcnow()
        data = (state.state_data, state.conversation_history, state.metadata)
        returning = " RETURNING version, created_at"
        if expect_version is None or expect_version == 0:
            params: tuple[Any, ...] = (name, *data, _utc(state.created_at), updated_at, _utc(state.last_activity))
            insert = (f"INSERT INTO agent_state ({_STATE_COLUMNS}) VALUES ($1, $2, $3, $4, 1, $5, $6, $7) "
                      "ON CONFLICT (agent_name) DO ")
            if expect_version == 0:
                first = again = insert + "NOTHING" + returning
            else:
                upsert = insert + (
                    "UPDATE SET state_data = EXCLUDED.state_data, "
                    "conversation_history = EXCLUDED.conversation_history, metadata = EXCLUDED.metadata, "
                    "version = agent_state.version + 1, "
                    "updated_at = EXCLUDED.updated_at, last_activity = EXCLUDED.last_activity")
                first = upsert + returning
                # After a lost connection, a row with our updated_at is our own first write: do not write twice.
                again = upsert + " WHERE agent_state.updated_at IS DISTINCT FROM EXCLUDED.updated_at" + returning
        else:
            params = (name, *data, updated_at, _utc(state.last_activity), expect_version)
            first = again = ("UPDATE agent_state SET state_data = $2, conversation_history = $3, metadata = $4, "
                             "version = version + 1, updated_at = $5, last_activity = $6 "
                             "WHERE agent_name = $1 AND version = $7" + returning)
        ours = "SELECT version, created_at FROM agent_state WHERE agent_name = $1 AND updated_at = $2"

        async def op(conn: asyncpg.Connection, retry: bool) -> tuple[int, datetime]:
            row = await conn.fetchrow(again if retry else first, *params)
            if row is None and retry:
                row = await conn.fetchrow(ours, name, updated_at)
            if row is None:
                current = await conn.fetchval("SELECT version FROM agent_state WHERE agent_name = $1", name)
                raise StateConflict(f"the state of agent {name!r} is at version {current or 0}, "
                                    f"not {expect_version}")
            return row["version"], row["created_at"]

        version, created_at = await self._run(op, "put_state")
        return attrs.evolve(state, version=version, created_at=created_at, updated_at=updated_at)

    async def delete_state(self, agent_name: str) -> bool:
        async def op(conn: asyncpg.Connection, _retry: bool) -> bool:
            return bool(_affected(await conn.execute("DELETE FROM agent_state WHERE agent_name = $1", agent_name)))

        return await self._run(op, "delete_state")

    # --- schedules ------------------------------------------------------------------------------

    async def upsert_schedule(self, schedule: Schedule) -> None:
        """Insert or replace a schedule by name; an existing one keeps its ``created_at``."""
        sql = (f"INSERT INTO schedules ({_SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
               "ON CONFLICT (schedule_name) DO UPDATE SET agent_name = EXCLUDED.agent_name, "
               "schedule_type = EXCLUDED.schedule_type, schedule_config = EXCLUDED.schedule_config, "
               "task_data = EXCLUDED.task_data, enabled = EXCLUDED.enabled, updated_at = EXCLUDED.updated_at, "
               "last_execution = EXCLUDED.last_execution")
        params = (schedule.schedule_name, schedule.agent_name, schedule.schedule_type, schedule.schedule_config,
                  schedule.task_data, bool(schedule.enabled), _utc(schedule.created_at), _utc(schedule.updated_at),
                  _utc(schedule.last_execution))

        async def op(conn: asyncpg.Connection, _retry: bool) -> None:
            await conn.execute(sql, *params)

        await self._run(op, "upsert_schedule")

    async def get_schedule(self, name: str) -> Schedule | None:
        async def op(conn: asyncpg.Connection, _retry: bool) -> Schedule | None:
            row = await conn.fetchrow(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE schedule_name = $1", name)
            return _schedule(row) if row is not None else None

        return await self._run(op, "get_schedule")

    async def list_schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        async def op(conn: asyncpg.Connection, _retry: bool) -> list[asyncpg.Record]:
            return await conn.fetch(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY schedule_name")

        return [_schedule(row) for row in await self._run(op, "list_schedules")]

    async def delete_schedule(self, name: str) -> bool:
        """Delete a schedule and its tick claims, in one statement."""
        sql = ("WITH claims AS (DELETE FROM schedule_runs WHERE schedule_name = $1) "
               "DELETE FROM schedules WHERE schedule_name = $1")

        async def op(conn: asyncpg.Connection, _retry: bool) -> bool:
            return bool(_affected(await conn.execute(sql, name)))

        return await self._run(op, "delete_schedule")

    async def claim_schedule_tick(self, name: str, fire_time: datetime) -> bool:
        """True for exactly one caller per (schedule, fire time), across processes: the INSERT that wins
        the primary key. Claims older than ``CLAIM_RETENTION`` are pruned on the way, skipping rows
        another claimer is pruning (so claimers never wait on each other)."""
        fire = _utc(fire_time)
        claimed_at = utcnow()
        sql = ("WITH pruned AS (DELETE FROM schedule_runs WHERE (schedule_name, fire_time) IN ("
               "SELECT schedule_name, fire_time FROM schedule_runs WHERE schedule_name = $1 AND fire_time < $4 "
               "FOR UPDATE SKIP LOCKED)) "
               "INSERT INTO schedule_runs (schedule_name, fire_time, claimed_at) VALUES ($1, $2, $3) "
               "ON CONFLICT DO NOTHING RETURNING 1")
        ours = "SELECT claimed_at = $3 FROM schedule_runs WHERE schedule_name = $1 AND fire_time = $2"

        async def op(conn: asyncpg.Connection, retry: bool) -> bool:
            if await conn.fetchval(sql, name, fire, claimed_at, fire - CLAIM_RETENTION):
                return True
            return retry and bool(await conn.fetchval(ours, name, fire, claimed_at))

        return await self._run(op, "claim_schedule_tick")

    # --- dead letters ---------------------------------------------------------------------------

    async def add_dead_letter(self, item: DeadLetter) -> None:
        """Store a dead letter; one with the same id (a redelivery) is replaced."""
        sql = (f"INSERT INTO dead_letters ({_DEAD_LETTER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
               "ON CONFLICT (id) DO UPDATE SET execution_id = EXCLUDED.execution_id, "
               "agent_name = EXCLUDED.agent_name, routing_key = EXCLUDED.routing_key, payload = EXCLUDED.payload, "
               "error_message = EXCLUDED.error_message, attempts = EXCLUDED.attempts, failed_at = EXCLUDED.failed_at")
        params = (item.id, item.execution_id, item.agent_name, item.routing_key, item.payload, item.error_message,
                  item.attempts, _utc(item.failed_at))

        async def op(conn: asyncpg.Connection, _retry: bool) -> None:
            await conn.execute(sql, *params)

        await self._run(op, "add_dead_letter")

    async def list_dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, most recent failure first."""
        async def op(conn: asyncpg.Connection, _retry: bool) -> list[asyncpg.Record]:
            return await conn.fetch(f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY failed_at DESC, id DESC")

        return [_dead_letter(row) for row in await self._run(op, "list_dead_letters")]

    async def get_dead_letter(self, item_id: str) -> DeadLetter | None:
        async def op(conn: asyncpg.Connection, _retry: bool) -> DeadLetter | None:
            row = await conn.fetchrow(f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1", item_id)
            return _dead_letter(row) if row is not None else None

        return await self._run(op, "get_dead_letter")

    async def delete_dead_letter(self, item_id: str) -> bool:
        async def op(conn: asyncpg.Connection, _retry: bool) -> bool:
            return bool(_affected(await conn.execute("DELETE FROM dead_letters WHERE id = $1", item_id)))

        return await self._run(op, "delete_dead_letter")


# --- statements of the task path -----------------------------------------------------------

_INSERT_COLUMNS = (*_EXECUTION_FIELDS, "duration_seconds")
_INSERT_EXECUTION = (f"INSERT INTO execution_history ({', '.join(_INSERT_COLUMNS)}) "
                     f"VALUES ({', '.join(f'${i}' for i in range(1, len(_INSERT_COLUMNS) + 1))}) "
                     "ON CONFLICT DO NOTHING RETURNING 1")
# A duplicate within the batch or with a stored row skips its own row only (DO NOTHING, not an error).
_INSERT_EXECUTIONS = (f"INSERT INTO execution_history ({', '.join(_INSERT_COLUMNS)}) "
                      f"SELECT {', '.join(_column(field, 't') for field in _INSERT_COLUMNS)} "
                      f"FROM {_unnest(_INSERT_COLUMNS, 't')} ON CONFLICT DO NOTHING RETURNING execution_id")
# Only the loser of the race looks the winner up: the key's first execution before a same-id one.
_EXISTING_EXECUTION = (f"SELECT {_EXECUTION_COLUMNS} FROM execution_history "
                       "WHERE (agent_name = $1 AND idempotency_key = $2) OR execution_id = $3 "
                       "ORDER BY (agent_name = $1 AND idempotency_key = $2) DESC NULLS LAST LIMIT 1")
_CLAIM = (f"UPDATE execution_history SET status = 'running', started_at = $2, error_message = NULL, "
          f"attempts = attempts + 1, duration_seconds = NULL "
          f"WHERE execution_id = $1 AND status = ANY($3::text[]) RETURNING {_EXECUTION_COLUMNS}")
# A retry must not start a second attempt when the first one committed: ours has our started_at.
_CLAIM_AGAIN = _CLAIM.replace(
    " RETURNING", " AND NOT (status = 'running' AND started_at IS NOT DISTINCT FROM $2) RETURNING")
_OURS = (f"SELECT {_EXECUTION_COLUMNS} FROM execution_history "
         "WHERE execution_id = $1 AND status = 'running' AND started_at = $2")
_CLAIM_MANY = ("UPDATE execution_history AS e SET status = 'running', started_at = c.started_at, error_message = NULL, "
               "attempts = e.attempts + 1, duration_seconds = NULL "
               f"FROM {_unnest(('execution_id', 'started_at'), 'c')} "
               "WHERE e.execution_id = c.execution_id AND e.status = ANY($3::text[]) "
               f"RETURNING {', '.join(f'e.{field}' for field in _EXECUTION_FIELDS)}")


# A claim of an execution that may not be stored yet (its task travels whole, recorded when it ends):
# inserted as the claim would leave it, or claimed as it is stored.
_CLAIM_OR_INSERT = (f"INSERT INTO execution_history AS e ({_EXECUTION_COLUMNS}) "
                    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_EXECUTION_FIELDS) + 1))}) "
                    "ON CONFLICT (execution_id) DO UPDATE SET status = 'running', started_at = EXCLUDED.started_at, "
                    "error_message = NULL, attempts = e.attempts + 1, duration_seconds = NULL "
                    f"WHERE e.status = ANY(${len(_EXECUTION_FIELDS) + 1}::text[]) "
                    f"RETURNING {', '.join(f'e.{field}' for field in _EXECUTION_FIELDS)}")
_CLAIM_OR_INSERT_AGAIN = _CLAIM_OR_INSERT.replace(
    " RETURNING", " AND NOT (e.status = 'running' AND e.started_at IS NOT DISTINCT FROM EXCLUDED.started_at) RETURNING")


class _UpdateShape:
    """The fields an update sets and the statuses it expects: updates of one shape share their statements,
    one for a lone update (``$1`` the id, then the values, then the statuses) and one for a batch."""

    def __init__(self, fields: tuple[str, ...], expect_status: tuple[str, ...] | None) -> None:
        self.fields = fields
        self.expect_status = list(expect_status) if expect_status is not None else None
        slots = {field: f"${i}" for i, field in enumerate(fields, 2)}
        assignments = [f"{field} = {slot}" for field, slot in slots.items()]
        batch = [f"{field} = {_column(field, 'u')}" for field in fields]
        if "started_at" in fields or "completed_at" in fields:
            # duration_seconds mirrors the reference's column; SET sees the old values, so use the new ones.
            ends = {}
            for end in ("started_at", "completed_at"):
                ends[end] = (f"{slots[end]}::timestamptz", f"u.{end}") if end in slots else (end, f"e.{end}")
            duration = "duration_seconds = round(EXTRACT(EPOCH FROM ({} - {}))::numeric, 6)"
            assignments.append(duration.format(ends["completed_at"][0], ends["started_at"][0]))
            batch.append(duration.format(ends["completed_at"][1], ends["started_at"][1]))
        self.one = f"UPDATE execution_history SET {', '.join(assignments) or 'execution_id = execution_id'} " \
                   "WHERE execution_id = $1"
        self.many = (f"UPDATE execution_history AS e SET {', '.join(batch) or 'execution_id = e.execution_id'} "
                     f"FROM {_unnest(('execution_id', *fields), 'u')} WHERE e.execution_id = u.execution_id")
        if self.expect_status is not None:
            self.one += f" AND status = ANY(${len(fields) + 2}::text[])"
            self.many += f" AND e.status = ANY(${len(fields) + 2}::text[])"
        self.many += " RETURNING e.execution_id"
        # The same update of an execution that may not be stored yet: its whole row is inserted instead.
        excluded = [f"{field} = EXCLUDED.{field}" for field in fields]
        if "started_at" in fields or "completed_at" in fields:
            ends = {end: f"EXCLUDED.{end}" if end in fields else f"e.{end}" for end in ("started_at", "completed_at")}
            excluded.append(duration.format(ends["completed_at"], ends["started_at"]))
        self.upsert = (f"INSERT INTO execution_history AS e ({', '.join(_INSERT_COLUMNS)}) "
                       f"SELECT {', '.join(f'u.{field}' for field in _INSERT_COLUMNS)} "
                       f"FROM {_recordset(_INSERT_COLUMNS, 'u')} ON CONFLICT (execution_id) DO UPDATE SET "
                       f"{', '.join(excluded) or 'execution_id = e.execution_id'}")
        if self.expect_status is not None:
            self.upsert += " WHERE e.status = ANY($2::text[])"
        self.upsert += " RETURNING e.execution_id"
        # After a lost connection: did our first attempt already set these values?
        self.landed = "SELECT 1 FROM execution_history WHERE execution_id = $1" + "".join(
            f" AND {field} IS NOT DISTINCT FROM {slot}" for field, slot in slots.items())

    def params(self, execution_id: str, values: tuple[Any, ...]) -> list[Any]:
        """``$1`` the id, then the values (of ``one`` and ``landed``)."""
        return [execution_id, *(_execution_value(field, value) for field, value in zip(self.fields, values,
                                                                                        strict=True))]

    async def run_one(self, conn: asyncpg.Connection, retry: bool, execution_id: str,
                      values: tuple[Any, ...]) -> bool:
        params = self.params(execution_id, values)
        statuses = [self.expect_status] if self.expect_status is not None else []
        if _affected(await conn.execute(self.one, *params, *statuses)):
            return True
        if retry and self.expect_status is not None:
            return bool(await conn.fetchval(self.landed, *params))
        return False

    async def run_landed(self, conn: asyncpg.Connection, execution_id: str, values: tuple[Any, ...]) -> bool:
        return bool(await conn.fetchval(self.landed, *self.params(execution_id, values)))

    async def run_many(self, conn: asyncpg.Connection, updates: Sequence[tuple[str, tuple[Any, ...]]]) -> list[bool]:
        ids = [execution_id for execution_id, _ in updates]
        arrays = [_array(field, [values[i] for _, values in updates]) for i, field in enumerate(self.fields)]
        statuses = [self.expect_status] if self.expect_status is not None else []
        changed = {row[0] for row in await conn.fetch(self.many, ids, *arrays, *statuses)}
        return [execution_id in changed for execution_id in ids]


def _log_query(record: Any) -> None:
    """POSTGRES_ECHO_SQL: the statement's text and duration; its parameters (agent data) never."""
    outcome = f" failed: {type(record.exception).__name__}" if record.exception is not None else ""
    sql_log.info("%s [%.1f ms]%s", " ".join(record.query.split()), record.elapsed * 1000, outcome)
