"""Persistence harness: journal throughput and acknowledgement latency under group commit.

    python -m bench.persistence --json out.json
    python -m bench.persistence --dsn postgresql://postgres@127.0.0.1:5432/postgres

Runs against a real Postgres: an embedded one (pgserver, durable default settings: fsync and
synchronous_commit on) in a temporary folder, or the server of ``--dsn``, where each
measurement creates a scratch database (``tripwire_bench_*``) and drops it afterwards.

``journal_per_s``          records committed per second when a producer appends with
                           ``append_nowait`` as fast as it can (the writer's sustained rate)
``journal_projected_per_s`` the same with a projection writing one audit row per record
``ack_ms_p50``/``_p99``    latency of ``append`` (returns once the record's batch committed),
                           from each request's SCHEDULED time, for ``--ackers`` clients each
                           sending ``--ack-rate`` requests/s on a fixed schedule, every request
                           a task of its own (open loop: a slow ack never delays the next
                           send, no coordinated omission), while a background task appends
                           ``--background-rate`` records/s with ``append_nowait``; defaults:
                           32 x 25 = 800 acks/s over 10,000 records/s
``heavy_ack_ms_*``         the same at ``--heavy-ack-rate`` per acker (default 32 x 100 =
                           3,200 acks/s): where this machine's limit shows
``baseline_*``             the same records written one INSERT and one COMMIT each, in the
                           same run: what group commit saves

Targets (issue 5): journal_per_s >= 20,000 on 2 cores, ack_ms_p99 <= 10.

``recovery_s`` and ``snapshot_p99_ratio`` (and their breakdowns) come from ``bench.recovery``:
see its docstring. Targets (issue 5): recovery_s <= 2, snapshot_p99_ratio <= 1.2.

Each measurement is a function of a :class:`Bench` in :data:`MEASUREMENTS`.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import trio

from bench.common import base_parser, machine, percentiles, print_table, run_harness, write_json
from bench.recovery import measure_recovery, measure_snapshot
from persistence import (
    Bridge,
    Database,
    EmbeddedPostgres,
    JournalWriter,
    dsn_with_database,
    migrate,
    open_bridge,
    open_database,
)


class PositionChanged(msgspec.Struct, frozen=True, kw_only=True, tag="position_changed"):
    """A journal record shaped like the engine's (ids, a state, integer prices, a time)."""

    position_id: str
    user_id: str
    device_id: str
    state: str
    price: int
    sl: int | None
    tp: int | None
    time_ms: int


_encoder = msgspec.msgpack.Encoder()


def encode_batch(records: list[PositionChanged]) -> bytes:
    return _encoder.encode(records)


def record(i: int) -> PositionChanged:
    return PositionChanged(
        position_id=f"P{i:010d}",
        user_id=f"u{i % 1000}",
        device_id=f"d{i % 1000}",
        state="open" if i % 3 else "closing",
        price=230_000 + i % 5000,
        sl=229_000,
        tp=232_500,
        time_ms=1_700_000_000_000 + i,
    )


_AUDIT = (
    "INSERT INTO audit_log (actor_id, action, target_type, target_id, outcome)"
    " VALUES ($1, $2, 'position', $3, 'ok')"
)


