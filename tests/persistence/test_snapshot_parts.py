"""Snapshots written in parts (migrations/0002_snapshot_parts.sql): read back whole, invisible
until complete, never mixed between two writers of the same seq, and a missing or wrong part
fails the read instead of decoding into another state."""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest

from persistence import Database, SnapshotStore, snapshot_codec
from persistence import snapshot_sql as store
from protocol.errors import StorageError

PART = 64


def _journal(db: Database) -> SnapshotStore:
    return SnapshotStore(db, part_bytes=PART)


async def _conn(db: Database, fn: Any, **kwargs: Any) -> Any:
    return await db.run_with_connection(functools.partial(fn, **kwargs))


async def _tx(db: Database, fn: Any, **kwargs: Any) -> Any:
    return await db.run_in_transaction(functools.partial(fn, **kwargs))


async def test_a_large_snapshot_is_stored_in_parts_and_read_back_whole(db: Database) -> None:
    journal = _journal(db)
    state = os.urandom(5000)  # incompressible: ~80 parts
    await journal.write_snapshot(7, state)
    row = await db.fetchrow("SELECT payload, parts, complete, size FROM snapshots WHERE seq = 7")
    assert row["payload"] == b"" and row["complete"] and row["size"] == 5000
    assert row["parts"] == await db.fetchval("SELECT count(*) FROM snapshot_parts") > 1
    assert await journal.latest_snapshot() == (7, state)
    assert await journal.snapshot_and_journal_seqs() == (7, 0)

    # A small one is written whole, as before.
    await journal.write_snapshot(8, b"x" * 10)
    assert await db.fetchval("SELECT parts FROM snapshots WHERE seq = 8") == 0
    assert await journal.latest_snapshot() == (8, b"x" * 10)


async def test_a_writer_that_died_half_way_is_invisible_and_compacted(db: Database) -> None:
    journal = _journal(db)
    whole = os.urandom(1000)
    await journal.write_snapshot(5, whole)
    # Another writer claims seq 9 and dies after two of its parts.
    stored = snapshot_codec.pack(os.urandom(1000))
    parts = [stored[k : k + PART] for k in range(0, len(stored), PART)]
    await _tx(db, store._claim_snapshot, seq=9, payload=b"", size=1000, parts=len(parts), attempt=1)
    await _conn(db, store._insert_parts, seq=9, attempt=1, parts=parts[:2])
    assert await journal.latest_snapshot() == (5, whole)
    assert await journal.snapshot_and_journal_seqs() == (5, 0)
    with pytest.raises(Exception, match="past the newest snapshot"):
        await journal.compact(9)

    # Written again at the same seq: the dead writer's parts are gone, the new one counts.
    again = os.urandom(1000)
    await journal.write_snapshot(9, again)
    assert await journal.latest_snapshot() == (9, again)
    assert await db.fetchval("SELECT count(*) FROM snapshot_parts WHERE attempt = 1") == 0

    # One that died at seq 6, older than the newest complete snapshot: compaction removes it,
    # parts and all.
    await _tx(db, store._claim_snapshot, seq=6, payload=b"", size=1, parts=3, attempt=2)
    await _conn(db, store._insert_parts, seq=6, attempt=2, parts=[b"a", b"b"])
    assert await journal.compact(5, keep_snapshots=2) == (0, 1)
    assert [r["seq"] for r in await db.fetch("SELECT seq FROM snapshots ORDER BY seq")] == [5, 9]
    assert await db.fetchval("SELECT count(*) FROM snapshot_parts WHERE attempt = 2") == 0


async def test_two_writers_of_one_seq_never_mix_their_parts(db: Database) -> None:
    journal = _journal(db)
    first = snapshot_codec.pack(os.urandom(1000))
    first_parts = [first[k : k + PART] for k in range(0, len(first), PART)]
    n = len(first_parts)
    await _tx(db, store._claim_snapshot, seq=3, payload=b"", size=1000, parts=n, attempt=11)
    await _conn(db, store._insert_parts, seq=3, attempt=11, parts=first_parts[: n // 2])

    # A second writer of seq 3 claims it, writes all its parts and completes.
    second = os.urandom(1000)
    await journal.write_snapshot(3, second)

    # The first goes on: its remaining parts are written, but it no longer owns the row.
    await _conn(
        db, store._insert_parts, seq=3, attempt=11, parts=first_parts[n // 2 :], first=n // 2
    )
    with pytest.raises(StorageError, match="overtook"):
        await _tx(db, store._complete_snapshot, seq=3, attempt=11, parts=n)
    assert await journal.latest_snapshot() == (3, second)


async def test_a_newer_snapshot_compacting_a_slow_writer_away_fails_that_writer(
    db: Database,
) -> None:
    journal = _journal(db)
    await journal.write_snapshot(2, os.urandom(500))
    await _tx(db, store._claim_snapshot, seq=3, payload=b"", size=500, parts=4, attempt=5)
    await journal.write_snapshot(4, os.urandom(500))
    await journal.compact(2)  # the incomplete seq 3 is older than the newest complete one
    with pytest.raises(StorageError, match="overtook"):
        await _conn(db, store._insert_parts, seq=3, attempt=5, parts=[b"late"])


async def test_a_missing_or_wrong_part_fails_the_read(db: Database) -> None:
    journal = _journal(db)
    await journal.write_snapshot(1, os.urandom(2000))
    await db.execute("DELETE FROM snapshot_parts WHERE part = 3")
    with pytest.raises(StorageError, match="parts are missing"):
        await journal.latest_snapshot()

    await journal.write_snapshot(2, os.urandom(2000))
    await db.execute(
        "UPDATE snapshot_parts SET data = decode(repeat('00', length(data)), 'hex')"
        " WHERE seq = 2 AND part = 5"
    )
    with pytest.raises(StorageError, match="corrupt"):
        await journal.latest_snapshot()
