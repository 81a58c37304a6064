"""Scale-out: the single-node path, one node in cluster mode and two, stepped to capacity.

    python -m bench.cluster --json out.json
    python -m bench.cluster --warmup 3 --step-s 10 --steps 100,200 --runs 1   # a quick look

**Arms** (``bench.cluster_nodes``), each on a fresh database and (cluster arms) a fresh private
Redis: ``single`` (today's path: quotes in process, no Redis), ``cluster1`` (one node in cluster
mode: ticks through Redis Streams, partitions on Postgres leases) and ``cluster2`` (two nodes).
The workload is ``bench.e2e``'s: users and devices seeded into Postgres, simulated EAs holding
``tw:``-tagged positions the engine adopts and arms, real XAUUSD/EURUSD quotes through
``/ws/feed`` on node 0 (any node takes feeds), a brute-force oracle of the quote that first
crosses each position. Each device connects to a node picked at random and follows ``moved``
to the node that serves its user.

**Steps at a fixed book density.** One book is placed once, from the quotes of the longest step;
every step of every arm starts from that same book and feeds a prefix of the same quotes, at
its rate: a faster step runs through more of the price path per second, so its closes per
second grow with its quotes per second, as a busier market would. Each step is a fresh arm
(nothing left from the step before), settled before it is fed: every partition served and
balanced (each node within one of ceil(64 / nodes)), every position armed. Then ``--warmup``
seconds of quotes, then ``--step-s`` measured ones.

A step **passes** when, over the quotes after the warm-up: tick->close p99 <= ``--p99-bound-ms``;
the journal lag and the stream lag sampled from every node's ``/metrics`` stay <= ``--lag-bound-s``;
no position the oracle says must close went without a close (``lost``) or got two different
close commands (``duplicated``) (over the whole step). It is **invalid** (neither passed nor
failed) when the feeder's p99 lateness exceeds ``--feeder-late-ms``: the load was not offered.
**Capacity** is the rate of the last step passed before the first that failed (None when none
passed: below the lowest step, or unknown); an arm's higher steps are then skipped in that run.
An invalid step says nothing either way: the next step runs, and the capacity lists it under
``invalid_steps``. Every run is reported.

``closes_per_engine_cpu_s``: closes of the measured quotes per CPU second (user + system,
``/proc/PID/stat``) of the arm's node processes, from the end of the warm-up to the end of the
grace; ``idle_engine_cpu_pct``, their CPU in the ``--idle-s`` before the feed (every device
connected, no quote), says how much of it is fixed cost. ``engine_loop_cpu_s`` is the part of
``engine_cpu_s`` the nodes' main threads (their trio loops) used, the rest being the asyncio
bridge's; ``engine_loop_switches_per_quote``, how often those threads slept (voluntary) or were
preempted (involuntary) per quote fed meanwhile. ``cluster_efficiency`` = cluster1's
over single's at the same step (target >= 0.8); ``capacity_ratio`` = capacity of cluster2 over
cluster1.

**Failover** (``--no-failover`` skips it): two nodes under ``--failover-rate``; ``kill -9`` of
node 1 (node 0 keeps the feed) ``--failover-kill-at`` seconds in. ``failover_s``: from the kill
until every device whose user lived on node 1 (its last welcome before the kill came from node
1) has been welcomed again by a live node (the device workers stamp every welcome); target <= 3 s.
It includes the EA's own pause before it reconnects (``--reconnect-s``). ``lost`` and
``duplicated`` over the whole phase; a close that arrives after its device was served again for
a quote that came before (its touch fell in the gap, or its command was in flight at the kill)
is counted as ``closed_after_failover``, not as late.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import trio

from bench.cluster_nodes import ARMS, PARTITIONS, Arm, Databases, open_arm, scrape
from bench.cluster_report import report, summary, verdict
from bench.common import base_parser, bench_extra_missing, machine, run_harness, write_json
from bench.e2e import (
    FEED_TOKEN,
    Worker,
    _hist,
    _seed,
    oracle,
    place_positions,
    quote_stream,
    tally_closes,
)
from bench.e2e_workers import DeviceSpec, WorkerConfig
from persistence.logs import configure_logging

try:
    import hdrh  # noqa: F401  (bench.e2e's histograms)
except ImportError:
    bench_extra_missing("bench.cluster")

__all__ = ["main"]

ECHO_ROUNDS = 300
"""Raw echo round trips device worker 0 measures against node 0 first (a same-run baseline)."""

Key = tuple[int, int]


@dataclass
class Workload:
    """The book and the quotes every step and arm share (see the module docstring)."""

    devices: int
    per_device: int
    quotes: list[tuple[str, float, float]]
    placed: list[list[tuple[int, str, str, float, float, float, float]]]
    _oracles: dict[int, dict[Key, int]] = field(default_factory=dict)

    def expected(self, n: int) -> dict[Key, int]:
        """The oracle over the first ``n`` quotes: (device, ticket) -> quote that closes it."""
        if n not in self._oracles:
            self._oracles[n] = oracle(self.quotes[:n], self.placed)
        return self._oracles[n]

    def armed_target(self, expected: dict[Key, int]) -> int:
        # As bench.e2e: a position the very first quote crosses may be closed before it counts.
        return self.devices * self.per_device - sum(1 for q in expected.values() if q == 0)


@dataclass
class Prepared:
    arm: Arm
    workers: list[Worker]
    device_ids: list[str]
    settle_s: float
    spawned: list[Worker] = field(default_factory=list)


async def _sleep_until_ns(deadline_ns: int) -> None:
    # trio's clock has its own origin: the workers' schedule is time.monotonic_ns.
    await trio.sleep(max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9))


@asynccontextmanager
async def _prepared(
    args: Any,
    dbs: Databases,
    name: str,
    workload: Workload,
    expected: dict[Key, int],
    folder: Path,
    tag: str,
) -> AsyncIterator[Prepared]:
    """A fresh database, arm ``name`` started on it, its devices connected, the cluster
    settled; every process gone and the database dropped on the way out."""
    dsn = await dbs.fresh()
    spawned: list[Worker] = []
    try:
        device_ids, device_secrets, _ = await _seed(dsn, workload.devices, 0)
        level = "info" if tag == "failover" else "warning"  # the claims' log explains failover_s
        async with open_arm(name, dsn, folder, tag=tag, pin=args.pin, log_level=level) as arm:
            began = time.monotonic()
            await arm.wait_partitions(args.settle_timeout)
            shards = np.array_split(np.arange(workload.devices), args.device_workers)
            workers = []
            for w, shard in enumerate(shards):
                specs = [
                    DeviceSpec(device_ids[d], device_secrets[d], workload.placed[d])
                    for d in shard.tolist()
                ]
                config = WorkerConfig(
                    url=arm.nodes[0].device_url,
                    urls=[node.device_url for node in arm.nodes],
                    seed=w + 1,
                    reconnect_s=args.reconnect_s,
                    devices=specs,
                    echo_url=f"ws://127.0.0.1:{arm.echo_port}" if w == 0 else "",
                    echo_rounds=ECHO_ROUNDS,
                )
                workers.append(Worker("devices", config, folder, f"{tag}-devices{w}"))
            spawned += workers
            for worker in workers:
                await worker.start()
            await arm.wait_armed(workload.armed_target(expected), args.settle_timeout)
            await arm.wait_partitions(args.settle_timeout)  # still served and balanced
            prepared = Prepared(arm, workers, device_ids, time.monotonic() - began, spawned)
            yield prepared
    finally:
        for worker in spawned:
            worker.kill()
        with trio.CancelScope(shield=True):
            await dbs.drop(dsn)


async def _start_feeder(
    args: Any, prep: Prepared, quotes: list[Any], rate: float, folder: Path, tag: str
) -> tuple[Worker, int]:
    """The feeder on node 0's ``/ws/feed``; and the monotonic ns its schedule starts at."""
    config = WorkerConfig(
        url=f"ws://127.0.0.1:{prep.arm.nodes[0].port}",
        quotes=quotes,
        rate=rate,
        feed_token=FEED_TOKEN,
        frame_ms=args.frame_ms,
    )
    feeder = Worker("feeder", config, folder, f"{tag}-feeder")
    prep.spawned.append(feeder)
    await feeder.start()
    return feeder, int(feeder.banner.split()[-1])


