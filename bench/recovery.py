"""Recovery time and the tick path during a snapshot: measurements of ``bench.persistence``.

``recovery_s``          a database holding a snapshot of ``--positions`` open positions and
                        ``--journal-records`` journal records after it (60 % trailing-stop
                        moves, 20 % whole-position changes, 10 % alerts, 10 % audit entries,
                        on random positions): seconds from the start of recovery (read the
                        snapshot, replay the journal) until every position's SL/TP is armed
                        again in the symbol actors' books (``recovery_load_s`` and
                        ``recovery_arm_s`` split it), in a new process as after a restart;
                        ``recovery_process_s`` is from that process's launch (interpreter,
                        imports, database connection included).
``snapshot_p99_ratio``  the tick path's p99 (a quote's scheduled send to the symbol actor having
                        processed it, quotes at ``--tick-rate`` for ``--tick-seconds``) while the
                        engine's snapshotter process (long-lived, its state recovered once,
                        before any measure) takes snapshots back to back, divided by the p99
                        of the same run without them; the conditions are measured in turns
                        (:func:`measure_snapshot`).
                        ``snapshot_s_mean`` is the time one of those snapshots takes,
                        ``snapshot_first_s`` the first (the process's recovery).
                        Targets: recovery <= 2 s, ratio <= 1.2.
``control_p99_ratio``   the same ratio with a memory-hungry idle-priority process (numpy sums
                        of 400 MB) instead of the snapshotter: what sharing the machine's
                        caches and memory bus costs the tick path whatever the process does.
"""

from __future__ import annotations

import itertools
import signal
import struct
import subprocess
import sys
import time
from typing import Any

import msgspec
import numpy as np
import trio
import trio.lowlevel

from actors.node import MemoryJournal, Node, NodeConfig
from bench.common import open_positions, percentiles
from engine.instruments import DEFAULT_INSTRUMENTS
from engine.journal_index import encode_indexed_batch
from engine.quotes import QuoteLimits
from engine.records import (
    AlertRaised,
    AuditEntry,
    AuditRecorded,
    LevelsMoved,
    PositionSaved,
)
from engine.state import EngineState
from persistence.bridge import open_bridge
from persistence.db import open_database
from persistence.journal_reader import JournalReader
from persistence.journal_writer import JournalWriter
from persistence.recovery import load_state
from persistence.snapshot_store import SnapshotStore
from persistence.snapshotter import SnapshotProcess
from protocol.common import Alert, AlertLevel
from protocol.feed import Quote
from sim.market_data import load_ticks

__all__ = ["measure_recovery", "measure_snapshot"]

GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]


async def _seed(db: Any, positions: int, records: int, users: int) -> None:
    """A snapshot of ``positions`` open positions, then ``records`` journal records."""
    entry = GOLD.to_points(float(load_ticks("XAUUSD").bid[0]))
    state = EngineState()
    seeded = open_positions(positions, users, entry, seed=11)
    for p in seeded:
        state.apply(PositionSaved(position=p))
    state.seq = 1
    limit = max(records + 10_000, 25_000)
    journal: JournalWriter[Any] = JournalWriter(
        db, encode_indexed_batch, soft_limit=limit, hard_limit=limit, max_batch=5000
    )
    await SnapshotStore(db).write_snapshot(1, state.encode_snapshot())
    rng = np.random.default_rng(5)
    picks = rng.integers(0, positions, size=records).tolist()
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for k, i in enumerate(picks):
            p = seeded[i]
            kind = k % 10
            if kind < 6:  # a trailing stop moved: the SL tightens by a point
                p = p.with_changes(k, sl=(p.sl or 0) + p.side.sign)
                seeded[i] = p
                journal.append_nowait(LevelsMoved(position_id=p.id, sl=p.sl, tp=p.tp, time_ms=k))
            elif kind < 8:  # any other change journals the whole position
                p = p.with_changes(k, modify_count=p.modify_count + 1)
                seeded[i] = p
                journal.append_nowait(PositionSaved(position=p))
            elif kind == 8:
                journal.append_nowait(
                    AlertRaised(
                        alert=Alert(
                            kind="spread",
                            level=AlertLevel.WARNING,
                            message="wide",
                            time_ms=k,
                            symbol="XAUUSD",
                        )
                    )
                )
            else:
                journal.append_nowait(
                    AuditRecorded(
                        entry=AuditEntry(
                            time_ms=k,
                            actor_id=p.user_id,
                            action="position.view",
                            target_type="position",
                            target_id=p.id,
                            outcome="200",
                        )
                    )
                )
            if k % 20_000 == 0:
                await trio.lowlevel.checkpoint()  # let the writer keep up (bounded buffer)
        await journal.flush()
        nursery.cancel_scope.cancel()


