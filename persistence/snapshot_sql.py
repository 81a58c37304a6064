"""The snapshots' SQL, and compaction: asyncio-side functions of one asyncpg connection.

They run on the bridge's asyncio loop, through
:meth:`~persistence.db.Database.run_with_connection` or
:meth:`~persistence.db.Database.run_in_transaction`; :mod:`persistence.snapshot_store` is the
trio side. The rules of the ``snapshots`` and ``snapshot_parts`` tables:

* a snapshot's ``seq`` is the last journal seq folded into it; it counts (for recovery,
  for compaction) only once ``complete``: a snapshot written in parts
  (:func:`write_snapshot_in_parts`) is complete once every part is there;
* compaction deletes journal rows only up to the newest complete snapshot (the records exist
  nowhere else).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import asyncpg

from protocol.errors import StorageError, UsageError

__all__ = [
    "compact",
    "latest_snapshot",
    "snapshot_and_journal_seqs",
    "write_snapshot",
    "write_snapshot_in_parts",
]


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
