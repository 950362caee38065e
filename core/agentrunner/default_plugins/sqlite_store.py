"""The embedded state store: executions, agent state, schedules and dead letters in one SQLite file.

It is the default ``sqlite`` state store, used when no PostgreSQL is configured.
The file (``SQLITE_PATH``, default ``agentrunner.db``) holds the same tables as
``sql/`` (JSON as text, timestamps as ISO-8601 UTC text) and a schema version in
``PRAGMA user_version``. ``:memory:`` gives a private database that disappears
on ``stop()`` (a temporary file, so that it behaves exactly like a real one).

Writes never serialise the platform on one fsync each: they go to a single
writer connection through a queue, and a writer task group-commits, applying
whatever is queued (up to ``max_batch`` operations) in one transaction. Each
operation that writes more than once runs inside its own SAVEPOINT, so a failing
operation fails only its own caller; a caller's await returns once its batch is
committed, so an acknowledged write is durable. The database runs in WAL mode
with ``synchronous=NORMAL``: a commit survives the process being killed (not
necessarily a power cut), and reads, on separate connections, never wait for
the writer.

Where the work happens: a commit in WAL mode only appends a few pages to the
WAL file (a write into the page cache, no fsync), so the task path's batches
run on the event loop itself, each a few hundred microseconds for a few dozen
writes; handing them to a thread cost more (thread wake-ups and the GIL going
back and forth) than the work. What may take long runs in the writer thread:
checkpoints (copying the WAL into the database, with its fsync), every
``checkpoint_every`` batches, and ``heavy`` operations such as the maintenance's
deletes. Reads run in aiosqlite's threads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import operator
import os
import shutil
import sqlite3
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

import agentrunner
from agentrunner.interfaces import StateConflict, StoreUnavailable
from agentrunner.records import AgentState, DeadLetter, Execution, Schedule, utcnow

if TYPE_CHECKING:
    import aiosqlite

log = logging.getLogger("agentrunner.store.sqlite")

#: The schema version this module writes (``PRAGMA user_version``).
SCHEMA_VERSION = 1

#: Schedule tick claims older than this (relative to a new claim) are pruned.
CLAIM_RETENTION = timedelta(days=7)

_SCHEMA_V1 = (
    """CREATE TABLE IF NOT EXISTS agent_state (
        agent_name           TEXT PRIMARY KEY,
        state_data           TEXT NOT NULL,
        conversation_history TEXT,
        metadata             TEXT,
        version              INTEGER NOT NULL DEFAULT 0,
        created_at           TEXT NOT NULL,
        updated_at           TEXT NOT NULL,
        last_activity        TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS idx_agent_state_updated ON agent_state(updated_at)",
    "CREATE INDEX IF NOT EXISTS idx_agent_state_last_activity ON agent_state(last_activity)",
    """CREATE TABLE IF NOT EXISTS execution_history (
        execution_id        TEXT PRIMARY KEY,
        agent_name          TEXT NOT NULL,
        task_type           TEXT,
        status              TEXT,
        started_at          TEXT,
        completed_at        TEXT,
        duration_seconds    REAL,
        result              TEXT,
        error_message       TEXT,
        trace_id            TEXT,
        created_at          TEXT NOT NULL,
        input               TEXT,
        data                TEXT,
        usage               TEXT,
        details             TEXT,
        attempts            INTEGER NOT NULL DEFAULT 0,
        idempotency_key     TEXT,
        parent_execution_id TEXT,
        CONSTRAINT uq_execution_idempotency UNIQUE (agent_name, idempotency_key)
    )""",
    # Listing is newest first, filtered by agent or status: these serve both the lookup and the order.
    "CREATE INDEX IF NOT EXISTS idx_execution_agent ON execution_history(agent_name, created_at, execution_id)",
    "CREATE INDEX IF NOT EXISTS idx_execution_status ON execution_history(status, created_at, execution_id)",
    "CREATE INDEX IF NOT EXISTS idx_execution_started ON execution_history(started_at)",
    "CREATE INDEX IF NOT EXISTS idx_execution_created ON execution_history(created_at, execution_id)",
    """CREATE INDEX IF NOT EXISTS idx_execution_parent ON execution_history(parent_execution_id)
        WHERE parent_execution_id IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS schedules (
        schedule_name   TEXT PRIMARY KEY,
        agent_name      TEXT NOT NULL,
        schedule_type   TEXT NOT NULL,
        schedule_config TEXT NOT NULL,
        task_data       TEXT,
        enabled         INTEGER NOT NULL DEFAULT 1,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        last_execution  TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS idx_schedules_agent ON schedules(agent_name)",
    "CREATE INDEX IF NOT EXISTS idx_schedules_enabled ON schedules(enabled)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id            TEXT PRIMARY KEY,
        execution_id  TEXT NOT NULL,
        agent_name    TEXT NOT NULL,
        routing_key   TEXT NOT NULL,
        payload       TEXT NOT NULL,
        error_message TEXT NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        failed_at     TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS idx_dead_letters_failed ON dead_letters(failed_at, id)",
    "CREATE INDEX IF NOT EXISTS idx_dead_letters_agent ON dead_letters(agent_name)",
    """CREATE TABLE IF NOT EXISTS schedule_runs (
        schedule_name TEXT NOT NULL,
        fire_time     TEXT NOT NULL,
        claimed_at    TEXT NOT NULL,
        PRIMARY KEY (schedule_name, fire_time)
    ) WITHOUT ROWID""",
)

#: Schema version → the statements that bring the previous version to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _SCHEMA_V1}


# --- Values ↔ columns ------------------------------------------------------------


def _ts(value: datetime | None) -> str | None:
    """A timestamp as fixed-width ISO-8601 UTC text (so text order is time order); naive means UTC."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


#: One encoder for every value: json.dumps with options builds a new encoder per call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _json(value: Any) -> str | None:
    if value is None:
        return None
    if value == {}:  # most data/usage/details of a new execution
        return "{}"
    return _encode(value)


def _load(text: str | None, default: Callable[[], Any] | None = None) -> Any:
    if text is None:
        return default() if default is not None else None
    return json.loads(text)


_EXECUTION_FIELDS = tuple(field.name for field in attrs.fields(Execution))
_EXECUTION_TIMES = frozenset({"created_at", "started_at", "completed_at"})
_EXECUTION_JSON = frozenset({"input", "result"})
_EXECUTION_JSON_DICTS = frozenset({"data", "usage", "details"})
_EXECUTION_UPDATABLE = frozenset(_EXECUTION_FIELDS) - {"execution_id"}


def _load_dict(text: str | None) -> Any:
    if text is None:
        return {}
    return {} if text == "{}" else json.loads(text)


#: How each column becomes its field (None: as it is), in ``_EXECUTION_FIELDS`` order.
_EXECUTION_DECODERS = tuple(
    (field, _dt if field in _EXECUTION_TIMES else _load_dict if field in _EXECUTION_JSON_DICTS
     else _load if field in _EXECUTION_JSON else None)
    for field in _EXECUTION_FIELDS)
_EXECUTION_ENCODERS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(_EXECUTION_TIMES, _ts), **dict.fromkeys(_EXECUTION_JSON | _EXECUTION_JSON_DICTS, _json)}


