"""Recovery: the engine's state is the newest snapshot plus every journal record after it.

Start-up and crash recovery are the same call, :func:`load_state`; the snapshotter uses it too
(an old snapshot plus the newer journal is the new snapshot). The fold itself is pure
(:meth:`engine.state.EngineState.apply`); this module only reads.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import structlog

from engine.records import decode_batch
from engine.state import EngineState

__all__ = ["Recovered", "load_state"]


class Recovered(NamedTuple):
    state: EngineState
    snapshot_seq: int
    records: int
    seconds: float


async def load_state(journal: Any) -> Recovered:
    """The state after the last committed record (``journal``: a ``persistence.Journal``)."""
    log = structlog.get_logger().bind(component="recovery")
    started = time.perf_counter()
    snapshot = await journal.latest_snapshot()
    state = EngineState() if snapshot is None else EngineState.decode_snapshot(snapshot[1])
    snapshot_seq = state.seq
    replayed = 0
    async for first, last, payload in journal.read_batches(state.seq):
        records = decode_batch(payload)
        skip = max(0, state.seq - first + 1)  # a batch may straddle the snapshot
        state.apply_all(records[skip:], last)
        replayed += len(records) - skip
    elapsed = time.perf_counter() - started
    log.info(
        "state recovered",
        snapshot_seq=snapshot_seq,
        replayed=replayed,
        positions=len(state.positions),
        commands=len(state.commands),
        seconds=round(elapsed, 3),
    )
    return Recovered(state, snapshot_seq, replayed, elapsed)
