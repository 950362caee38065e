"""Schema migrations: the repository's ``sql/`` files, applied in order, each exactly once.

The files ship inside the package (``agentrunner_postgres/sql`` is a symlink to the repository's
``sql/``, packaged as data). ``NNN_name.sql`` is version ``NNN``; ``000`` creates the
``schema_migrations`` table that records each applied file with its SHA-256. Every file runs in
its own transaction together with its record, so a failed file leaves nothing behind and is
tried again next time. A session advisory lock serialises whole runs: when several processes
start at once, the first applies the files and the others then find them recorded.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING

import attrs

from agentrunner.interfaces import StoreUnavailable

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("agentrunner_postgres.migrations")

#: The advisory lock key of a migration run ("agentrun" as a 64-bit integer).
MIGRATION_LOCK = int.from_bytes(b"agentrun", "big")

Progress = Callable[[str], object]


class MigrationError(StoreUnavailable):
    """A migration file failed; the message names it. Nothing of that file was applied."""


@attrs.frozen
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str = attrs.field(repr=False)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def load_migrations() -> list[Migration]:
    """The packaged migration files, by version. Raises ``MigrationError`` when they are missing."""
    directory = resources.files("agentrunner_postgres") / "sql"
    try:
        files = sorted((entry for entry in directory.iterdir() if entry.name.endswith(".sql")),
                       key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        files = []
    if not files:
        raise MigrationError(f"agentrunner-postgres is installed without its migrations ({directory} has no .sql "
                             f"files): reinstall it")
    migrations: list[Migration] = []
    for entry in files:
        prefix = entry.name.partition("_")[0]
        if not prefix.isdigit():
            raise MigrationError(f"migration file {entry.name} does not start with a version number (NNN_name.sql)")
        migrations.append(Migration(int(prefix), entry.name, entry.read_text(encoding="utf-8")))
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions) or versions[0] != 0:
        raise MigrationError(f"migration versions must be unique and start at 000: {[m.name for m in migrations]}")
    return migrations


async def apply_migrations(conn: asyncpg.Connection, migrations: Sequence[Migration],
                           progress: Progress | None = None) -> list[str]:
    """Apply the files not recorded yet, in order, under the advisory lock; return their names."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        return await _apply(conn, migrations, progress)
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def _apply(conn: asyncpg.Connection, migrations: Sequence[Migration], progress: Progress | None) -> list[str]:
    tracking, *rest = migrations
    applied: list[str] = []
    # 000 creates the tracking table (IF NOT EXISTS): it runs every time, and is recorded once.
    async with conn.transaction():
        await _run_file(conn, tracking)
        recorded = {row["version"]: row for row in await conn.fetch(
            "SELECT version, name, checksum FROM schema_migrations")}
        if tracking.version not in recorded:
            await _record(conn, tracking)
            applied.append(tracking.name)
    if applied and progress is not None:
        progress(f"applied {tracking.name}")
    for migration in rest:
        known = recorded.get(migration.version)
        if known is not None:
            if known["checksum"] != migration.checksum:
                log.warning("migration %s changed after it was applied (as %s); the database keeps the old version",
                            migration.name, known["name"])
            continue
        async with conn.transaction():
            await _run_file(conn, migration)
            await _record(conn, migration)
        applied.append(migration.name)
        log.info("applied migration %s", migration.name)
        if progress is not None:
            progress(f"applied {migration.name}")
    unknown = sorted(set(recorded) - {migration.version for migration in migrations})
    if unknown:
        log.info("the database has migrations this agentrunner-postgres does not ship (versions %s): "
                 "a newer version applied them", ", ".join(map(str, unknown)))
    return applied


async def missing_migrations(conn: asyncpg.Connection, migrations: Sequence[Migration]) -> list[str]:
    """The names of the files not recorded in the database (all of them without a tracking table)."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return [migration.name for migration in migrations]
    recorded = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    return [migration.name for migration in migrations if migration.version not in recorded]


async def _run_file(conn: asyncpg.Connection, migration: Migration) -> None:
    import asyncpg

    try:
        await conn.execute(migration.sql)
    except asyncpg.PostgresError as exc:
        if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.exceptions.OperatorInterventionError):
            raise
        raise MigrationError(f"migration {migration.name} failed: {type(exc).__name__}: {exc}") from exc


async def _record(conn: asyncpg.Connection, migration: Migration) -> None:
    await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                       migration.version, migration.name, migration.checksum)