#: the encoder of each field of an Execution, in attrs order (None: as it is)
_INSERT_ENCODERS = tuple(_EXECUTION_ENCODERS.get(field) for field in _EXECUTION_FIELDS)
_execution_values = operator.attrgetter(*_EXECUTION_FIELDS)
_INPUT_AT, _DATA_AT = _EXECUTION_FIELDS.index("input"), _EXECUTION_FIELDS.index("data")


def _insert_values(execution: Execution) -> list[Any]:
    """The parameters of ``_INSERT_EXECUTION``."""
    values = [value if encode is None else encode(value)
              for encode, value in zip(_INSERT_ENCODERS, _execution_values(execution), strict=True)]
    values.append(execution.duration_seconds)
    return values


_INSERT_EXECUTION = (f"INSERT INTO execution_history ({', '.join([*_EXECUTION_FIELDS, 'duration_seconds'])}) "
                     f"VALUES ({', '.join('?' * (len(_EXECUTION_FIELDS) + 1))}) "
                     "ON CONFLICT DO NOTHING RETURNING execution_id")
# The unique constraints decide, atomically; only the loser looks the winner up.
_EXISTING_EXECUTION = ("SELECT * FROM execution_history WHERE (agent_name = ? AND idempotency_key = ?) "
                       "OR execution_id = ? ORDER BY (agent_name = ? AND idempotency_key = ?) DESC LIMIT 1")


_CLAIM = ("UPDATE execution_history SET status = 'running', started_at = ?, error_message = NULL, "
          "attempts = attempts + 1, duration_seconds = NULL "
          "WHERE execution_id = ? AND status IN ('queued', 'running') ")
_CLAIM_RETURNING_ROW = _CLAIM + "RETURNING *"
_CLAIM_RETURNING_ATTEMPTS = _CLAIM + "RETURNING attempts"
#: executions inserted and not yet claimed that the store remembers (see claim_execution)
INSERTED_KEPT = 4096

#: UPDATE statements of execution_history by shape (the same few shapes come again and again)
_UPDATES: dict[tuple[tuple[str, ...], tuple[str, ...] | None], _UpdateStatement] = {}
UPDATE_SHAPES_KEPT = 256


class _UpdateStatement:
    """``UPDATE execution_history`` for one set of fields and expected statuses: the SQL, made once,
    and how a call's values become its parameters."""

    def __init__(self, fields: tuple[str, ...], expect_status: tuple[str, ...] | None) -> None:
        assignments = [f"{field} = ?" for field in fields]
        self._encoders = [(field, _EXECUTION_ENCODERS.get(field)) for field in fields]
        #: where the new start or end times that duration_seconds is computed from are among the values
        self._times = [fields.index(field) for field in ("completed_at", "started_at") if field in fields]
        if self._times:
            # duration_seconds mirrors the reference's column; SET sees the old values, so pass the new ones
            ends = ["julianday(?)" if field in fields else f"julianday({field})"
                    for field in ("completed_at", "started_at")]
            assignments.append(f"duration_seconds = round(({ends[0]} - {ends[1]}) * 86400.0, 6)")
        if not assignments:
            assignments.append("execution_id = execution_id")
        sql = f"UPDATE execution_history SET {', '.join(assignments)} WHERE execution_id = ?"
        self._statuses = list(expect_status or ())
        if expect_status is not None:
            sql += f" AND status IN ({', '.join('?' * len(expect_status))})"
        self.sql = sql + " RETURNING 1"

    def params(self, execution_id: str, fields: dict[str, Any]) -> list[Any]:
        params = [fields[field] if encode is None else encode(fields[field]) for field, encode in self._encoders]
        params.extend([params[at] for at in self._times])  # (already encoded as text)
        params.append(execution_id)
        params.extend(self._statuses)
        return params


