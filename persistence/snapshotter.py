"""Snapshots, taken outside the engine's process.

A snapshot is the fold of the previous snapshot and the journal after it, so it can be computed
by anyone who can read the journal. Taking it in a separate process (``python -m
persistence.snapshotter``, started by the engine every ``snapshot_interval_s`` and once more at
shutdown) keeps the encoding of a hundred thousand positions off the engine's thread and on the
other core: the tick path does not notice a snapshot. After writing it, journal batches it
covers are compacted away (the previous snapshot is kept as a fallback).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import structlog
import trio

from engine.records import encode_batch
from persistence.bridge import open_bridge
from persistence.db import open_database
from persistence.journal import Journal
from persistence.recovery import load_state

__all__ = ["main", "take_snapshot"]


async def take_snapshot(journal: Any, now_ms: int | None = None) -> tuple[int, int]:
    """Fold, store and compact; returns ``(seq, bytes)`` of the new snapshot.

    Nothing is written when no record arrived since the last snapshot.
    """
    log = structlog.get_logger().bind(component="snapshotter")
    previous = await journal.latest_snapshot()
    recovered = await load_state(journal)
    state = recovered.state
    if previous is not None and previous[0] == state.seq:
        return state.seq, 0
    state.prune(now_ms if now_ms is not None else int(time.time() * 1000))
    payload = state.encode_snapshot()
    await journal.write_snapshot(state.seq, payload)
    # Keep the previous snapshot replayable: compact only what it already covered.
    if previous is not None:
        await journal.compact(previous[0])
    log.info(
        "snapshot written",
        seq=state.seq,
        bytes=len(payload),
        positions=len(state.positions),
        replayed=recovered.records,
    )
    return state.seq, len(payload)


async def _run(dsn: str) -> tuple[int, int]:
    async with open_bridge() as bridge, open_database(bridge, dsn) as db:
        journal: Journal[Any] = Journal(db, encode_batch)
        return await take_snapshot(journal)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fold the journal into a new snapshot.")
    parser.add_argument("--dsn", required=True, help="the engine's Postgres DSN")
    args = parser.parse_args(argv)
    seq, size = trio.run(_run, args.dsn)
    print(f"snapshot seq={seq} bytes={size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
