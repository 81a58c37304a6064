"""Recovery: the engine's state is the newest snapshot plus every journal record after it.

Start-up and crash recovery are the same call, :func:`load_state`; the snapshotter uses it too
(an old snapshot plus the newer journal is the new snapshot). The fold itself is pure
(:class:`engine.replay.SnapshotReplay`, which reaches the state
:meth:`engine.state.EngineState.apply` reaches record by record); this module only reads.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, NamedTuple

import structlog
import trio
import trio.lowlevel

from engine.replay import SnapshotReplay
from engine.state import EngineState
from protocol.errors import UsageError

if TYPE_CHECKING:
    from persistence.journal_reader import JournalReader
    from persistence.snapshot_store import SnapshotStore

__all__ = ["Recovered", "load_state"]


class Recovered(NamedTuple):
    state: EngineState
    snapshot_seq: int
    records: int
    seconds: float


async def load_state(journal: JournalReader, snapshots: SnapshotStore) -> Recovered:
    """The state after the last committed record: the newest of ``snapshots`` and the
    ``journal`` after it."""
    log = structlog.get_logger().bind(component="recovery")
    started = time.perf_counter()
    newest_snapshot, _ = await snapshots.snapshot_and_journal_seqs()
    after = newest_snapshot or 0
    # A bulk load: every object made here lives on, so the cyclic collector has nothing to
    # find and would only rescan the growing heap again and again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        # The journal is read backwards, a chunk at a time, from the start: while the snapshot
        # is fetched and decoded, Postgres reads the journal on the other core. The fold then
        # takes it all at once (engine.replay: indexed batches are grouped by position in
        # numpy, older ones without an index folded record by record, newest first).
        send, receive = trio.open_memory_channel[list[tuple[int, int, bytes, bytes | None]]](1)
        batches: list[tuple[int, int, bytes, bytes | None]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_newest_first, journal, after, send)
            snapshot = await snapshots.latest_snapshot()
            replay = SnapshotReplay(None if snapshot is None else snapshot[1])
            snapshot_seq = replay.seq
            # A snapshot written since (by a snapshotter) is newer: the fold skips what it
            # holds. An older one would leave records out; the newest one never gets older.
            if snapshot_seq < after:
                raise UsageError(
                    "the newest snapshot is older than the seqs said",
                    snapshot_seq=snapshot_seq,
                    expected=after,
                )
            wait_started = time.perf_counter()
            async with receive:
                async for chunk in receive:
                    batches.extend(chunk)
            waited = time.perf_counter() - wait_started
        fold_started = time.perf_counter()
        replayed = replay.fold_stored_newest_first(batches)
        del batches
        finish_started = time.perf_counter()
        state = replay.finish()
        finished = time.perf_counter()
    finally:
        if collecting:
            gc.enable()
    elapsed = time.perf_counter() - started
    log.info(
        "state recovered",
        snapshot_s=round(wait_started - started, 3),
        read_wait_s=round(waited, 3),
        fold_s=round(finish_started - fold_started, 3),
        finish_s=round(finished - finish_started, 3),
        snapshot_seq=snapshot_seq,
        replayed=replayed,
        positions=len(state.positions),
        commands=len(state.commands),
        seconds=round(elapsed, 3),
    )
    return Recovered(state, snapshot_seq, replayed, elapsed)


async def _read_newest_first(
    journal: JournalReader,
    after_seq: int,
    send: trio.MemorySendChannel[list[tuple[int, int, bytes, bytes | None]]],
) -> None:
    async with send:
        async for chunk in journal.read_batches_newest_first(after_seq):
            await send.send(chunk)