def _execution_from_row(row: sqlite3.Row) -> Execution:
    return Execution(**{field: row[field] if decode is None else decode(row[field])
                        for field, decode in _EXECUTION_DECODERS})


def _state_from_row(row: sqlite3.Row) -> AgentState:
    return AgentState(
        agent_name=row["agent_name"],
        state_data=_load(row["state_data"], dict),
        conversation_history=_load(row["conversation_history"], list),
        metadata=_load(row["metadata"], dict),
        version=row["version"],
        created_at=_dt(row["created_at"]),
        updated_at=_dt(row["updated_at"]),
        last_activity=_dt(row["last_activity"]),
    )


def _schedule_from_row(row: sqlite3.Row) -> Schedule:
    return Schedule(
        schedule_name=row["schedule_name"],
        agent_name=row["agent_name"],
        schedule_type=row["schedule_type"],
        schedule_config=_load(row["schedule_config"], dict),
        task_data=_load(row["task_data"], dict),
        enabled=bool(row["enabled"]),
        created_at=_dt(row["created_at"]),
        updated_at=_dt(row["updated_at"]),
        last_execution=_dt(row["last_execution"]),
    )


def _dead_letter_from_row(row: sqlite3.Row) -> DeadLetter:
    return DeadLetter(
        id=row["id"],
        execution_id=row["execution_id"],
        agent_name=row["agent_name"],
        routing_key=row["routing_key"],
        payload=_load(row["payload"], dict),
        error_message=row["error_message"],
        attempts=row["attempts"],
        failed_at=_dt(row["failed_at"]),
    )


