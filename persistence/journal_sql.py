"""The journal table's SQL: asyncio-side functions of one asyncpg connection.

Everything here runs on the bridge's asyncio loop, through
:meth:`~persistence.db.Database.run_with_connection` (single statements, and
:func:`write_batch`, which opens its transaction only when there is a projection to run with
the journal row: a lone INSERT is its own transaction, one round trip instead of three).
:mod:`persistence.journal_writer` is the trio side that decides when to write,
:mod:`persistence.journal_reader` the one that reads. The rules of the ``journal`` table:

* journal rows are contiguous, non-overlapping ranges ``first_seq..last_seq``, one per
  group-commit batch, in commit order;
* a batch is identified by its ``first_seq``: writing a batch whose ``first_seq`` exists is
  a retry of a batch that did commit (the connection broke after COMMIT was sent), so it is
  skipped, projections included, because they committed in the same transaction.

The snapshots' tables, and compaction, are :mod:`persistence.snapshot_sql`'s.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from persistence.db import is_unavailable
from protocol.errors import ConfigError

__all__ = [
    "Statements",
    "WriteOutcome",
    "WriteResult",
    "fetch_batches",
    "fetch_batches_newest_first",
    "last_seq",
    "write_batch",
]

Statements = Sequence[tuple[str, Sequence[Sequence[Any]]]]
"""What a projection returns: ``[(sql, [args, args, ...]), ...]``, run in order."""


class WriteOutcome(enum.Enum):
    WRITTEN = "written"
    """The batch and its projections committed."""
    ALREADY_WRITTEN = "already_written"
    """A retry found the batch committed by an earlier attempt; nothing was written twice."""
    PROJECTION_FAILED = "projection_failed"
    """The journal row committed; the projection statements were rolled back (see ``error``)."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: WriteOutcome
    error: str | None = None


_INSERT_BATCH = """
INSERT INTO journal (first_seq, last_seq, record_count, records, record_index)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (first_seq) DO NOTHING
RETURNING batch_seq
"""


async def write_batch(
    conn: asyncpg.Connection,
    first_seq: int,
    last_seq: int,
    payload: bytes,
    statements: Statements,
    record_index: bytes | None = None,
) -> WriteResult:
    """Insert one journal row (its records and, if given, their replay index) and run the
    projection statements, in one transaction.

    The projection runs in a savepoint: if one of its statements fails for a reason that is
    not "unavailable" (a constraint, a bad argument: a bug in the projection or data it did
    not expect), only the projection is rolled back and the journal row still commits. The
    journal is the durable record; projections can be rebuilt from it, a lost record cannot.

    Raises:
        ConfigError: the batch's ``first_seq`` exists with another ``last_seq``: two writers
            append to one journal (two engines on one database). Never retried.
        Exception: connection-level failures, for the caller to retry.
    """
    if not statements:
        return await _insert_batch(conn, first_seq, last_seq, payload, record_index)
    async with conn.transaction():
        result = await _insert_batch(conn, first_seq, last_seq, payload, record_index)
        if result.outcome is WriteOutcome.ALREADY_WRITTEN:
            return result  # its projection committed with it the first time
        try:
            async with conn.transaction():  # a savepoint inside the batch's transaction
                for sql, rows in statements:
                    if rows:
                        await conn.executemany(sql, rows)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if is_unavailable(exc):
                raise
            return WriteResult(WriteOutcome.PROJECTION_FAILED, repr(exc))
    return result


async def _insert_batch(
    conn: asyncpg.Connection,
    first_seq: int,
    last_seq: int,
    payload: bytes,
    record_index: bytes | None,
) -> WriteResult:
    inserted = await conn.fetchval(
        _INSERT_BATCH, first_seq, last_seq, last_seq - first_seq + 1, payload, record_index
    )
    if inserted is None:
        theirs = await conn.fetchval("SELECT last_seq FROM journal WHERE first_seq = $1", first_seq)
        if theirs != last_seq:
            raise ConfigError(
                "journal sequence collision: is another engine writing to this database?",
                key="DATABASE_URL",
                first_seq=first_seq,
                last_seq=last_seq,
                existing_last_seq=theirs,
            )
        return WriteResult(WriteOutcome.ALREADY_WRITTEN)
    return WriteResult(WriteOutcome.WRITTEN)


async def last_seq(conn: asyncpg.Connection) -> tuple[int, str]:
    """The highest seq recorded anywhere (journal or snapshot; 0 for an empty journal) and the
    server's ``synchronous_commit`` setting (acknowledging after COMMIT is only durable when
    it is on, or remote_*)."""
    row = await conn.fetchrow(
        "SELECT greatest((SELECT max(last_seq) FROM journal), (SELECT max(seq) FROM snapshots)),"
        " current_setting('synchronous_commit')"
    )
    return int(row[0] or 0), str(row[1])


async def fetch_batches(
    conn: asyncpg.Connection, after_seq: int, limit: int
) -> list[tuple[int, int, bytes]]:
    """Up to ``limit`` batches holding records after ``after_seq``, oldest first."""
    rows = await conn.fetch(
        "SELECT first_seq, last_seq, records FROM journal WHERE last_seq > $1"
        " ORDER BY last_seq LIMIT $2",
        after_seq,
        limit,
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def fetch_batches_newest_first(
    conn: asyncpg.Connection, after_seq: int, before_seq: int, limit: int
) -> list[tuple[int, int, bytes, bytes | None]]:
    """Up to ``limit`` batches holding records after ``after_seq`` and ending before
    ``before_seq``, newest first (the last_seq index, scanned backwards), each with its
    replay index (None: written without one)."""
    rows = await conn.fetch(
        "SELECT first_seq, last_seq, records, record_index FROM journal"
        " WHERE last_seq > $1 AND last_seq < $2 ORDER BY last_seq DESC LIMIT $3",
        after_seq,
        before_seq,
        limit,
    )
    return [(row[0], row[1], row[2], row[3]) for row in rows]
