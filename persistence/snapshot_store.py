"""Snapshots of the engine's state, stored beside the journal, and the compaction they allow.

A snapshot at ``seq`` is the state after journal record ``seq``. Once a newer snapshot is
complete, the journal batches an older one covered can go (:meth:`SnapshotStore.compact`).
The SQL is :mod:`persistence.snapshot_sql`'s, the stored encoding
:mod:`persistence.snapshot_codec`'s.
"""

from __future__ import annotations

import functools
from typing import Protocol

from persistence import snapshot_codec, snapshot_sql
from persistence.db import Database
from protocol.errors import UsageError

__all__ = ["CommitBarrier", "SnapshotStore"]


class CommitBarrier(Protocol):
    """What a snapshot waits on: the journal writer, when one runs in this process."""

    async def flush_through(self, seq: int) -> None: ...


class SnapshotStore:
    """The snapshots in ``db``.

    Args:
        db: where the journal and its snapshots live (migrated).
        part_bytes: a stored snapshot larger than this is written in parts this large, each
            its own transaction (see ``migrations/0002_snapshot_parts.sql``).
        writer: the journal writer of this process, if any: a snapshot at ``seq`` first has
            it commit every record up to ``seq`` (a snapshot is never ahead of its journal).
    """

    def __init__(
        self, db: Database, *, part_bytes: int = 16 * 1024, writer: CommitBarrier | None = None
    ) -> None:
        if part_bytes < 1:
            raise UsageError("part_bytes must be >= 1")
        self.db = db
        self.part_bytes = part_bytes
        self._writer = writer

    async def latest_snapshot(self) -> tuple[int, bytes] | None:
        """``(seq, payload)`` of the newest snapshot, or None.

        Raises:
            StorageError: the database is unavailable, or the stored payload is corrupt.
        """
        row = await self.db.run_with_connection(snapshot_sql.latest_snapshot)
        return None if row is None else (row[0], snapshot_codec.unpack(row[1]))

    async def snapshot_and_journal_seqs(self) -> tuple[int | None, int]:
        """The newest snapshot's seq (None: none) and the highest committed journal seq
        (0: empty), read without any payload."""
        return await self.db.run_with_connection(snapshot_sql.snapshot_and_journal_seqs)

    async def write_snapshot(self, seq: int, payload: bytes) -> None:
        """Store a snapshot of the state after record ``seq``.

        Raises:
            UsageError: ``seq`` is past the last record the writer was given.
        """
        if self._writer is not None:
            await self._writer.flush_through(seq)
        stored = snapshot_codec.pack(payload)
        step = self.part_bytes
        if len(stored) <= step:
            await self.db.run_in_transaction(
                functools.partial(
                    snapshot_sql.write_snapshot, seq=seq, payload=stored, size=len(payload)
                )
            )
            return
        view = memoryview(stored)
        parts = [view[k : k + step] for k in range(0, len(stored), step)]
        await self.db.run_with_connection(
            functools.partial(
                snapshot_sql.write_snapshot_in_parts, seq=seq, parts=parts, size=len(payload)
            )
        )

    async def compact(self, upto_seq: int, *, keep_snapshots: int = 2) -> tuple[int, int]:
        """Delete journal batches ending at or before ``upto_seq`` (which must not be past
        the newest snapshot) and all but the ``keep_snapshots`` newest snapshots.

        Returns ``(batches_deleted, snapshots_deleted)``. To keep the previous snapshot
        replayable as a fallback, pass its seq rather than the newest one's.
        """
        if keep_snapshots < 1:
            raise UsageError("keep at least one snapshot")
        return await self.db.run_in_transaction(
            functools.partial(
                snapshot_sql.compact, upto_seq=upto_seq, keep_snapshots=keep_snapshots
            )
        )
