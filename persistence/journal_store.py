"""The journal's and the snapshots' SQL: asyncio-side functions of one asyncpg connection.

Everything here runs on the bridge's asyncio loop, through
:meth:`~persistence.db.Database.run_with_connection` (single statements, and
:func:`write_batch`, which opens its transaction only when there is a projection to run with
the journal row: a lone INSERT is its own transaction, one round trip instead of three) or
:meth:`~persistence.db.Database.run_in_transaction`. :mod:`persistence.journal` is the trio
side that decides when to call them. Keeping the SQL in one place also keeps the rules about
the ``journal`` and ``snapshots`` tables in one place:

* journal rows are contiguous, non-overlapping ranges ``first_seq..last_seq``, one per
  group-commit batch, in commit order;
* a batch is identified by its ``first_seq``: writing a batch whose ``first_seq`` exists is
  a retry of a batch that did commit (the connection broke after COMMIT was sent), so it is
  skipped, projections included, because they committed in the same transaction;
* a snapshot's ``seq`` is the last journal seq folded into it; it counts (for recovery,
  for compaction) only once ``complete``: a snapshot written in parts
  (:func:`write_snapshot_in_parts`) is complete once every part is there.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from persistence.db import is_unavailable
from protocol.errors import ConfigError, StorageError, UsageError

__all__ = [
    "Statements",
    "WriteOutcome",
    "WriteResult",
    "compact",
    "fetch_batches",
    "fetch_batches_newest_first",
    "last_seq",
    "latest_snapshot",
    "snapshot_and_journal_seqs",
    "write_batch",
    "write_snapshot",
    "write_snapshot_in_parts",
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


async def snapshot_and_journal_seqs(conn: asyncpg.Connection) -> tuple[int | None, int]:
    """The newest complete snapshot's seq (None: no snapshot) and the journal's highest seq
    (0: empty), without reading any payload."""
    row = await conn.fetchrow(
        "SELECT (SELECT max(seq) FROM snapshots WHERE complete),"
        " (SELECT coalesce(max(last_seq), 0) FROM journal)"
    )
    return (None if row[0] is None else int(row[0])), int(row[1])


async def latest_snapshot(conn: asyncpg.Connection) -> tuple[int, bytes] | None:
    """``(seq, payload as stored)`` of the newest complete snapshot, its parts joined.

    One statement, so one view of the tables: a compaction running meanwhile cannot take parts
    away half-way through the read.

    Raises:
        StorageError: parts are missing (a corrupt database: completion checks them all).
    """
    rows = await conn.fetch(
        "SELECT s.seq, s.payload, s.parts, p.part, p.data FROM"
        " (SELECT seq, payload, parts, attempt FROM snapshots WHERE complete"
        "  ORDER BY seq DESC LIMIT 1) s"
        " LEFT JOIN snapshot_parts p ON p.seq = s.seq AND p.attempt = s.attempt"
        " ORDER BY p.part"
    )
    if not rows:
        return None
    seq, payload, parts = rows[0][0], rows[0][1], rows[0][2]
    if parts == 0:
        return seq, payload
    if [row[3] for row in rows] != list(range(parts)):
        raise StorageError("a snapshot's parts are missing", seq=seq, parts=parts, found=len(rows))
    return seq, b"".join([row[4] for row in rows])


async def write_snapshot(conn: asyncpg.Connection, seq: int, payload: bytes, size: int) -> None:
    """Insert (or replace: same seq, same state, newer encoding wins) the snapshot at ``seq``,
    whole, in one transaction (``payload`` as stored, ``size`` the state's own length before
    compression). Run it with ``Database.run_in_transaction``."""
    await _claim_snapshot(conn, seq, payload, size, parts=0, attempt=0)


async def write_snapshot_in_parts(
    conn: asyncpg.Connection, seq: int, parts: Sequence[bytes | memoryview], size: int
) -> None:
    """Write the snapshot at ``seq`` as ``parts`` (the stored payload, sliced), each INSERT its
    own transaction, then complete it in a last one that checks every part is there. Until
    then, readers see the previous snapshots only. Run it with
    ``Database.run_with_connection`` (it makes its own transactions).

    Raises:
        StorageError: this attempt was overtaken meanwhile (another writer of the same seq, or
            a compaction that found it older than a newer complete snapshot): nothing is lost,
            the journal still holds every record.
    """
    attempt = secrets.randbits(63)
    async with conn.transaction():
        await _claim_snapshot(conn, seq, b"", size, parts=len(parts), attempt=attempt)
    await _insert_parts(conn, seq, attempt, parts)
    async with conn.transaction():
        await _complete_snapshot(conn, seq, attempt, len(parts))


async def _insert_parts(
    conn: asyncpg.Connection,
    seq: int,
    attempt: int,
    parts: Sequence[bytes | memoryview],
    first: int = 0,
) -> None:
    """Each part an INSERT of its own (so its own commit, and its own WAL flush)."""
    try:
        for number, data in enumerate(parts, start=first):
            await conn.execute(
                "INSERT INTO snapshot_parts (seq, attempt, part, data) VALUES ($1, $2, $3, $4)",
                seq,
                attempt,
                number,
                data,
            )
    except asyncpg.ForeignKeyViolationError as exc:  # the row was compacted away
        raise StorageError("a newer snapshot overtook this one", seq=seq) from exc


async def _complete_snapshot(conn: asyncpg.Connection, seq: int, attempt: int, parts: int) -> None:
    """In a transaction: mark the snapshot complete if this attempt still owns its row and
    every part is there."""
    # The row first: a writer claiming the same seq locks it too, so the parts counted here
    # stay until this commits.
    current = await conn.fetchval("SELECT attempt FROM snapshots WHERE seq = $1 FOR UPDATE", seq)
    found = await conn.fetchval(
        "SELECT count(*) FROM snapshot_parts WHERE seq = $1 AND attempt = $2", seq, attempt
    )
    if current != attempt or found != parts:
        raise StorageError("another writer overtook this snapshot", seq=seq)
    await conn.execute(
        "UPDATE snapshots SET complete = true, created_at = now() WHERE seq = $1", seq
    )
    # Parts an overtaken writer added after this one's claim: nobody reads them.
    await conn.execute("DELETE FROM snapshot_parts WHERE seq = $1 AND attempt <> $2", seq, attempt)


async def _claim_snapshot(
    conn: asyncpg.Connection, seq: int, payload: bytes, size: int, parts: int, attempt: int
) -> None:
    """The snapshot row at ``seq`` (complete when written whole), and none of the parts of an
    earlier attempt at the same seq (a writer that died half-way, or is overtaken now)."""
    await conn.execute(
        "INSERT INTO snapshots (seq, payload, size, parts, complete, attempt)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (seq) DO UPDATE SET payload = excluded.payload, size = excluded.size,"
        " parts = excluded.parts, complete = excluded.complete, attempt = excluded.attempt,"
        " created_at = now()",
        seq,
        payload,
        size,
        parts,
        parts == 0,
        attempt,
    )
    await conn.execute("DELETE FROM snapshot_parts WHERE seq = $1 AND attempt <> $2", seq, attempt)


async def compact(conn: asyncpg.Connection, upto_seq: int, keep_snapshots: int) -> tuple[int, int]:
    """Delete journal batches ending at or before ``upto_seq``, all but the newest
    ``keep_snapshots`` complete snapshots, and incomplete snapshots older than the newest
    complete one (writers that died half-way, or slower than a newer one); return
    ``(batches, snapshots)`` deleted. Parts go with their snapshot.

    A batch straddling ``upto_seq`` is kept whole (replay skips the records it already has).

    Raises:
        UsageError: ``upto_seq`` is past the newest complete snapshot: those records exist
            nowhere else.
    """
    newest = await conn.fetchval("SELECT max(seq) FROM snapshots WHERE complete")
    if newest is None or upto_seq > newest:
        raise UsageError(
            "cannot compact the journal past the newest snapshot",
            upto_seq=upto_seq,
            newest_snapshot=newest,
        )
    batches = await conn.execute("DELETE FROM journal WHERE last_seq <= $1", upto_seq)
    snapshots = await conn.execute(
        "DELETE FROM snapshots WHERE (complete AND seq NOT IN"
        " (SELECT seq FROM snapshots WHERE complete ORDER BY seq DESC LIMIT $1))"
        " OR (NOT complete AND seq < $2)",
        keep_snapshots,
        newest,
    )
    return int(batches.split()[-1]), int(snapshots.split()[-1])
