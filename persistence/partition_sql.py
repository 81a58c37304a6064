"""The cluster journal's SQL: asyncio-side functions of one asyncpg connection.

:mod:`persistence.partition_journal` decides when to write and
:mod:`persistence.partition_store` reads partitions back and keeps their snapshots; this module
is what they run on the bridge. The rules of ``partition_journal`` (``0006_cluster.sql``):

* per partition, rows are contiguous non-overlapping ranges ``first_seq..last_seq``;
* **the fence**: every write for a partition is conditional on the epoch its writer claimed
  it at (``UPDATE partitions ... WHERE id = $p AND epoch = $e``); zero rows means another node
  has claimed it since, and that partition writes nothing;
* a row is identified by ``(partition, first_seq)``: a retried batch that had committed is
  recognised (same epoch, same ``last_seq``) and not written twice.

One batch of the writer is ONE transaction for every partition in it. The design note asks
for a savepoint per partition, fence first, rolled back on zero rows; :func:`write_batch`
reaches the same outcome in two statements instead of four per partition: one statement whose
fence ``UPDATE`` covers all the partitions (locking their rows in id order, so it never
deadlocks with a renewal) and whose ``INSERT`` writes the journal rows of those that passed,
and only those (it reads the fence's ``RETURNING``); then the projections in a savepoint. A
fenced partition thus writes nothing and never holds up the others; nothing of it needs
rolling back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import msgspec

from persistence.db import is_unavailable
from persistence.journal_sql import Statements
from protocol.errors import ConfigError

__all__ = ["BatchOutcome", "PartitionWrite", "fetch_tail", "write_batch"]


@dataclass(frozen=True, slots=True)
class PartitionWrite:
    """What one batch writes for one partition: its records (``payload`` None: a checkpoint
    only), the seq range they take, and the checkpoint as of them."""

    partition: int
    epoch: int
    first_seq: int
    last_seq: int
    """The partition's last seq after this batch (its committed one for a checkpoint only)."""
    checkpoint: dict[str, int]
    payload: bytes | None = None
    record_index: bytes | None = None
    statements: Statements = ()


@dataclass(slots=True)
class BatchOutcome:
    fenced: set[int] = field(default_factory=set)
    """Partitions whose fence refused: nothing of theirs was written."""
    already_written: set[int] = field(default_factory=set)
    """Partitions whose rows a previous attempt of this batch had committed."""
    projection_error: str | None = None
    """Set when the projections were rolled back (the journal rows committed)."""


_FENCE_AND_WRITE = """
WITH v AS (
    SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                         $6::bytea[], $7::bytea[])
        AS v(id, epoch, last_seq, checkpoint, first_seq, records, record_index)
), locked AS (
    SELECT p.id FROM partitions p JOIN v ON p.id = v.id AND p.epoch = v.epoch
    ORDER BY p.id
    FOR UPDATE OF p
), passed AS (
    UPDATE partitions p SET last_seq = v.last_seq, checkpoint = v.checkpoint::jsonb
    FROM v, locked
    WHERE p.id = v.id AND p.id = locked.id
    RETURNING p.id
), written AS (
    INSERT INTO partition_journal (partition, first_seq, last_seq, epoch, record_count, records,
        record_index)
    SELECT v.id, v.first_seq, v.last_seq, v.epoch, (v.last_seq - v.first_seq + 1)::int,
        v.records, v.record_index
    FROM v JOIN passed ON passed.id = v.id
    WHERE v.records IS NOT NULL
    ON CONFLICT (partition, first_seq) DO NOTHING
    RETURNING partition
)
SELECT passed.id, EXISTS (SELECT 1 FROM written WHERE written.partition = passed.id)
FROM passed
"""
"""The fence and the journal rows in one statement: a row is written only for a partition
whose fence passed (``passed``, the ``UPDATE``'s ``RETURNING``); each passed partition comes
back with whether its row was inserted (False: a checkpoint only, or a row already there)."""


async def write_batch(
    conn: asyncpg.Connection,
    parts: Sequence[PartitionWrite],
    global_statements: Statements,
    retry: bool,
) -> BatchOutcome:
    """Write one batch in one transaction (see the module docstring); ``global_statements``
    (records of no partition: signals, audit...) run with the projections, outside any fence.
    ``retry``: an earlier attempt of this very batch may have committed.

    Raises:
        ConfigError: a journal row at a ``(partition, first_seq)`` this batch writes exists
            with another epoch or range (two writers at one epoch: never retried).
        Exception: connection-level failures, for the caller to retry.
    """
    outcome = BatchOutcome()
    async with conn.transaction():
        inserted: dict[int, bool] = {}
        if parts:
            ordered = sorted(parts, key=lambda w: w.partition)
            inserted = {
                row[0]: row[1]
                for row in await conn.fetch(
                    _FENCE_AND_WRITE,
                    [w.partition for w in ordered],
                    [w.epoch for w in ordered],
                    [w.last_seq for w in ordered],
                    [msgspec.json.encode(w.checkpoint).decode() for w in ordered],
                    [w.first_seq for w in ordered],
                    [w.payload for w in ordered],
                    [w.record_index for w in ordered],
                )
            }
        passed = inserted.keys()
        for w in parts:
            if w.partition not in passed:
                if retry and w.payload is not None and await _committed(conn, w):
                    outcome.already_written.add(w.partition)
                else:
                    outcome.fenced.add(w.partition)
            elif w.payload is not None and not inserted[w.partition]:
                if not await _committed(conn, w):
                    raise ConfigError(
                        "partition journal collision: two writers at one epoch?",
                        partition=w.partition,
                        first_seq=w.first_seq,
                        epoch=w.epoch,
                    )
                outcome.already_written.add(w.partition)
        statements = [
            statement
            for w in parts
            if w.partition in passed and w.partition not in outcome.already_written
            for statement in w.statements
        ]
        statements.extend(global_statements)
        outcome.projection_error = await _project(conn, statements)
    return outcome


async def _committed(conn: asyncpg.Connection, w: PartitionWrite) -> bool:
    """Whether ``w``'s journal row is there already, as this writer wrote it."""
    row = await conn.fetchrow(
        "SELECT last_seq, epoch FROM partition_journal WHERE partition = $1 AND first_seq = $2",
        w.partition,
        w.first_seq,
    )
    return row is not None and (row[0], row[1]) == (w.last_seq, w.epoch)


async def _project(conn: asyncpg.Connection, statements: Statements) -> str | None:
    """Run the projection statements in a savepoint; roll back only them on failure (the
    journal is the record: projections can be rebuilt from it). Returns the error, if any."""
    if not any(rows for _, rows in statements):
        return None
    try:
        async with conn.transaction():
            for sql, rows in statements:
                if rows:
                    await conn.executemany(sql, rows)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if is_unavailable(exc):
            raise
        return repr(exc)
    return None


async def fetch_tail(
    conn: asyncpg.Connection, partition: int, after_seq: int
) -> list[tuple[int, int, bytes, bytes | None]]:
    """Every journal row of ``partition`` holding records after ``after_seq``, NEWEST first,
    as ``(first_seq, last_seq, records, record_index)`` (what ``SnapshotReplay`` folds)."""
    rows = await conn.fetch(
        "SELECT first_seq, last_seq, records, record_index FROM partition_journal"
        " WHERE partition = $1 AND last_seq > $2 ORDER BY first_seq DESC",
        partition,
        after_seq,
    )
    return [(row[0], row[1], row[2], row[3]) for row in rows]