def _encode_cursor(created_at: str, execution_id: str) -> str:
    raw = json.dumps([created_at, execution_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, execution_id = json.loads(raw)
        if not isinstance(created_at, str) or not isinstance(execution_id, str):
            raise ValueError
        datetime.fromisoformat(created_at)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValueError(f"invalid cursor: {cursor!r}") from None
    return created_at, execution_id


def _make_parent_directory(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    error = StoreUnavailable(f"SQLite store: {exc or repr(exc)}")
    error.__cause__ = exc
    return error


def _is_outage(exc: BaseException) -> bool:
    """Errors that mean the database is unusable (locked, I/O, closed), not a bad request."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return False
    # aiosqlite raises ValueError("Connection closed" / "no active connection") once closed.
    return isinstance(exc, sqlite3.Error) or (isinstance(exc, ValueError) and "connection" in str(exc).lower())


# --- The writer queue --------------------------------------------------------------------

WriteFn = Callable[["aiosqlite.Connection"], Awaitable[Any]]
#: a write of the task path, as a plain function of the writer's sqlite3 connection (no coroutine to drive)
SyncWriteFn = Callable[[sqlite3.Connection], Any]


@attrs.define
class _WriteOp:
    fn: WriteFn | SyncWriteFn
    future: asyncio.Future[Any]
    #: False when the operation's only write is its last statement: SQLite undoes a failed
    #: statement by itself, so the SAVEPOINT round trips are not needed.
    savepoint: bool
    #: ``fn`` is a plain function of the sqlite3 connection rather than a coroutine function
    sync: bool = False
    #: the batch runs in the writer thread rather than on the event loop
    heavy: bool = False


class _SyncConnection:
    """A plain sqlite3 connection behind the interface the write operations await.

    The writer runs a whole batch in its own thread, driving each operation's
    coroutine by hand (``_drive``): its awaits complete at once, so a batch costs
    one thread round trip instead of one per statement.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()


def _drive(coroutine: Any) -> Any:
    """Run a coroutine that awaits only ``_SyncConnection`` methods to its end, synchronously."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise RuntimeError("a SQLite write operation awaited something other than its connection")


class SQLiteStateStore:
    """The embedded state store (``STATE_BACKEND=sqlite``), see the module docstring.

    ``batches_committed``, ``writes_committed`` and ``checkpoints`` count the writer's work.
    """

    name = "sqlite"
    #: Most write operations applied in one transaction.
    max_batch = 256
    #: batches between two checkpoints of the WAL (each commit adds a few pages; SQLite's own
    #: automatic checkpoint, off here, would come every 1,000 pages)
    checkpoint_every = 128
    #: Read connections (reads go round-robin over them).
    read_connections = 2
    #: How long a connection waits for another process's write lock (milliseconds).
    busy_timeout_ms = 5000

    def __init__(self, settings: Any = None) -> None:
        self.path = str(getattr(settings, "sqlite_path", None) or "agentrunner.db")
        self._tempdir: str | None = None
        self._writer: aiosqlite.Connection | None = None  # set up and migrations
        self._batch_connection: sqlite3.Connection | None = None  # the writer thread's connection
        self._writer_thread: ThreadPoolExecutor | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._reader_cycle: itertools.cycle[aiosqlite.Connection] | None = None
        #: queued writes, taken in batches by the writer task
        self._pending: deque[_WriteOp] = deque()
        self._wakeup: asyncio.Event | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._checkpointer: sqlite3.Connection | None = None  # the writer thread's, for checkpoints
        self._loop: asyncio.AbstractEventLoop | None = None
        #: execution id → (the execution as inserted, its input and data as stored), until its first
        #: claim (oldest first)
        self._inserted: dict[str, tuple[Execution, str | None, str | None]] = {}
        self._closing = False
        self._broken: BaseException | None = None
        self.batches_committed = 0
        self.checkpoints = 0
        self.writes_committed = 0
        self.applied_migrations: list[str] = []

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file (creating it and its tables if missing) and start the writer."""
        import aiosqlite

        if self._writer is not None:
            return
        path = self.path
        if path == ":memory:":
            self._tempdir = await asyncio.to_thread(tempfile.mkdtemp, prefix="agentrunner-sqlite-")
            path = os.path.join(self._tempdir, "agentrunner.db")
        elif path.startswith("file:"):
            raise StoreUnavailable("SQLITE_PATH must be a file path or :memory:, not a URI")
        else:
            await asyncio.to_thread(_make_parent_directory, path)
        try:
            self._writer = await self._connect(aiosqlite, path)
            mode = (await self._writer.execute_fetchall("PRAGMA journal_mode=WAL"))[0][0]
            if str(mode).lower() != "wal":
                log.warning("SQLite database %s does not support WAL (journal mode %s); reads may wait for writes",
                            path, mode)
            await self._writer.execute_fetchall("PRAGMA synchronous=NORMAL")
            await self._migrate(self._writer, path)
            self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="agentrunner-sqlite-writer")
            self._batch_connection = await asyncio.get_running_loop().run_in_executor(
                self._writer_thread, self._connect_batch_writer, path)
            self._checkpointer = await asyncio.get_running_loop().run_in_executor(
                self._writer_thread, self._connect_batch_writer, path)
            for _ in range(max(1, self.read_connections)):
                reader = await self._connect(aiosqlite, path)
                await reader.execute_fetchall("PRAGMA query_only=ON")
                self._readers.append(reader)
        except BaseException as exc:
            await self._close_connections()
            if isinstance(exc, StoreUnavailable) or not isinstance(exc, sqlite3.Error | OSError):
                raise
            raise StoreUnavailable(f"cannot open the SQLite database {path}: {exc}") from exc
        self._reader_cycle = itertools.cycle(self._readers)
        self._closing = False
        self._broken = None
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._writer_task = asyncio.create_task(self._run_writer(), name="agentrunner-sqlite-writer")

    async def stop(self) -> None:
        """Commit every write already queued, then close the connections."""
        if self._writer is None:
            return
        self._closing = True
        self._inserted.clear()  # another process may change the file while this store is stopped
        task = self._writer_task
        if task is not None:
            assert self._wakeup is not None
            self._wakeup.set()  # the writer commits what is queued, then ends
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.error("the SQLite store's writer failed: %r", task.exception())
        self._fail_pending(StoreUnavailable("the SQLite store was stopped"))
        await self._close_connections()

    async def health(self) -> None:
        """Raise ``StoreUnavailable`` unless the store is started and its database answers."""
        if self._writer is None or self._closing:
            raise StoreUnavailable("the SQLite store is not started")
        if self._broken is not None or self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable(f"the SQLite store's writer has stopped: {self._broken!r}")
        await self._read("SELECT 1")

    def _connect_batch_writer(self, path: str) -> sqlite3.Connection:
        # made in the writer thread; used by the writer task, or by the thread for a heavy batch, never both at once
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous=NORMAL")
        # commits only append to the WAL; copying it into the database (and its fsync) is the writer
        # thread's job (_checkpoint), off the event loop
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    async def _connect(self, aiosqlite: Any, path: str) -> aiosqlite.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE … COMMIT per batch).
        # check_same_thread=False lets the event loop read `in_transaction` while the thread is idle.
        conn = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        await conn.execute_fetchall(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        return conn

    async def migrate(self, progress: Callable[[str], Any] | None = None) -> list[str]:
        """Bring the database's schema up to date (``agentrunner db migrate``); the names applied.

        ``start`` does the same, so this is only needed to migrate without serving.
        """
        started_here = self._writer is None
        before = len(self.applied_migrations)
        if started_here:
            await self.start()
        try:
            applied = self.applied_migrations[before:]
            for name in applied:
                if progress is not None:
                    progress(f"applied {name}")
            return applied
        finally:
            if started_here:
                await self.stop()

    async def maintenance(self, *, execution_days: float = 90, state_days: float = 30, vacuum: bool = True,
                          progress: Callable[[str], Any] | None = None) -> dict[str, int]:
        """The reference's maintenance (``agentrunner db maintenance``): delete finished executions that
        started more than ``execution_days`` ago and agent state idle for ``state_days``, then VACUUM and
        ANALYZE. Executions that have not finished are never deleted."""
        started_here = self._writer is None
        if started_here:
            await self.start()
        try:
            now = datetime.now(UTC)
            executions_before = _ts(now - timedelta(days=execution_days))
            states_before = _ts(now - timedelta(days=state_days))
            finished = ("completed", "failed", "timed_out", "cancelled")

            async def delete(conn: Any) -> dict[str, int]:
                marks = ", ".join("?" * len(finished))
                await conn.execute_fetchall(
                    f"DELETE FROM execution_history WHERE status IN ({marks}) "
                    "AND COALESCE(started_at, created_at) < ?", (*finished, executions_before))
                executions = (await conn.execute_fetchall("SELECT changes()"))[0][0]
                await conn.execute_fetchall("DELETE FROM agent_state WHERE last_activity < ?", (states_before,))
                states = (await conn.execute_fetchall("SELECT changes()"))[0][0]
                return {"executions_deleted": executions, "states_deleted": states}

            counts = await self._write(delete, savepoint=False, heavy=True)
            if progress is not None:
                progress(f"deleted {counts['executions_deleted']} executions older than {execution_days:g} days "
                         f"and {counts['states_deleted']} agent states idle for {state_days:g} days")
            if vacuum:
                await self._writer.execute_fetchall("VACUUM")
                await self._writer.execute_fetchall("ANALYZE")
                if progress is not None:
                    progress("VACUUM and ANALYZE done")
            return counts
        finally:
            if started_here:
                await self.stop()

    async def _migrate(self, conn: aiosqlite.Connection, path: str) -> None:
        await conn.execute_fetchall("BEGIN IMMEDIATE")
        try:
            version = (await conn.execute_fetchall("PRAGMA user_version"))[0][0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"the SQLite database {path} has schema version {version}, newer than this "
                    f"agentrunner knows ({SCHEMA_VERSION}); upgrade agentrunner"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    await conn.execute_fetchall(statement)
                self.applied_migrations.append(f"sqlite schema version {step}")
            if version != SCHEMA_VERSION:
                await conn.execute_fetchall(f"PRAGMA user_version={SCHEMA_VERSION}")
            await conn.execute_fetchall("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.execute_fetchall("ROLLBACK")
            raise

    async def _close_connections(self) -> None:
        for conn in [*self._readers, self._writer]:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        if self._writer_thread is not None:
            for conn in (self._checkpointer, self._batch_connection):  # the last one checkpoints the rest
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.get_running_loop().run_in_executor(self._writer_thread, conn.close)
        self._checkpointer = None
        if self._writer_thread is not None:
            self._writer_thread.shutdown(wait=False)
        self._batch_connection = None
        self._writer_thread = None
        self._readers = []
        self._reader_cycle = None
        self._writer = None
        self._writer_task = None
        if self._tempdir is not None:
            await asyncio.to_thread(shutil.rmtree, self._tempdir, True)
            self._tempdir = None

    # --- the writer ---------------------------------------------------------------------

    async def _write(self, fn: WriteFn | SyncWriteFn, *, savepoint: bool = True, sync: bool = False,
                     heavy: bool = False) -> Any:
        """Queue one write operation; return its result once its batch is committed. A ``heavy`` one
        (one that may take long, such as the maintenance's deletes) has its batch run in the writer thread."""
        if self._writer_task is None or self._closing or self._broken is not None or self._wakeup is None:
            raise StoreUnavailable("the SQLite store is not running")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append(_WriteOp(fn, future, savepoint, sync, heavy))
        self._wakeup.set()
        try:
            return await future
        except Exception as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from exc
            raise

    async def _run_writer(self) -> None:
        """The writer task: commit what is queued, batch after batch, until stopped."""
        pending, wakeup, loop = self._pending, self._wakeup, self._loop
        assert wakeup is not None and loop is not None
        batch: list[_WriteOp] = []
        commits = 0
        try:
            while True:
                if not pending:
                    if self._closing:
                        return
                    wakeup.clear()
                    await wakeup.wait()
                    continue
                if len(pending) < self.max_batch:
                    # one more pass of the loop first: the writes of callbacks already scheduled join
                    # this batch, so one commit carries more of them
                    await asyncio.sleep(0)
                batch = [pending.popleft() for _ in range(min(len(pending), self.max_batch))]
                # a caller cancelled before its batch began never sees an answer: skip its write
                batch = [op for op in batch if not op.future.done()]
                if not batch:
                    continue
                try:
                    if any(op.heavy for op in batch):
                        outcomes: list[tuple[bool, Any]] | BaseException = await loop.run_in_executor(
                            self._writer_thread, self._apply_batch, batch)
                    else:
                        outcomes = self._apply_batch(batch)
                except Exception as exc:  # nothing of this batch is committed: every caller learns it
                    outcomes = exc
                self._answer(batch, outcomes)
                batch = []
                commits += 1
                if commits % self.checkpoint_every == 0:
                    # no commit while it runs (writes queue up meanwhile, the loop goes on): a
                    # checkpoint that copies every frame lets the next commit start the WAL over,
                    # which one racing with commits seldom does (the WAL would grow without end)
                    await self._checkpoint()
        except BaseException as exc:  # a bug or cancellation: nobody may wait forever, the batch in hand included
            self._writer_stopped(exc, batch)
            raise

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database, in the writer thread (its fsync never holds up the loop)."""
        assert self._checkpointer is not None and self._loop is not None
        try:
            await self._loop.run_in_executor(
                self._writer_thread, lambda: self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        except Exception as exc:  # (e.g. a disk error): the next one tries again
            log.warning("SQLite WAL checkpoint failed: %s", exc)
            return
        self.checkpoints += 1

    def _answer(self, batch: list[_WriteOp], outcomes: list[tuple[bool, Any]] | BaseException) -> None:
        """On the event loop: give each caller of a batch its result."""
        if isinstance(outcomes, BaseException):
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(_unavailable(outcomes))
            return
        self.batches_committed += 1
        self.writes_committed += sum(ok for ok, _ in outcomes)
        for op, (ok, value) in zip(batch, outcomes, strict=True):
            if op.future.done():
                continue
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)

    def _writer_stopped(self, exc: BaseException, batch: list[_WriteOp]) -> None:
        self._broken = exc
        self._pending.extendleft(reversed(batch))
        self._fail_pending(StoreUnavailable(f"the SQLite store's writer stopped: {exc!r}"))

    def _apply_batch(self, batch: list[_WriteOp]) -> list[tuple[bool, Any]]:
        """One transaction for the whole batch (on the event loop, or in the writer thread for a heavy one)."""
        conn = self._batch_connection
        assert conn is not None
        adapter = _SyncConnection(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [self._apply(conn, adapter, op) for op in batch]
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise
        return outcomes

    @staticmethod
    def _apply(conn: sqlite3.Connection, adapter: _SyncConnection, op: _WriteOp) -> tuple[bool, Any]:
        """Run one operation inside the batch; its failure is returned, not raised."""
        if op.savepoint:
            conn.execute("SAVEPOINT op")
        try:
            value = op.fn(conn) if op.sync else _drive(op.fn(adapter))
        except Exception as exc:
            if op.savepoint:
                # Raises (failing the whole batch) if SQLite already rolled the transaction back.
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            elif not conn.in_transaction:
                raise  # SQLite rolled the whole transaction back (disk full, I/O error): the batch fails
            return False, exc
        if op.savepoint:
            conn.execute("RELEASE op")
        return True, value

    def _fail_pending(self, error: StoreUnavailable) -> None:
        while self._pending:
            op = self._pending.popleft()
            if not op.future.done():
                op.future.set_exception(StoreUnavailable(str(error)))

    # --- reads -----------------------------------------------------------------------------

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if self._reader_cycle is None or self._closing:
            raise StoreUnavailable("the SQLite store is not running")
        conn = next(self._reader_cycle)
        try:
            return list(await conn.execute_fetchall(sql, params))
        except Exception as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from exc
            raise

    # --- executions ------------------------------------------------------------------------

    async def create_execution(self, execution: Execution) -> tuple[Execution, bool]:
        """Store a new execution, or return ``(the existing one, False)`` when the agent already
        used its idempotency key, or when an execution with its id exists (a redelivered task)."""
        values = _insert_values(execution)
        insert, existing = _INSERT_EXECUTION, _EXISTING_EXECUTION
        key = execution.idempotency_key

        def op(conn: sqlite3.Connection) -> sqlite3.Row | None:
            if conn.execute(insert, values).fetchall():
                return None
            rows = conn.execute(
                existing, (execution.agent_name, key, execution.execution_id, execution.agent_name, key)).fetchall()
            return next(iter(rows), None)

        row = await self._write(op, savepoint=False, sync=True)
        if row is None:
            # its first claim (usually a moment later, in this process) need not read it back
            inserted = self._inserted
            if len(inserted) >= INSERTED_KEPT:
                del inserted[next(iter(inserted))]
            # input and data as they were stored (JSON), so that the claim returns exactly what a read would
            inserted[execution.execution_id] = (execution, values[_INPUT_AT], values[_DATA_AT])
            return execution, True
        return _execution_from_row(row), False

    async def get_execution(self, execution_id: str) -> Execution | None:
        rows = await self._read("SELECT * FROM execution_history WHERE execution_id = ?", (execution_id,))
        return _execution_from_row(rows[0]) if rows else None

    async def update_execution(self, execution_id: str, *, expect_status: Sequence[str] | None = None,
                               insert: Execution | None = None, **fields: Any) -> bool:
        """Set ``fields``; with ``expect_status`` only while the status is one of them (compare-and-set).
        Returns whether the execution was updated. An unknown field is a ``TypeError``. ``insert``: when
        no execution has this id, store ``insert`` with ``fields`` applied instead (with ``expect_status=()``
        an insert that leaves a stored execution as it is)."""
        if isinstance(expect_status, str):
            expect_status = [expect_status]
        if expect_status is not None and not expect_status and insert is None:
            return False
        shape = (tuple(fields), None if expect_status is None else tuple(expect_status))
        statement = _UPDATES.get(shape)
        if statement is None:
            unknown = set(fields) - _EXECUTION_UPDATABLE
            if unknown:
                raise TypeError(f"update_execution() got unknown execution field(s): {', '.join(sorted(unknown))}")
            if len(_UPDATES) >= UPDATE_SHAPES_KEPT:
                _UPDATES.clear()
            statement = _UPDATES[shape] = _UpdateStatement(*shape)
        sql, params = statement.sql, statement.params(execution_id, fields)
        if insert is not None:
            if insert.execution_id != execution_id:
                raise ValueError(f"update_execution({execution_id!r}): insert is execution {insert.execution_id!r}")
            row = _insert_values(attrs.evolve(insert, **fields))

            def upsert(conn: sqlite3.Connection) -> bool:
                # one writer: nothing comes between the two statements
                return bool(conn.execute(_INSERT_EXECUTION, row).fetchall() or conn.execute(sql, params).fetchall())

            return await self._write(upsert, sync=True)

        def op(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(sql, params).fetchall())

        return await self._write(op, savepoint=False, sync=True)

    async def claim_execution(self, execution_id: str, started_at: datetime, *,
                              insert: Execution | None = None) -> Execution | None:
        """Start an attempt (``queued``/``running`` → ``running``, attempts + 1) and return the execution.
        ``insert``: the execution as submitted, stored first when no execution has this id.

        The first claim of an execution this store inserted reads back only ``attempts``: until its
        first claim nothing but a cancellation (which the claim sees) changes an execution, so the
        row is the inserted execution with the claim's changes."""
        started = _ts(started_at)
        if insert is not None:
            if insert.execution_id != execution_id:
                raise ValueError(f"claim_execution({execution_id!r}): insert is execution {insert.execution_id!r}")
            self._inserted.pop(execution_id, None)
            row = _insert_values(insert)
            claim = (started, execution_id)

            def insert_and_claim(conn: sqlite3.Connection) -> Any:
                conn.execute(_INSERT_EXECUTION, row).fetchall()
                rows = conn.execute(_CLAIM_RETURNING_ROW, claim).fetchall()
                return rows[0] if rows else None

            claimed = await self._write(insert_and_claim, sync=True)
            return _execution_from_row(claimed) if claimed is not None else None
        inserted = self._inserted.pop(execution_id, None)
        sql = _CLAIM_RETURNING_ATTEMPTS if inserted is not None else _CLAIM_RETURNING_ROW
        params = (started, execution_id)

        def op(conn: sqlite3.Connection) -> Any:
            rows = conn.execute(sql, params).fetchall()
            return rows[0] if rows else None

        row = await self._write(op, savepoint=False, sync=True)
        if row is None:
            return None
        if inserted is None:
            return _execution_from_row(row)
        execution, input_text, data_text = inserted
        values = dict(zip(_EXECUTION_FIELDS, _execution_values(execution), strict=True))  # (attrs.evolve, faster)
        values.update(status="running", started_at=_dt(started), error_message=None, attempts=row[0],
                      input=_load(input_text), data=_load_dict(data_text))
        return Execution(**values)

    async def list_executions(self, *, agent_name: str | None = None, status: str | None = None,
                              limit: int = 50, cursor: str | None = None) -> tuple[list[Execution], str | None]:
        """Newest first (``created_at``, then id); the cursor is opaque and keeps the filters' order."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        where: list[str] = []
        params: list[Any] = []
        if agent_name is not None:
            where.append("agent_name = ?")
            params.append(agent_name)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if cursor is not None:
            where.append("(created_at, execution_id) < (?, ?)")
            params.extend(_decode_cursor(cursor))
        sql = "SELECT * FROM execution_history"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, execution_id DESC LIMIT ?"
        params.append(limit + 1)
        rows = await self._read(sql, params)
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = _encode_cursor(last["created_at"], last["execution_id"])
        return [_execution_from_row(row) for row in page], next_cursor

    async def executions_with_status(self, statuses: Sequence[str]) -> list[Execution]:
        """Executions in these statuses, oldest first (recovery after a restart)."""
        statuses = [statuses] if isinstance(statuses, str) else list(statuses)
        if not statuses:
            return []
        rows = await self._read(
            f"SELECT * FROM execution_history WHERE status IN ({', '.join('?' * len(statuses))}) "
            "ORDER BY created_at, execution_id",
            statuses,
        )
        return [_execution_from_row(row) for row in rows]

    # --- agent state -----------------------------------------------------------------------

    async def get_state(self, agent_name: str) -> AgentState | None:
        rows = await self._read("SELECT * FROM agent_state WHERE agent_name = ?", (agent_name,))
        return _state_from_row(rows[0]) if rows else None

    async def put_state(self, state: AgentState, *, expect_version: int | None = None) -> AgentState:
        """Write the state with the next version and return it as stored (``created_at`` of the first
        write, ``updated_at`` now). With ``expect_version`` (0: no state stored yet) a different stored
        version raises ``StateConflict``."""
        name = state.agent_name
        state_data = json.dumps(state.state_data, ensure_ascii=False, separators=(",", ":"))
        history = _json(state.conversation_history)
        metadata = _json(state.metadata)
        last_activity = _ts(state.last_activity)
        updated_at = _ts(utcnow())

        async def op(conn: aiosqlite.Connection) -> tuple[int, str]:
            rows = await conn.execute_fetchall(
                "SELECT version, created_at FROM agent_state WHERE agent_name = ?", (name,))
            current, created_at = (rows[0][0], rows[0][1]) if rows else (0, _ts(state.created_at))
            if expect_version is not None and current != expect_version:
                raise StateConflict(
                    f"the state of agent {name!r} is at version {current}, not {expect_version}")
            await conn.execute_fetchall(
                "INSERT INTO agent_state (agent_name, state_data, conversation_history, metadata, version, "
                "created_at, updated_at, last_activity) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(agent_name) DO UPDATE SET state_data = excluded.state_data, "
                "conversation_history = excluded.conversation_history, metadata = excluded.metadata, "
                "version = excluded.version, updated_at = excluded.updated_at, "
                "last_activity = excluded.last_activity",
                (name, state_data, history, metadata, current + 1, created_at, updated_at, last_activity),
            )
            return current + 1, created_at

        # The check reads, the single write comes last: no SAVEPOINT needed.
        version, created_at = await self._write(op, savepoint=False)
        return attrs.evolve(state, version=version, created_at=_dt(created_at), updated_at=_dt(updated_at))

    async def delete_state(self, agent_name: str) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            return bool(await conn.execute_fetchall(
                "DELETE FROM agent_state WHERE agent_name = ? RETURNING 1", (agent_name,)))

        return await self._write(op, savepoint=False)

    # --- schedules -------------------------------------------------------------------------

    async def upsert_schedule(self, schedule: Schedule) -> None:
        """Insert or replace a schedule by name; an existing one keeps its ``created_at``."""
        params = (
            schedule.schedule_name, schedule.agent_name, schedule.schedule_type,
            json.dumps(schedule.schedule_config, ensure_ascii=False, separators=(",", ":")),
            _json(schedule.task_data), int(bool(schedule.enabled)), _ts(schedule.created_at),
            _ts(schedule.updated_at), _ts(schedule.last_execution),
        )

        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute_fetchall(
                "INSERT INTO schedules (schedule_name, agent_name, schedule_type, schedule_config, task_data, "
                "enabled, created_at, updated_at, last_execution) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(schedule_name) DO UPDATE SET agent_name = excluded.agent_name, "
                "schedule_type = excluded.schedule_type, schedule_config = excluded.schedule_config, "
                "task_data = excluded.task_data, enabled = excluded.enabled, updated_at = excluded.updated_at, "
                "last_execution = excluded.last_execution",
                params,
            )

        await self._write(op, savepoint=False)

    async def get_schedule(self, name: str) -> Schedule | None:
        rows = await self._read("SELECT * FROM schedules WHERE schedule_name = ?", (name,))
        return _schedule_from_row(rows[0]) if rows else None

    async def list_schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        rows = await self._read("SELECT * FROM schedules ORDER BY schedule_name")
        return [_schedule_from_row(row) for row in rows]

    async def delete_schedule(self, name: str) -> bool:
        """Delete a schedule and its tick claims."""
        async def op(conn: aiosqlite.Connection) -> bool:
            await conn.execute_fetchall("DELETE FROM schedule_runs WHERE schedule_name = ?", (name,))
            return bool(await conn.execute_fetchall(
                "DELETE FROM schedules WHERE schedule_name = ? RETURNING 1", (name,)))

        return await self._write(op)

    async def claim_schedule_tick(self, name: str, fire_time: datetime) -> bool:
        """True for exactly one caller per (schedule, fire time): the INSERT that wins the primary key.
        Claims older than ``CLAIM_RETENTION`` before this fire time are pruned on the way."""
        fire = _ts(fire_time)
        cutoff = _ts(fire_time - CLAIM_RETENTION)
        claimed_at = _ts(utcnow())

        async def op(conn: aiosqlite.Connection) -> bool:
            await conn.execute_fetchall(
                "DELETE FROM schedule_runs WHERE schedule_name = ? AND fire_time < ?", (name, cutoff))
            return bool(await conn.execute_fetchall(
                "INSERT INTO schedule_runs (schedule_name, fire_time, claimed_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                (name, fire, claimed_at),
            ))

        # The claim is the last statement: if the prune fails the claim was never made.
        return await self._write(op, savepoint=False)

    # --- dead letters ---------------------------------------------------------------------

    async def add_dead_letter(self, item: DeadLetter) -> None:
        """Store a dead letter; one with the same id (a redelivery) is replaced."""
        params = (
            item.id, item.execution_id, item.agent_name, item.routing_key,
            json.dumps(item.payload, ensure_ascii=False, separators=(",", ":")), item.error_message,
            item.attempts, _ts(item.failed_at),
        )

        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute_fetchall(
                "INSERT INTO dead_letters (id, execution_id, agent_name, routing_key, payload, error_message, "
                "attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET execution_id = excluded.execution_id, "
                "agent_name = excluded.agent_name, routing_key = excluded.routing_key, "
                "payload = excluded.payload, error_message = excluded.error_message, "
                "attempts = excluded.attempts, failed_at = excluded.failed_at",
                params,
            )

        await self._write(op, savepoint=False)

    async def list_dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, most recent failure first."""
        rows = await self._read("SELECT * FROM dead_letters ORDER BY failed_at DESC, id DESC")
        return [_dead_letter_from_row(row) for row in rows]

    async def get_dead_letter(self, item_id: str) -> DeadLetter | None:
        rows = await self._read("SELECT * FROM dead_letters WHERE id = ?", (item_id,))
        return _dead_letter_from_row(rows[0]) if rows else None

    async def delete_dead_letter(self, item_id: str) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            return bool(await conn.execute_fetchall("DELETE FROM dead_letters WHERE id = ? RETURNING 1", (item_id,)))

        return await self._write(op, savepoint=False)


@agentrunner.hookimpl
def register_state_stores(register: Callable[[Any], None]) -> None:
    register(SQLiteStateStore)