def _outcome(
    expected: dict[Key, int],
    arrival: dict[Key, int],
    closes: dict[Key, set[str]],
    resent: int,
    observed: list[dict[str, Any]],
) -> dict[str, int]:
    """What the oracle says of the closes the devices saw (a step's and the failover's)."""
    return {
        "lost": sum(1 for k in expected if k not in arrival),
        "duplicated": sum(1 for ids in closes.values() if len(ids) > 1),
        "unexpected_closes": sum(1 for k in arrival if k not in expected),
        "resent": resent,
        "disconnects": sum(len(part["disconnects"]) for part in observed),
    }


def _ms(values_us: list[float]) -> dict[str, float | int | None]:
    """p50/p99/max in ms (None without values) and the count."""
    h = _hist(values_us)
    out: dict[str, float | int | None] = {
        p: (None if math.isnan(h[p]) else round(h[p] / 1000, 3)) for p in ("p50", "p99", "max")
    }
    out["count"] = int(h["count"])
    return out


# -- one step -----------------------------------------------------------------------------------


async def measure_step(
    args: Any,
    dbs: Databases,
    name: str,
    rate: float,
    run: int,
    workload: Workload,
    folder: Path,
) -> dict[str, Any]:
    """One arm at one rate, from a fresh start (see the module docstring)."""
    n = int(rate * (args.warmup + args.step_s))
    quotes = workload.quotes[:n]
    expected = workload.expected(n)
    tag = f"r{run}-{name}-{rate:g}"
    async with _prepared(args, dbs, name, workload, expected, folder, tag) as prep:
        arm = prep.arm
        # What the nodes burn with every device connected and no quote: the fixed part of
        # their CPU (leases, stream reads, checkpoints), which a close per CPU s includes.
        idle_before, idle_from = arm.cpu_s(), time.monotonic()
        await trio.sleep(args.idle_s)
        idle_pct = (arm.cpu_s() - idle_before) / (time.monotonic() - idle_from) * 100
        feeder, start_ns = await _start_feeder(args, prep, quotes, rate, folder, tag)
        warm_ns = start_ns + int(args.warmup * 1e9)
        end_ns = start_ns + int(n * 1e9 / rate)
        await _sleep_until_ns(warm_ns)
        cpu_before, loop_before = arm.cpu_s(), arm.loop_thread()
        lags: dict[str, float] = {}
        while time.monotonic_ns() < end_ns:
            for metrics in await arm.metrics():
                for metric, label in _LAGS.items():
                    if metric in metrics:
                        lags[label] = max(lags.get(label, 0.0), metrics[metric])
            await trio.sleep(args.sample_s)
        await _sleep_until_ns(end_ns + int(args.grace * 1e9))
        alive = all(node.alive for node in arm.nodes)
        cpu_s = arm.cpu_s() - cpu_before
        loop = arm.loop_thread() - loop_before
        end_metrics = await arm.metrics()
        fed = await feeder.stop()
        observed = [await worker.stop() for worker in prep.workers]
    index = {d: i for i, d in enumerate(prep.device_ids)}
    closes, arrival, resent = tally_closes(observed, index)
    period_ns = 1e9 / rate
    warm_q = int(args.warmup * rate)
    measured = [
        (arrival[k] - (start_ns + q * period_ns)) / 1000
        for k, q in expected.items()
        if q >= warm_q and k in arrival
    ]
    late = [ns / 1000 for ns in fed["late_ns"][warm_q:]]
    n_measured = n - warm_q  # the quotes fed while the CPU was measured
    row: dict[str, Any] = {
        "run": run,
        "arm": name,
        "rate": rate,
        "nodes": len(arm.nodes),
        "settle_s": round(prep.settle_s, 2),
        "expected_closes": len(expected),
        "closes_total": len(arrival),
        "closes": len(measured),
        "tick_to_close_ms": _ms(measured),
        "engine_cpu_s": round(cpu_s, 3),
        "idle_engine_cpu_pct": round(idle_pct, 1),
        "closes_per_engine_cpu_s": round(len(measured) / cpu_s, 1) if cpu_s > 0 else None,
        "engine_loop_cpu_s": round(loop.cpu_s, 3),
        "engine_loop_switches_per_quote": {
            "voluntary": round(loop.voluntary / n_measured, 2) if n_measured else None,
            "involuntary": round(loop.involuntary / n_measured, 2) if n_measured else None,
        },
        "journal_lag_s_max": lags.get("journal_lag_s"),
        "stream_lag_s_max": lags.get("stream_lag_s"),
        "stream_backlog_max": lags.get("stream_backlog"),
        "feeder_late_ms": _ms(late),
        **_outcome(expected, arrival, closes, resent, observed),
        "echo_rtt_us_p50": _hist([ns / 1000 for p in observed for ns in p["echo_ns"]])["p50"],
        "nodes_alive": alive,
        "pinned": arm.pinned,
        "node_metrics": [{k: m[k] for k in _NODE_COUNTERS if k in m} for m in end_metrics],
    }
    row["verdict"], row["reasons"] = verdict(args, row)
    return row


