"""A partition's state read back, and its snapshots and compaction, fenced by epoch.

Cluster mode's counterpart of :mod:`persistence.recovery` and
:mod:`persistence.snapshot_store`, for one partition at a time:

* :func:`load_partition` = the partition's newest snapshot + its journal rows after it, folded
  by :class:`engine.replay.SnapshotReplay` (the same fold as a single node's recovery). Call it
  only once the claim has COMMITTED (the caller's guarantee): from then on no former owner
  can add a row, so what is read is complete.
* :func:`write_partition_snapshot` and :func:`compact_partition` write only while the writer
  still holds the partition at ``epoch``: the same conditional ``UPDATE partitions ... WHERE
  id = $p AND epoch = $e`` as every journal batch, run LAST in the transaction (so the row lock
  a claim or a journal batch would wait for is held only until the commit); zero rows and
  :class:`~protocol.errors.Fenced` is raised, the transaction rolled back: nothing written.

A partition snapshot's payload is an encoded :class:`engine.state.StateSnapshot` whose ``seq``
is the PARTITION seq it was taken at (the fold skips the journal records it holds).
"""

from __future__ import annotations

import functools

import asyncpg

from engine.replay import SnapshotReplay
from engine.state import EngineState
from persistence import partition_sql, snapshot_codec
from persistence.db import Database
from protocol.errors import Fenced, UsageError

__all__ = ["compact_partition", "load_partition", "write_partition_snapshot"]


async def load_partition(db: Database, partition: int) -> tuple[EngineState, int]:
    """The state of ``partition``'s users after its last committed record, and that record's
    seq (0: nothing recorded yet).

    Raises:
        StorageError: Postgres is unavailable, or the stored snapshot is corrupt.
        UsageError: the snapshot's own seq is not the one it is stored under.
    """
    row = await db.fetchrow(
        "SELECT seq, payload FROM partition_snapshots WHERE partition = $1"
        " ORDER BY seq DESC LIMIT 1",
        partition,
    )
    replay = SnapshotReplay(None if row is None else snapshot_codec.unpack(row[1]))
    if row is not None and replay.seq != row[0]:
        raise UsageError(
            "a partition snapshot's seq is not the one it is stored under",
            partition=partition,
            stored_seq=row[0],
            snapshot_seq=replay.seq,
        )
    tail = await db.run_with_connection(
        functools.partial(partition_sql.fetch_tail, partition=partition, after_seq=replay.seq)
    )
    replay.fold_stored_newest_first(tail)
    state = replay.finish()
    return state, state.seq


async def write_partition_snapshot(
    db: Database, partition: int, epoch: int, seq: int, payload: bytes
) -> None:
    """Store the snapshot of ``partition`` after its record ``seq`` (replacing one at the same
    seq), if this node still holds it at ``epoch``.

    Raises:
        Fenced: another node has claimed the partition; nothing was written.
        UsageError: ``seq`` is past the partition's last committed record (flush first: a
            snapshot is never ahead of its journal).
    """
    stored = snapshot_codec.pack(payload)

    async def write(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "INSERT INTO partition_snapshots (partition, seq, epoch, payload) VALUES ($1, $2, $3,"
            " $4) ON CONFLICT (partition, seq) DO UPDATE SET epoch = excluded.epoch,"
            " payload = excluded.payload, taken_at = now()",
            partition,
            seq,
            epoch,
            stored,
        )
        last = await _fence(conn, partition, epoch)
        if seq > last:
            raise UsageError(
                "partition snapshot is past its journal", partition=partition, seq=seq, last=last
            )

    await db.run_in_transaction(write)


async def compact_partition(
    db: Database, partition: int, epoch: int, upto_seq: int, *, keep_snapshots: int = 2
) -> tuple[int, int]:
    """Delete ``partition``'s journal rows ending at or before ``upto_seq`` (not past its
    newest snapshot) and all but its ``keep_snapshots`` newest snapshots, if this node still
    holds it at ``epoch``. Returns ``(rows, snapshots)`` deleted.

    Raises:
        Fenced: another node has claimed the partition; nothing was deleted.
        UsageError: ``upto_seq`` is past the newest snapshot (those records exist nowhere
            else), or ``keep_snapshots`` < 1.
    """
    if keep_snapshots < 1:
        raise UsageError("keep at least one snapshot")

    async def compact(conn: asyncpg.Connection) -> tuple[int, int]:
        newest = await conn.fetchval(
            "SELECT max(seq) FROM partition_snapshots WHERE partition = $1", partition
        )
        if newest is None or upto_seq > newest:
            raise UsageError(
                "cannot compact a partition's journal past its newest snapshot",
                partition=partition,
                upto_seq=upto_seq,
                newest_snapshot=newest,
            )
        rows = await conn.execute(
            "DELETE FROM partition_journal WHERE partition = $1 AND last_seq <= $2",
            partition,
            upto_seq,
        )
        snapshots = await conn.execute(
            "DELETE FROM partition_snapshots WHERE partition = $1 AND seq NOT IN"
            " (SELECT seq FROM partition_snapshots WHERE partition = $1"
            "  ORDER BY seq DESC LIMIT $2)",
            partition,
            keep_snapshots,
        )
        await _fence(conn, partition, epoch)
        return int(rows.split()[-1]), int(snapshots.split()[-1])

    return await db.run_in_transaction(compact)


async def _fence(conn: asyncpg.Connection, partition: int, epoch: int) -> int:
    """The conditional write every partition write makes; its ``last_seq``.

    Raises:
        Fenced: zero rows (the caller's transaction then rolls back).
    """
    last = await conn.fetchval(
        "UPDATE partitions SET last_seq = last_seq WHERE id = $1 AND epoch = $2 RETURNING last_seq",
        partition,
        epoch,
    )
    if last is None:
        raise Fenced("partition fenced: another node owns it", partition=partition, epoch=epoch)
    return int(last)
