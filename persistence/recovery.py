"""Recovery: the engine's state is the newest snapshot plus every journal record after it.

Start-up and crash recovery are the same call, :func:`load_state`; the snapshotter uses it too
(an old snapshot plus the newer journal is the new snapshot). The fold itself is pure
(:meth:`engine.state.EngineState.apply`); this module only reads.
"""

from __future__ import annotations

import gc
import time
from typing import Any, NamedTuple

import structlog

from engine.state import EngineState, Replay

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
    loaded = started
    replay = Replay(state)
    # A bulk load: every object made here lives on, so the cyclic collector has nothing to
    # find and would only rescan the growing heap again and again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        # Read everything first, then decode and fold: interleaved, the decoding (trio thread)
        # and asyncpg's reading (the bridge thread) take turns at the GIL every half
        # millisecond and both run at a fraction of their speed.
        payloads = [batch async for batch in journal.read_batches(state.seq)]
        loaded = time.perf_counter()
        for first, last, payload in payloads:
            skip = max(0, state.seq - first + 1)  # a batch may straddle the snapshot
            replayed += replay.add_payload(payload, skip, last)
        replay.finish()
        del payloads
    finally:
        if collecting:
            gc.enable()
    elapsed = time.perf_counter() - started
    log.info(
        "state recovered",
        read_s=round(loaded - started, 3),
        snapshot_seq=snapshot_seq,
        replayed=replayed,
        positions=len(state.positions),
        commands=len(state.commands),
        seconds=round(elapsed, 3),
    )
    return Recovered(state, snapshot_seq, replayed, elapsed)
