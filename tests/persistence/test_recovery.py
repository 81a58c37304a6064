"""Recovery from a real Postgres: the journal's replay index (engine.journal_index) is written
with each batch and used by the fold; batches written before it existed are still folded, and
a journal that has both recovers to the record-by-record fold."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from engine.journal_index import encode_indexed_batch
from engine.records import encode_batch
from engine.replay import SnapshotReplay
from engine.state import EngineState
from persistence import Database, JournalReader, JournalWriter, SnapshotStore
from persistence.recovery import load_state
from persistence.snapshotter import take_snapshot
from tests.persistence.test_snapshotter import _random_records


def _assert_recovered(state: EngineState, reference: EngineState) -> None:
    assert state.seq == reference.seq
    # (In any order: these random journals save positions again after a final save, which ids
    # never are; tests/engine/test_replay.py holds the order where they are not.)
    assert state.positions == reference.positions
    assert list(state.commands.items()) == list(reference.commands.items())
    assert state.signals == reference.signals and state.approvals == reference.approvals
    assert state.guards == reference.guards


async def _write(
    db: Database, encoder: Any, rng: random.Random, reference: EngineState, rounds: int
) -> None:
    journal: JournalWriter[Any] = JournalWriter(db, encoder, max_batch=9, window_ms=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for _ in range(rounds):
            records = _random_records(rng, rng.choice([1, 7, 40]), reference.seq)
            for record in records:
                journal.append_nowait(record)
                reference.apply(record, reference.seq + 1)
            await journal.flush()
        nursery.cancel_scope.cancel()


async def test_an_indexed_journal_recovers_to_the_record_by_record_fold(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng, reference = random.Random(11), EngineState()
    await _write(db, encode_indexed_batch, rng, reference, 12)
    assert await db.fetchval("SELECT count(*) FROM journal WHERE record_index IS NULL") == 0

    def record_by_record(*args: Any) -> int:
        raise AssertionError("an indexed batch was folded record by record")

    monkeypatch.setattr(SnapshotReplay, "fold_newest_first", record_by_record)
    recovered = await load_state(JournalReader(db), SnapshotStore(db))
    _assert_recovered(recovered.state, reference)
    assert recovered.records == reference.seq


async def test_batches_from_before_the_index_and_after_it_recover_together(
    db: Database,
) -> None:
    """The upgrade: old batches have no index, the new writer's have one; a snapshot taken
    in between, then more of both kinds of writer."""
    rng, reference = random.Random(12), EngineState()
    await _write(db, encode_batch, rng, reference, 6)
    await _write(db, encode_indexed_batch, rng, reference, 6)
    kinds = await db.fetch("SELECT record_index IS NULL AS old FROM journal ORDER BY last_seq")
    assert {row["old"] for row in kinds} == {True, False}
    _assert_recovered((await load_state(JournalReader(db), SnapshotStore(db))).state, reference)

    await take_snapshot(JournalReader(db), SnapshotStore(db), now_ms=1)
    await _write(db, encode_indexed_batch, rng, reference, 4)
    await _write(db, encode_batch, rng, reference, 2)
    await _write(db, encode_indexed_batch, rng, reference, 3)
    recovered = await load_state(JournalReader(db), SnapshotStore(db))
    _assert_recovered(recovered.state, reference)