async def _armed_node(state: EngineState, nursery: trio.Nursery) -> Node:
    config = NodeConfig(
        quote_limits=QuoteLimits(max_age_ms=60_000, max_jump=0.5), quote_inbox=1 << 20
    )
    node = Node(journal=MemoryJournal(), state=state, config=config, instruments={"XAUUSD": GOLD})
    await nursery.start(node.run)
    symbol = node.symbols["XAUUSD"]
    with trio.fail_after(600):
        while symbol.armed < len(state.positions) or node.pending():
            await trio.sleep(0.005)
    return node


async def measure_recovery(bench: Any) -> dict[str, float]:
    """Seed a database, then recover it in a NEW process, as a restart does (the seeding
    process's heap, a million records' worth of freed objects, is not what a restarted
    engine starts from). The child reports its own split; ``recovery_process_s`` adds the
    interpreter's start, the imports and the database connection before it."""
    args = bench.args
    async with bench.fresh_database() as db:
        t0 = time.perf_counter()
        await _seed(db, args.positions, args.journal_records, args.users)
        seed_s = time.perf_counter() - t0
        # The seeding wrote a million records in seconds (a journal gathers them over minutes):
        # its write-back is not the recovery's to pay for, whatever ran before it.
        await bench.settle()
        launched = time.time()
        result = await trio.run_process(
            [sys.executable, "-m", "bench.recovery", db.dsn], capture_stdout=True
        )
        child = msgspec.json.decode(result.stdout.strip().splitlines()[-1])
    return {
        "recovery_s": round(child["load_s"] + child["arm_s"], 3),
        "recovery_load_s": round(child["load_s"], 3),
        "recovery_arm_s": round(child["arm_s"], 3),
        "recovery_process_s": round(child["ready_at"] - launched, 3),
        "recovery_replayed": float(child["replayed"]),
        "recovery_positions": float(child["positions"]),
        "recovery_seed_s": round(seed_s, 1),
    }


async def _recover(dsn: str) -> dict[str, float]:
    """The child's side of :func:`measure_recovery`: load the state, arm it, time both."""
    async with open_bridge() as bridge, open_database(bridge, dsn) as db:
        start = time.perf_counter()
        recovered = await load_state(JournalReader(db), SnapshotStore(db))
        loaded = time.perf_counter()
        async with trio.open_nursery() as nursery:
            await _armed_node(recovered.state, nursery)
            armed = time.perf_counter()
            nursery.cancel_scope.cancel()
    return {
        "load_s": loaded - start,
        "arm_s": armed - loaded,
        "ready_at": time.time() - (time.perf_counter() - armed),
        "replayed": recovered.records,
        "positions": len(recovered.state.positions),
    }


_FEEDER = """
import struct, sys, time
count, rate, start = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
out = sys.stdout.buffer
for i in range(1, count + 1):
    due = start + (i - 1) / rate
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)  # clock_nanosleep: tens of microseconds of precision, no spinning
    out.write(struct.pack("<qq", i, int(due * 1e9)))
    out.flush()
"""


async def _tick_latencies(
    node: Node, bids: list[float], asks: list[float], rate: float, seconds: float
) -> np.ndarray:
    """Latency (us) from each quote's scheduled send to its processing by the symbol actor.

    Quotes come from a feeder PROCESS over a pipe, as they come from a feed socket in
    production: the engine idles between quotes and is woken by the kernel, instead of
    spinning to meet a schedule (which would hold a core and distort what is measured). The
    feeder stamps each quote with its scheduled time on the system-wide monotonic clock.
    """
    count = int(rate * seconds)
    symbol = node.symbols["XAUUSD"]
    base = symbol.seq
    scheduled = np.zeros(count + 1, dtype=np.int64)
    done = np.zeros(count + 1, dtype=np.int64)
    seq_to_index: dict[int, int] = {}

    def probe(seq: int) -> None:
        i = seq_to_index.pop(seq, 0)
        if i:
            done[i] = time.monotonic_ns()

    node.probes.quote_done = probe
    start = time.monotonic() + 0.2
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _FEEDER, str(count), str(rate), str(start)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    pending = b""
    received = 0
    sent_seq = base
    try:
        while received < count:
            chunk = await process.stdout.receive_some(65536)
            if not chunk:
                break
            pending += chunk
            usable = len(pending) - len(pending) % 16
            for i, due_ns in struct.iter_unpack("<qq", pending[:usable]):
                scheduled[i] = due_ns
                sent_seq += 1
                seq_to_index[sent_seq] = i
                j = (i - 1) % len(bids)
                node.offer_quotes(
                    [Quote(symbol="XAUUSD", bid=bids[j], ask=asks[j], time_ms=node.clock.now_ms())]
                )
                received += 1
            pending = pending[usable:]
    finally:
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
    await trio.sleep(0.1)
    node.probes.quote_done = None
    ok = done[1:] > 0
    return (done[1:][ok] - scheduled[1:][ok]) / 1000