_LAGS = {
    "tripwire_journal_lag_seconds": "journal_lag_s",
    "tripwire_stream_lag_seconds": "stream_lag_s",
    "tripwire_stream_backlog": "stream_backlog",
}

_NODE_COUNTERS = (
    "tripwire_partitions_owned",
    "tripwire_partition_claims_total",
    "tripwire_partition_losses_total",
    "tripwire_partition_handovers_total",
    "tripwire_journal_fenced_batches_total",
    "tripwire_armed_positions",
    "tripwire_devices_connected",
    "tripwire_stream_quotes_appended_total",
    "tripwire_stream_quotes_delivered_own_total",
    "tripwire_stream_symbols_muted",
    "tripwire_stream_appends_in_call_total",
    "tripwire_stream_appends_finished_later_total",
    "tripwire_stream_unmutes_total",
)


# -- failover -----------------------------------------------------------------------------------


async def measure_failover(
    args: Any, dbs: Databases, workload: Workload, folder: Path
) -> dict[str, Any]:
    """Two nodes under load; kill -9 of node 1 (see the module docstring)."""
    rate = args.failover_rate
    n = int(rate * args.failover_s)
    expected = workload.expected(n)
    async with _prepared(args, dbs, "cluster2", workload, expected, folder, "failover") as prep:
        arm = prep.arm
        survivor, victim = arm.nodes
        feeder, start_ns = await _start_feeder(
            args, prep, workload.quotes[:n], rate, folder, "failover"
        )
        await _sleep_until_ns(start_ns + int(args.failover_kill_at * 1e9))
        kill_ns = time.monotonic_ns()
        victim.process.kill()
        await victim.process.wait()
        # The survivor's own view: when it serves every partition again.
        reclaimed_ns = None
        with trio.move_on_after(args.settle_timeout):
            while (await scrape(survivor)).get("tripwire_partitions_owned") != PARTITIONS:
                await trio.sleep(0.05)
            reclaimed_ns = time.monotonic_ns()
        await _sleep_until_ns(start_ns + int(n * 1e9 / rate) + int(args.grace * 1e9))
        survivor.check_alive()
        end_metrics = await scrape(survivor)
        fed = await feeder.stop()
        observed = [await worker.stop() for worker in prep.workers]
    index = {d: i for i, d in enumerate(prep.device_ids)}
    closes, arrival, resent = tally_closes(observed, index)
    served_again, affected = _served_again(observed, index, victim.port, kill_ns)
    missing = [d for d in affected if d not in served_again]
    waits = sorted((served_again[d] - kill_ns) / 1e9 for d in affected if d in served_again)
    period_ns = 1e9 / rate
    in_gap = 0
    normal = []
    for k, q in expected.items():
        if k not in arrival:
            continue
        due = start_ns + q * period_ns
        again = served_again.get(k[0])
        if k[0] in affected and again is not None and due < again <= arrival[k]:
            in_gap += 1
        else:
            normal.append((arrival[k] - due) / 1000)
    return {
        "rate": rate,
        "duration_s": args.failover_s,
        "kill_at_s": args.failover_kill_at,
        "killed": "node1",
        "pinned": arm.pinned,
        "devices": workload.devices,
        "devices_on_killed_node": len(affected),
        "devices_not_served_again": len(missing),
        "failover_s": round(waits[-1], 3) if waits and not missing else None,
        "failover_p50_s": round(statistics.median(waits), 3) if waits else None,
        "partitions_reclaimed_s": round((reclaimed_ns - kill_ns) / 1e9, 3)
        if reclaimed_ns is not None
        else None,
        "target_s": 3.0,
        "expected_closes": len(expected),
        "closes": len(arrival),
        "closed_after_failover": in_gap,
        "tick_to_close_ms": _ms(normal),
        **_outcome(expected, arrival, closes, resent, observed),
        "feeder_late_ms": _ms([ns / 1000 for ns in fed["late_ns"]]),
        "survivor_metrics": {k: end_metrics[k] for k in _FAILOVER_COUNTERS if k in end_metrics},
    }


