"""Snapshots, taken outside the engine's process.

A snapshot is the fold of the previous snapshot and the journal after it, so it can be computed
by anyone who can read the journal. Taking it in a separate process (``python -m
persistence.snapshotter``, started by the engine every ``snapshot_interval_s`` and once more at
shutdown) keeps the encoding of a hundred thousand positions off the engine's thread and on the
other core, at idle priority. The tick path still shares the machine's caches and memory bus
with it: bench.persistence measures what that costs (``snapshot_p99_ratio``, against
``control_p99_ratio`` for any memory-hungry idle process). After writing it, journal batches it
covers are compacted away (the previous snapshot is kept as a fallback).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
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

__all__ = ["main", "run_snapshot_process", "take_snapshot", "yield_the_cpu"]


async def take_snapshot(journal: Any, now_ms: int | None = None) -> tuple[int, int]:
    """Fold, store and compact; returns ``(seq, bytes)`` of the new snapshot.

    Nothing is written when no record arrived since the last snapshot.
    """
    log = structlog.get_logger().bind(component="snapshotter")
    # Seqs first, payloads only when there is something to fold: moving a snapshot of 100,000
    # positions (~11 MB) through Postgres's socket is most of what a snapshot costs the engine
    # on a kernel that preempts only at its own preemption points (README, snapshot ratio).
    previous, journal_seq = await journal.snapshot_and_journal_seqs()
    if previous is not None and journal_seq <= previous:
        return previous, 0
    recovered = await load_state(journal)
    state = recovered.state
    if previous is not None and previous == state.seq:
        return state.seq, 0
    state.prune(now_ms if now_ms is not None else int(time.time() * 1000))
    payload = state.encode_snapshot()
    await journal.write_snapshot(state.seq, payload)
    # Keep the previous snapshot replayable: compact only what it already covered.
    if previous is not None:
        await journal.compact(previous)
    log.info(
        "snapshot written",
        seq=state.seq,
        bytes=len(payload),
        positions=len(state.positions),
        replayed=recovered.records,
    )
    return state.seq, len(payload)


async def _run(dsn: str) -> tuple[int, int]:
    async with open_bridge() as bridge, open_database(bridge, dsn, max_size=1) as db:
        # The Postgres backend doing this job's reads and writes yields too, where the OS
        # lets us (the same user, or root): the snapshot is background work end to end.
        backend = int(await db.fetchval("SELECT pg_backend_pid()"))
        try:
            os.sched_setscheduler(backend, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, backend, 19)
        journal: Journal[Any] = Journal(db, encode_batch)
        return await take_snapshot(journal)


def _command(dsn: str) -> list[str]:
    """``python -m persistence.snapshotter``, under ``chrt --idle`` where there is one."""
    command = [sys.executable, "-m", "persistence.snapshotter", "--dsn", dsn]
    chrt = shutil.which("chrt")
    return [chrt, "--idle", "0", *command] if chrt else command


async def run_snapshot_process(dsn: str) -> None:
    """Run ``python -m persistence.snapshotter`` at idle priority from the first instruction
    (its imports and interpreter start-up included), and wait for it.

    The idle policy is set by ``chrt`` (util-linux), not by a ``preexec_fn``: with one,
    ``subprocess`` must fork() the engine, copying the page tables of its whole heap and
    turning every page it writes until the exec into a copy-on-write fault. Without one it
    uses vfork(), which copies nothing: the tick path's p99 during snapshots was 8.8x its
    quiet p99 before (bench.persistence, snapshot_p99_ratio).

    Raises:
        trio.CalledProcessError: the snapshot failed (the journal still holds everything).
    """
    await trio.run_process(_command(dsn), capture_stdout=True, capture_stderr=True)


def yield_the_cpu() -> str:
    """Run this process only when a core is otherwise idle.

    The engine shares the machine (2 cores on the dev box): a snapshot must never take a time
    slice from the tick path. ``SCHED_IDLE`` does exactly that on Linux; elsewhere the lowest
    nice value is the next best thing.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)
        return "nice"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fold the journal into a new snapshot.")
    parser.add_argument("--dsn", required=True, help="the engine's Postgres DSN")
    args = parser.parse_args(argv)
    yield_the_cpu()
    seq, size = trio.run(_run, args.dsn)
    print(f"snapshot seq={seq} bytes={size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