async def measure_snapshot(bench: Any) -> dict[str, float]:
    """Three conditions, measured in turns (``--windows`` rounds of quiet, snapshots, control,
    each ``--tick-seconds / --windows`` long), so that the machine's own noise, which drifts
    over seconds on a shared VM, weighs on all three alike; each p99 is over all its windows.

    In every window, as in a running engine, 100 trailing-stop moves are journaled every
    100 ms (so each snapshot has something new to fold); only the snapshots, or the control's
    memory-hungry process (stopped with SIGSTOP outside its windows), differ."""
    args = bench.args
    async with bench.fresh_database() as db:
        await _seed(db, args.positions, args.snapshot_records, args.users)
        recovered = await load_state(JournalReader(db), SnapshotStore(db))
        # Quotes that move inside the book's quiet middle, so the measured path is the
        # per-quote one and every quote is a sample.
        mid = float(load_ticks("XAUUSD").bid[0])
        bids = [mid + (k % 7) * 0.01 for k in range(1000)]
        asks = [b + 0.3 for b in bids]
        window_s = args.tick_seconds / args.windows
        samples: dict[str, list[np.ndarray]] = {"quiet": [], "snapshot": [], "control": []}
        taken: list[float] = []
        control = await trio.lowlevel.open_process([sys.executable, "-c", _MEMORY_HOG])
        await trio.sleep(1.0)  # its 400 MB allocated, it waits for its windows
        control.send_signal(signal.SIGSTOP)
        async with (
            SnapshotProcess(db.dsn, stderr=subprocess.DEVNULL) as snapshotter,
            trio.open_nursery() as nursery,
        ):
            node = await _armed_node(recovered.state, nursery)
            # The engine's snapshotter is long-lived: started, and its state recovered, once.
            first = await snapshotter.take()
            writer: JournalWriter[Any] = JournalWriter(db, encode_indexed_batch)
            await nursery.start(writer.run)
            moving = list(recovered.state.positions.values())[:100]

            async def journal_moves() -> None:
                for k in itertools.count():
                    for p in moving:
                        writer.append_nowait(
                            LevelsMoved(position_id=p.id, sl=p.sl, tp=p.tp, time_ms=k)
                        )
                    await trio.sleep(0.1)

            async def snapshots_back_to_back(stop: trio.Event) -> None:
                while not stop.is_set():
                    snapshot = await snapshotter.take()
                    assert not snapshot.reloaded, snapshot
                    if snapshot.bytes:
                        taken.append(snapshot.seconds)

            nursery.start_soon(journal_moves)
            try:
                for _ in range(args.windows):
                    samples["quiet"].append(
                        await _tick_latencies(node, bids, asks, args.tick_rate, window_s)
                    )
                    stop = trio.Event()
                    async with trio.open_nursery() as snapshotting:
                        snapshotting.start_soon(snapshots_back_to_back, stop)
                        await trio.sleep(0.1)  # a snapshot is under way when the window opens
                        samples["snapshot"].append(
                            await _tick_latencies(node, bids, asks, args.tick_rate, window_s)
                        )
                        stop.set()  # the snapshot in progress finishes before the next window
                    control.send_signal(signal.SIGCONT)
                    await trio.sleep(0.1)
                    samples["control"].append(
                        await _tick_latencies(node, bids, asks, args.tick_rate, window_s)
                    )
                    control.send_signal(signal.SIGSTOP)
            finally:
                control.kill()
                await control.wait()
            nursery.cancel_scope.cancel()
    quiet, busy, hogged = (
        percentiles(np.concatenate(samples[k]), (99,))["p99"]
        for k in ("quiet", "snapshot", "control")
    )
    return {
        "tick_p99_us": round(quiet, 1),
        "tick_p99_during_snapshot_us": round(busy, 1),
        "snapshot_p99_ratio": round(busy / quiet, 3) if quiet else float("nan"),
        "snapshots_during_measure": float(len(taken)),
        "snapshot_s_mean": round(sum(taken) / len(taken), 3) if taken else float("nan"),
        "snapshot_first_s": first.seconds,
        "control_p99_ratio": round(hogged / quiet, 3) if quiet else float("nan"),
    }


_MEMORY_HOG = """
import os
import numpy as np
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
a = np.ones(50_000_000)
while True:
    a.sum()
"""


if __name__ == "__main__":  # the recovering child of measure_recovery: python -m bench.recovery DSN
    print(msgspec.json.encode(trio.run(_recover, sys.argv[1])).decode())
