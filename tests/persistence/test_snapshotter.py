"""Snapshots: the fold of the journal stored, old batches compacted, nothing moved when
nothing is new (a snapshot's payload is the expensive part to read, see take_snapshot)."""

from __future__ import annotations

from typing import Any

import trio

from bench.common import open_positions
from engine.records import LevelsMoved, PositionSaved, encode_batch
from engine.state import EngineState
from persistence import Database, Journal
from persistence.recovery import load_state
from persistence.snapshotter import take_snapshot


async def _append(journal: Journal[Any], records: list[Any]) -> None:
    for record in records:
        journal.append_nowait(record)
    await journal.flush()


async def test_snapshot_folds_compacts_and_skips_when_nothing_is_new(db: Database) -> None:
    positions = open_positions(50, 5, 200_000, seed=3)
    journal: Journal[Any] = Journal(db, encode_batch, max_batch=20, window_ms=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        await _append(journal, [PositionSaved(position=p) for p in positions])
        first, size = await take_snapshot(journal, now_ms=1)
        assert first == 50 and size > 0

        calls: list[str] = []
        reading = journal.latest_snapshot

        async def counted() -> Any:
            calls.append("payload")
            return await reading()

        journal.latest_snapshot = counted  # type: ignore[method-assign]
        assert await take_snapshot(journal, now_ms=2) == (50, 0)
        assert calls == []  # nothing new: no payload was read

        moved = positions[7]
        await _append(journal, [LevelsMoved(position_id=moved.id, sl=1, tp=None, time_ms=3)])
        second, size = await take_snapshot(journal, now_ms=4)
        assert second == 51 and size > 0 and calls == ["payload"]  # read once, by the fold
        nursery.cancel_scope.cancel()

    # The newest snapshot alone is the whole state; the batches the first one covered are gone.
    snapshot = await journal.latest_snapshot()
    assert snapshot is not None and snapshot[0] == 51
    state = EngineState.decode_snapshot(snapshot[1])
    assert len(state.positions) == 50 and state.positions[moved.id].sl == 1
    recovered = await load_state(Journal(db, encode_batch))
    assert recovered.state.positions == state.positions and recovered.records == 0
    assert await db.fetchval("SELECT count(*) FROM journal WHERE last_seq <= 50") == 0