_FAILOVER_COUNTERS = (
    *_NODE_COUNTERS,
    "tripwire_claim_gap_quotes_total",
    "tripwire_claim_gap_fires_total",
    "tripwire_stream_gaps_total",
)


def _served_again(
    observed: list[dict[str, Any]], index: dict[str, int], killed_port: int, kill_ns: int
) -> tuple[dict[int, int], set[int]]:
    """The devices whose last welcome before ``kill_ns`` came from the killed node, and when
    each was first welcomed after it by another node."""
    last_before: dict[int, tuple[int, int | None]] = {}
    again: dict[int, int] = {}
    for part in observed:
        for device, url, ns in part["welcomes"]:
            d, port = index[device], urlsplit(url).port
            if ns < kill_ns:
                if d not in last_before or last_before[d][0] < ns:
                    last_before[d] = (ns, port)
            elif port != killed_port and (d not in again or ns < again[d]):
                again[d] = ns
    affected = {d for d, (_, port) in last_before.items() if port == killed_port}
    return {d: ns for d, ns in again.items() if d in affected}, affected


# -- the whole run ------------------------------------------------------------------------------


async def run(args: Any) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="tripwire-cluster-"))
    rates = sorted(args.steps)
    need = int(max(rates) * (args.warmup + args.step_s))
    if args.failover:
        need = max(need, int(args.failover_rate * args.failover_s))
    quotes = quote_stream(need)
    if len(quotes) < need:
        raise SystemExit(f"bench.cluster: the quote days hold {len(quotes)} quotes, {need} asked")
    per_device = max(1, args.positions // args.devices)
    workload = Workload(
        args.devices, per_device, quotes, place_positions(quotes, args.devices, per_device)
    )
    dbs = Databases(folder, args.database_url)
    rows: list[dict[str, Any]] = []
    failover = None
    await dbs.start()
    try:
        for r in range(1, args.runs + 1):
            stopped: set[str] = set()
            for rate in rates:
                for name in args.arms:
                    if name in stopped:
                        rows.append({"run": r, "arm": name, "rate": rate, "verdict": "skipped"})
                        continue
                    row = await measure_step(args, dbs, name, rate, r, workload, folder)
                    rows.append(row)
                    _progress(row)
                    if row["verdict"] == "fail":
                        stopped.add(name)
        if args.failover:
            failover = await measure_failover(args, dbs, workload, folder)
    finally:
        with trio.CancelScope(shield=True):  # stopped by SIGTERM too (bench.common.run_harness)
            await dbs.close()
    return report(args, rows, failover, folder)


def _progress(row: dict[str, Any]) -> None:
    t = row["tick_to_close_ms"]
    print(
        f"run {row['run']} {row['arm']} {row['rate']:g}/s: {row['verdict']} "
        f"p99 {t['p99']} ms, {row['closes']} closes, lost {row['lost']} dup "
        f"{row['duplicated']} {'; '.join(row['reasons'])}",
        flush=True,
    )


# -- the command --------------------------------------------------------------------------------


def _rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _arms(text: str) -> list[str]:
    arms = [x.strip() for x in text.split(",") if x.strip()]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}")
    return arms


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--arms", type=_arms, default=list(ARMS), help="default: single,cluster1,cluster2"
    )
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--positions", type=int, default=4000, help="the book: over all devices")
    p.add_argument("--device-workers", type=int, default=2)
    p.add_argument(
        "--steps", type=_rates, default=[100.0, 200.0, 400.0, 800.0], help="quotes/s, commas"
    )
    p.add_argument("--warmup", type=float, default=15.0, help="seconds before each step's measure")
    p.add_argument("--step-s", type=float, default=60.0, help="measured seconds per step")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--p99-bound-ms",
        type=float,
        default=50.0,
        help="tick->close p99 a step must stay under (default 50 ms: ten times the few ms a "
        "close takes unloaded here, so that only queues building up fail a step, not one "
        "scheduler hiccup of a shared 2-core machine)",
    )
    p.add_argument("--lag-bound-s", type=float, default=1.0, help="journal and stream lag bound")
    p.add_argument(
        "--feeder-late-ms",
        type=float,
        default=5.0,
        help="the feeder's p99 lateness above which a step is invalid",
    )
    p.add_argument("--grace", type=float, default=3.0, help="seconds for the last closes")
    p.add_argument("--frame-ms", type=float, default=1.0)
    p.add_argument("--sample-s", type=float, default=1.0, help="how often /metrics is read")
    p.add_argument(
        "--idle-s", type=float, default=2.0, help="nodes' idle CPU measured this long first"
    )
    p.add_argument("--settle-timeout", type=float, default=180.0)
    p.add_argument(
        "--reconnect-s", type=float, default=0.2, help="a simulated EA's pause before reconnecting"
    )
    p.add_argument(
        "--database-url",
        help="a server to create a fresh database per arm and step on (default: an embedded "
        "Postgres of the harness's own)",
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin node i to core i where there is a core per node",
    )
    p.add_argument("--failover", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--failover-rate", type=float, default=100.0)
    p.add_argument("--failover-s", type=float, default=30.0, help="seconds of quotes")
    p.add_argument("--failover-kill-at", type=float, default=10.0, help="seconds into the quotes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.failover and not 0 < args.failover_kill_at < args.failover_s:
        raise SystemExit("bench.cluster: --failover-kill-at must fall inside --failover-s")
    configure_logging("console", "warning")  # the seeding's migrations would bury the table
    out = run_harness(run, args)
    summary(args, out)
    config = {k: v for k, v in vars(args).items() if k not in {"json", "database_url"}}
    write_json(args.json, {"machine": machine(), "config": config, **out})
    return 0 if out["lost"] == 0 and out["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
