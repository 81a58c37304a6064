"""Schema migrations: ordered SQL files, applied once each, in order, under a lock.

The files are ``persistence/migrations/NNNN_name.sql`` (shipped as package data). Rules of
operation:

* :func:`migrate` takes a Postgres advisory lock first, so two engines starting at once do
  not race: the second waits, then finds nothing left to do.
* ``schema_version(version, name, checksum, applied_at)`` records what was applied.
* Each pending file runs in its own transaction together with its ``schema_version`` row: a
  failing file leaves the database at the previous version, never half-way.
* An applied file is never edited: if its SHA-256 no longer matches the recorded checksum,
  :func:`migrate` refuses to run (write a new file instead). A database that has versions this
  build does not know (a newer build migrated it) is refused too.

Used by ``tripwire migrate`` and by the engine at start-up.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from persistence.db import Database
from protocol.errors import ConfigError

__all__ = ["Migration", "MigrationStatus", "load_migrations", "migrate", "migration_status"]

# An arbitrary constant (the bytes of "tripwire" as an int); every migrator uses the same one.
_LOCK_KEY = int.from_bytes(b"tripwire", "big") >> 1
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

_log = structlog.get_logger(component="migrations")  # lazy: configured at first use


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: ``version`` from its number, ``name`` from the rest of its name."""

    version: int
    name: str
    sql: str
    checksum: str


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """What :func:`migration_status` found: applied versions and the ones still pending."""

    applied: list[int]
    pending: list[int]


def load_migrations() -> list[Migration]:
    """The migration files shipped in ``persistence/migrations/``, in version order.

    Raises:
        ConfigError: a file name breaks the ``NNNN_name.sql`` pattern, or two files share a
            version, or the versions do not run 1, 2, 3... without a gap.
    """
    found: list[Migration] = []
    for entry in (resources.files("persistence") / "migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE.match(entry.name)
        if match is None:
            raise ConfigError("migration file name must be NNNN_name.sql", key=entry.name)
        data = entry.read_bytes()
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                sql=data.decode("utf-8"),
                checksum=hashlib.sha256(data).hexdigest(),
            )
        )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ConfigError("migration versions must run 1, 2, 3... once each", key=str(versions))
    return found


def _check_applied(applied: dict[int, str], known: list[Migration]) -> None:
    by_version = {m.version: m for m in known}
    for version, checksum in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise ConfigError(
                "the database has a schema version this build does not know "
                "(was it migrated by a newer build?)",
                key="schema_version",
                version=version,
                known=max(by_version, default=0),
            )
        if migration.checksum != checksum:
            raise ConfigError(
                f"migration {version:04d}_{migration.name}.sql changed after it was applied; "
                "add a new migration instead of editing an applied one",
                key="schema_version",
                version=version,
                recorded=checksum,
                found=migration.checksum,
            )


async def _read_applied(conn: asyncpg.Connection) -> dict[int, str]:
    rows = await conn.fetch("SELECT version, checksum FROM schema_version")
    return {row["version"]: row["checksum"] for row in rows}


async def migrate(db: Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply every pending migration in order; return the versions applied (maybe none).

    Raises:
        ConfigError: an applied file changed, or the database is ahead of this build.
        StorageError: Postgres is unavailable.
        asyncpg.PostgresError: a migration's SQL failed (its transaction is rolled back).
    """
    todo = load_migrations() if migrations is None else migrations

    async def run(conn: asyncpg.Connection) -> list[int]:
        # A session-level lock held across the per-file transactions; the server drops it
        # if this connection dies, so a crashed migrator never blocks the next one.
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(_CREATE_VERSION_TABLE)
            applied = await _read_applied(conn)
            _check_applied(applied, todo)
            done: list[int] = []
            for migration in todo:
                if migration.version in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_version (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                done.append(migration.version)
            return done
        finally:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)

    applied = await db.run_with_connection(run)
    for version in applied:
        _log.info("migration applied", version=version)
    return applied


async def migration_status(
    db: Database, migrations: list[Migration] | None = None
) -> MigrationStatus:
    """Applied and pending versions, without changing anything.

    Raises:
        ConfigError: as :func:`migrate` would.
    """
    todo = load_migrations() if migrations is None else migrations

    async def run(conn: asyncpg.Connection) -> dict[int, str]:
        exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        return await _read_applied(conn) if exists else {}

    applied = await db.run_with_connection(run)
    _check_applied(applied, todo)
    return MigrationStatus(
        applied=sorted(applied),
        pending=[m.version for m in todo if m.version not in applied],
    )
