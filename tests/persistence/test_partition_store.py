"""A partition read back (snapshot + journal tail), and its fenced snapshots and compaction."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from engine.journal_index import encode_indexed_batch
from engine.state import EngineState
from persistence import Database
from persistence.partition_journal import PartitionJournalWriter
from persistence.partition_store import (
    compact_partition,
    load_partition,
    write_partition_snapshot,
)
from protocol.errors import Fenced, UsageError
from tests.persistence.test_recovery import _assert_recovered
from tests.persistence.test_snapshotter import _random_records

PARTITION = 5


async def _seed(db: Database) -> None:
    await db.execute("INSERT INTO cluster (partitions) VALUES (8)")
    await db.execute(
        "INSERT INTO partitions (id, owner, epoch) SELECT g, 'me', 1 FROM generate_series(0, 7) g"
    )


async def _write(
    db: Database, rng: random.Random, reference: EngineState, rounds: int, after_seq: int
) -> None:
    """Random engine records for PARTITION (and some for partition 6, which must not leak in)."""
    journal: PartitionJournalWriter[Any] = PartitionJournalWriter(
        db, encode_indexed_batch, None, lambda r: PARTITION, max_batch=9, window_ms=0
    )
    other: PartitionJournalWriter[Any] = PartitionJournalWriter(
        db, encode_indexed_batch, None, lambda r: 6, window_ms=0
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        await nursery.start(other.run)
        journal.open_partition(PARTITION, 1, after_seq, {})
        other.open_partition(
            6, 1, await db.fetchval("SELECT last_seq FROM partitions WHERE id = 6"), {}
        )
        for _ in range(rounds):
            for record in _random_records(rng, rng.choice([1, 7, 40]), reference.seq):
                journal.append_nowait(record)
                reference.apply(record, reference.seq + 1)
            for record in _random_records(rng, 3, 10_000):
                other.append_nowait(record)
            await journal.flush()
            await other.flush()
        nursery.cancel_scope.cancel()


async def test_a_partition_loads_from_its_snapshot_and_journal_tail(db: Database) -> None:
    await _seed(db)
    rng, reference = random.Random(21), EngineState()
    state, last = await load_partition(db, PARTITION)
    assert last == 0 and not state.positions

    await _write(db, rng, reference, 8, 0)
    state, last = await load_partition(db, PARTITION)
    _assert_recovered(state, reference)
    assert last == reference.seq

    snapshot_seq = reference.seq
    await write_partition_snapshot(db, PARTITION, 1, snapshot_seq, reference.encode_snapshot())
    await _write(db, rng, reference, 5, snapshot_seq)
    state, last = await load_partition(db, PARTITION)
    _assert_recovered(state, reference)

    rows, snapshots = await compact_partition(db, PARTITION, 1, snapshot_seq)
    assert rows > 0 and snapshots == 0
    first = await db.fetchval(
        "SELECT min(first_seq) FROM partition_journal WHERE partition = $1", PARTITION
    )
    assert first > snapshot_seq - 9  # only batches past (or straddling) the snapshot are left
    state, last = await load_partition(db, PARTITION)
    _assert_recovered(state, reference)
    assert last == reference.seq


async def test_snapshots_and_compaction_are_fenced(db: Database) -> None:
    await _seed(db)
    rng, reference = random.Random(22), EngineState()
    await _write(db, rng, reference, 4, 0)
    seq = reference.seq
    await write_partition_snapshot(db, PARTITION, 1, seq, reference.encode_snapshot())
    rows_before = await db.fetchval("SELECT count(*) FROM partition_journal")

    await db.execute("UPDATE partitions SET owner = 'other', epoch = 2 WHERE id = $1", PARTITION)
    with pytest.raises(Fenced):
        await write_partition_snapshot(db, PARTITION, 1, seq, b"\x90")
    with pytest.raises(Fenced):
        await compact_partition(db, PARTITION, 1, seq)
    assert await db.fetchval("SELECT count(*) FROM partition_journal") == rows_before
    stored = await db.fetch("SELECT seq, epoch FROM partition_snapshots")
    assert [tuple(r) for r in stored] == [(seq, 1)]  # the zombie's snapshot was not written
    # The new owner, at its epoch, may.
    assert (await compact_partition(db, PARTITION, 2, seq))[0] > 0


async def test_a_snapshot_is_never_ahead_of_its_journal(db: Database) -> None:
    await _seed(db)
    rng, reference = random.Random(23), EngineState()
    await _write(db, rng, reference, 2, 0)
    with pytest.raises(UsageError):
        await write_partition_snapshot(db, PARTITION, 1, reference.seq + 1, b"\x90")
    with pytest.raises(UsageError):
        await compact_partition(db, PARTITION, 1, reference.seq)  # no snapshot yet
    assert await db.fetchval("SELECT count(*) FROM partition_snapshots") == 0