def audit_projection(records: list[PositionChanged]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    return [(_AUDIT, [(r.user_id, r.state, r.position_id) for r in records])]


@dataclass
class Bench:
    """What a measurement gets: the options, the bridge, and fresh migrated databases."""

    args: argparse.Namespace
    bridge: Bridge
    admin_dsn: str
    _names: Any = None

    @asynccontextmanager
    async def fresh_database(self) -> AsyncIterator[Database]:
        """A new, migrated database for one measurement, dropped afterwards."""
        if self._names is None:
            self._names = itertools.count(1)
        name = f"tripwire_bench_{os.getpid()}_{next(self._names)}"
        await self._admin(f'CREATE DATABASE "{name}"')
        try:
            async with open_database(self.bridge, dsn_with_database(self.admin_dsn, name)) as db:
                await migrate(db)
                yield db
        finally:
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def settle(self) -> None:
        """Let Postgres write back what the last measurement wrote (a CHECKPOINT), so that
        each measurement starts from a database at rest instead of paying for the one before
        (the journal measurement writes a million records in seconds)."""
        await self._admin("CHECKPOINT")

    async def _admin(self, sql: str) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(self.admin_dsn, timeout=10)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        await self.bridge.run(run)


async def _throughput(db: Database, n: int, project: Any) -> dict[str, float]:
    journal = JournalWriter(db, encode_batch, project, hard_limit=max(n, 250_000) + 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        records = [record(i) for i in range(n)]
        started = time.perf_counter()
        for start in range(0, n, 1000):
            for r in records[start : start + 1000]:
                journal.append_nowait(r)
            await trio.lowlevel.checkpoint()  # a producer that yields, as actors do
        await journal.flush()
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    size = await db.fetchval("SELECT sum(length(records)) FROM journal")
    return {
        "per_s": n / elapsed,
        "batches": journal.batches_written,
        "bytes_per_record": size / n,
    }


async def measure_journal(bench: Bench) -> dict[str, float]:
    """``journal_per_s`` (and the same with a one-row-per-record projection)."""
    n = bench.args.records
    async with bench.fresh_database() as db:
        plain = await _throughput(db, n, None)
    async with bench.fresh_database() as db:
        projected = await _throughput(db, n, audit_projection)
    return {
        "journal_per_s": round(plain["per_s"]),
        "journal_batches": plain["batches"],
        "journal_mean_batch": round(n / plain["batches"], 1),
        "journal_bytes_per_record": round(plain["bytes_per_record"], 1),
        "journal_projected_per_s": round(projected["per_s"]),
    }


async def _ack_latency(bench: Bench, ack_rate: float) -> dict[str, float]:
    """Open-loop ackers at ``ack_rate`` requests/s each, plus background load."""
    args = bench.args
    interval = 1 / ack_rate
    warmup = 0.5
    latencies: list[float] = []
    async with bench.fresh_database() as db:
        journal = JournalWriter(db, encode_batch, window_ms=args.window_ms)
        counter = itertools.count()

        async def request(scheduled: float, measured: bool) -> None:
            await journal.append(record(next(counter)))
            if measured:
                latencies.append((trio.current_time() - scheduled) * 1000)

        async def acker(k: int, t0: float, end: float, requests: trio.Nursery) -> None:
            # A client sending on a fixed schedule. Each request is a task of its own (an
            # HTTP request in flight), so a slow acknowledgement never delays the next send:
            # open loop, latency counted from the scheduled time.
            scheduled = t0 + k * interval / args.ackers  # spread the ackers over an interval
            while scheduled < end:
                await trio.sleep_until(scheduled)
                requests.start_soon(request, scheduled, scheduled >= t0 + warmup)
                scheduled += interval

        async def background(t0: float, end: float) -> None:
            tick = 0.002
            per_tick = max(1, round(args.background_rate * tick))
            scheduled = t0
            while scheduled < end:
                await trio.sleep_until(scheduled)
                for _ in range(per_tick):
                    journal.append_nowait(record(next(counter)))
                scheduled += tick

        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            t0 = trio.current_time() + 0.05
            end = t0 + warmup + args.seconds
            async with trio.open_nursery() as load:
                load.start_soon(background, t0, end)
                for k in range(args.ackers):
                    load.start_soon(acker, k, t0, end, load)
            await journal.flush()
            nursery.cancel_scope.cancel()
    p = percentiles(latencies, (50, 99, 99.9))
    return {
        "ms_p50": round(p["p50"], 3),
        "ms_p99": round(p["p99"], 3),
        "ms_p999": round(p["p999"], 3),
        "ms_max": round(p["max"], 3),
        "per_s": round(args.ackers * ack_rate),
        "batches": journal.batches_written,
    }


async def measure_ack(bench: Bench) -> dict[str, float]:
    """``ack_ms_*`` at the default load, and ``heavy_ack_ms_*`` at ``--heavy-ack-rate``."""
    out = {f"ack_{k}": v for k, v in (await _ack_latency(bench, bench.args.ack_rate)).items()}
    if bench.args.heavy_ack_rate:
        heavy = await _ack_latency(bench, bench.args.heavy_ack_rate)
        out.update({f"heavy_ack_{k}": v for k, v in heavy.items()})
    return out


async def measure_baseline(bench: Bench) -> dict[str, float]:
    """One INSERT and one COMMIT per record: the cost group commit avoids."""
    n = bench.args.baseline_records
    payloads = [encode_batch([record(i)]) for i in range(n)]
    latencies: list[float] = []
    async with bench.fresh_database() as db:
        started = time.perf_counter()
        for i, payload in enumerate(payloads, start=1):
            t0 = time.perf_counter()
            await db.execute(
                "INSERT INTO journal (first_seq, last_seq, record_count, records)"
                " VALUES ($1, $1, 1, $2)",
                i,
                payload,
            )
            latencies.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - started
    p = percentiles(latencies, (50, 99))
    return {
        "baseline_per_s": round(n / elapsed),
        "baseline_ms_p50": round(p["p50"], 3),
        "baseline_ms_p99": round(p["p99"], 3),
    }


Measurement = Callable[[Bench], Awaitable[dict[str, float]]]
MEASUREMENTS: dict[str, Measurement] = {
    "journal": measure_journal,
    "ack": measure_ack,
    "baseline": measure_baseline,
    "recovery": measure_recovery,
    "snapshot": measure_snapshot,
}
TARGETS = {
    "journal_per_s": (">=", 20_000),
    "ack_ms_p99": ("<=", 10.0),
    "recovery_s": ("<=", 2.0),
    "snapshot_p99_ratio": ("<=", 1.2),
}


async def run(args: argparse.Namespace, admin_dsn: str) -> dict[str, float]:
    results: dict[str, float] = {}
    async with open_bridge() as bridge:
        bench = Bench(args, bridge, admin_dsn)
        for name in args.only.split(","):
            # As the engine does once it has started: what is alive now is long-lived, so it
            # leaves the collector's generations (a full collection of the set-up's objects
            # would stop the trio thread, and with it the bridge, for tens of ms).
            gc.collect()
            gc.freeze()
            await bench.settle()
            try:
                results.update(await MEASUREMENTS[name](bench))
            finally:
                gc.unfreeze()
    return results


def _report(results: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for metric, value in results.items():
        row: dict[str, Any] = {"metric": metric, "value": value}
        if metric in TARGETS:
            op, target = TARGETS[metric]
            row["target"] = f"{op} {target:g}"
            row["ok"] = "yes" if (value >= target if op == ">=" else value <= target) else "NO"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="a Postgres server to use (default: embedded, temporary)")
    parser.add_argument("--records", type=int, default=200_000, help="throughput workload")
    parser.add_argument("--seconds", type=float, default=5.0, help="ack measurement duration")
    parser.add_argument("--ackers", type=int, default=32, help="concurrent ackers")
    parser.add_argument("--ack-rate", type=float, default=25.0, help="appends/s per acker")
    parser.add_argument(
        "--heavy-ack-rate",
        type=float,
        default=100.0,
        help="appends/s per acker of the second, heavy run (0: skip it)",
    )
    parser.add_argument("--background-rate", type=float, default=10_000, help="append_nowait/s")
    parser.add_argument("--window-ms", type=float, default=2.0, help="group commit window")
    parser.add_argument("--baseline-records", type=int, default=2000)
    parser.add_argument(
        "--positions",
        type=int,
        default=100_000,
        help="open positions in the recovery and snapshot state",
    )
    parser.add_argument(
        "--journal-records",
        type=int,
        default=1_000_000,
        help="journal records after the snapshot (recovery)",
    )
    parser.add_argument(
        "--snapshot-records",
        type=int,
        default=100_000,
        help="journal records after the seeded snapshot (the snapshotter's first fold)",
    )
    parser.add_argument("--users", type=int, default=1000, help="users owning the positions")
    parser.add_argument("--tick-rate", type=float, default=1000.0, help="quotes/s (snapshot)")
    parser.add_argument(
        "--tick-seconds",
        type=float,
        default=10.0,
        help="seconds of quotes per tick-path condition (quiet, snapshots, control)",
    )
    parser.add_argument(
        "--windows",
        type=int,
        default=5,
        help="rounds the tick-path conditions are measured in, in turns",
    )
    parser.add_argument("--only", default=",".join(MEASUREMENTS), help="measurements to run")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurements: {sorted(unknown)}")

    server = None
    if args.dsn:
        admin_dsn = args.dsn
    else:
        server = EmbeddedPostgres(tempfile.mkdtemp(prefix="tripwire-bench-pg-"))
        admin_dsn = server.start()
    try:
        results = run_harness(run, args, admin_dsn)
    finally:
        if server is not None:
            server.cleanup()
    print_table(
        "persistence: journal and group commit",
        _report(results),
        ["metric", "value", "target", "ok"],
    )
    config = {k: v for k, v in vars(args).items() if k not in {"json", "dsn"}}
    config["postgres"] = "embedded" if server is not None else "dsn"
    write_json(args.json, {"machine": machine(), "config": config, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
