"""End-to-end latency over real WebSockets, with a same-run baseline, HDR histograms and a plot.

    python -m bench.e2e --devices 1000 --positions 100000 --clients 100 --rate 1000 \\
        --duration 60 --json out.json --plot out.png
    python -m bench.e2e ... --soak 600          # ten minutes: RSS and mailbox depth over time

What runs (every role its own process, so both cores work and nothing shares an event loop):

* the engine (``bench.e2e_engine``): the real runtime on an embedded Postgres, plus a raw
  trio-websocket echo server in the same trio run;
* simulated EAs (``bench.e2e_workers devices``, split over ``--device-workers`` processes):
  the real protocol, signed handshakes, verified commands, acks like a terminal. Each holds its
  share of the positions and reports them in its snapshot on connect, tagged as the engine's
  own: the engine adopts and arms them at once, SL/TP spread around the market;
* clients (``... clients``): ``/ws/client`` streams of ``--clients`` users;
* the feeder (``... feeder``): the real XAUUSD and EURUSD days through ``/ws/feed`` at a
  constant ``--rate``, each quote due at its scheduled time and sent as a publisher does: at
  most one frame per ``--frame-ms``, carrying every quote due, stamped with ``sent_ms``.

The harness's processes run at ``--harness-nice`` (10): on a machine of two cores, an EA process
woken by the first close of a burst preempted the engine half-way through it (the scheduler
favours a task that slept), and the rest of the burst waited; a real EA, on its own machine,
never takes the engine's core. Alternating runs: node_to_device p50 1.9-2.2 ms at nice 0 against
1.1-1.3 ms at 10, the engine runnable but waiting 1.5 % of the time against 0.6-0.8 %.

What is measured (``time.monotonic_ns``, one clock for every process of the machine):

``tick_to_close_us``    from a quote's SCHEDULED send time to the close command it causes
                        arriving at the device (the oracle below says which quote crosses each
                        position first: no coordinated omission, a late send counts); a
                        command has arrived when the device's kernel received its frame
                        (``bench.ea_fleet``: ``SO_TIMESTAMPNS``; ``device_read_lag_us`` is how
                        much later the harness's EA process read it);
``node_to_device_us``   the ends the latency targets are set on: from the quote's arrival at the
                        node (the feeder's send returned: loopback delivers in the call) to the
                        command's arrival at the device; the feeder's own lateness (the harness
                        sharing the cores) is left out; ``ratios`` has both;
``burst_last_close_us`` per quote that closes at least ``BURST_MIN`` positions, its scheduled
                        time to its last close's arrival (``..._node_us``: from its arrival at
                        the node);
``burst_extra_close_us`` per such quote, the engine's time per extra close to the wire: its
                        first close's send returning to its last's, over k - 1 (traced stamps);
``first_close_node_us`` per quote that closes anything, its arrival at the node to its first
                        close's arrival; ``closes_per_firing_quote`` how many it closes (k);
``node_to_device_by_rank`` node_to_device by the close's rank in its quote's burst (0: first
                        to arrive): the burst's spacing told apart from a quote's wait;
``burst_close_parts``   per extra close of a burst, from the previous close's send to its
                        decision, and from its decision to its own send (traced stamps);
``quote_wait``          per such quote, its wait at the node until the engine read its frame,
                        split by what the engine did meanwhile: other feed frames, device
                        frames (acks), or neither (traced ``busy`` intervals);
``close_to_client_ms``  from the close command at the device to the CLOSED state arriving on
                        the owner's client stream (command -> ack -> journal -> delta);
``client_lag_ms``       a position delta's age when a client receives it;
``echo_rtt_us``         the baseline: a raw echo round trip between a device process and the
                        engine process, in the same run, on the EAs' client stack and to the
                        kernel's receipt of the answer; ``ratios`` divide by its p50;
``lost``/``duplicated`` positions the oracle says must close that got no close command / that
                        got more than one distinct close command (must both be 0);
``resent``              a close command id arriving again: the protocol's resend after a
                        reconnect (the simulated EAs reconnect as terminals do; ``disconnects``
                        and ``disconnect_reasons`` say how often and why the server closed);
``engine_metrics``      the engine's own counters at the end (sessions, commands, alerts).

Latencies are recorded in HDR histograms; each is ``{"p50","p90","p99","p999","max"}``.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import trio

from actors import tracing
from bench.common import (
    base_parser,
    bench_extra_missing,
    machine,
    print_table,
    run_harness,
    write_json,
)
from bench.e2e_workers import DeviceSpec, WorkerConfig
from engine.instruments import DEFAULT_INSTRUMENTS
from gateway.auth import TokenIssuer, hash_password
from persistence.bridge import open_bridge
from persistence.db import open_database
from persistence.embedded import EmbeddedPostgres
from persistence.migrator import migrate
from sim.market_data import load_ticks

try:
    from hdrh.histogram import HdrHistogram
except ImportError:
    bench_extra_missing("bench.e2e")

__all__ = ["main"]

SYMBOLS = ("XAUUSD", "EURUSD")
FEED_TOKEN = "bench-feed-token-" + "x" * 16
JWT_SECRET = "bench-jwt-secret-" + "y" * 32


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the workload ------------------------------------------------------------------------------


def quote_stream(n: int) -> list[tuple[str, float, float]]:
    """``n`` real quotes, XAUUSD and EURUSD interleaved in their days' time order."""
    rows: list[tuple[float, str, float, float]] = []
    for symbol in SYMBOLS:
        day = load_ticks(symbol)
        m = min(n, len(day))
        offset = day.ts_ms[:m] - day.ts_ms[0]
        rows += zip(
            offset.tolist(), [symbol] * m, day.bid[:m].tolist(), day.ask[:m].tolist(), strict=True
        )
    rows.sort(key=lambda r: r[0])
    return [(s, b, a) for _, s, b, a in rows[:n]]


def place_positions(
    quotes: list[tuple[str, float, float]], devices: int, per_device: int, seed: int = 3
) -> list[list[tuple[int, str, str, float, float, float, float]]]:
    """Positions per device, SL/TP around the opening market (about half of them will close)."""
    rng = np.random.default_rng(seed)
    first: dict[str, tuple[float, float]] = {}
    excursion: dict[str, float] = {}
    for symbol in SYMBOLS:
        bids = np.array([b for s, b, _ in quotes if s == symbol])
        first[symbol] = next((b, a) for s, b, a in quotes if s == symbol)
        excursion[symbol] = max(
            float(bids.max() - bids[0]), float(bids[0] - bids.min()), float(bids[0]) * 1e-4
        )
    out = []
    for d in range(devices):
        rows = []
        for k in range(per_device):
            symbol = SYMBOLS[(d + k) % len(SYMBOLS)]
            digits = DEFAULT_INSTRUMENTS[symbol].digits
            bid, ask = first[symbol]
            side = "buy" if rng.random() < 0.5 else "sell"
            entry = ask if side == "buy" else bid
            sign = 1 if side == "buy" else -1
            sl_d, tp_d = (float(x) for x in rng.uniform(0.25, 2.0, 2) * excursion[symbol])
            rows.append(
                (
                    10_000 + k,
                    symbol,
                    side,
                    0.1,
                    round(float(entry), digits),
                    round(entry - sign * sl_d, digits),
                    round(entry + sign * tp_d, digits),
                )
            )
        out.append(rows)
    return out


def oracle(
    quotes: list[tuple[str, float, float]],
    placed: list[list[tuple[int, str, str, float, float, float, float]]],
) -> dict[tuple[int, int], int]:
    """(device index, ticket) -> index of the first quote that crosses its SL or TP.

    Brute force made fast by monotonicity: the running minimum of the bid is non-increasing,
    so "the first quote with bid <= SL" is a binary search in it; likewise for the others.
    """
    first: dict[tuple[int, int], int] = {}
    for symbol in SYMBOLS:
        idx = np.array([i for i, (s, _, _) in enumerate(quotes) if s == symbol])
        if idx.size == 0:
            continue
        bid = np.array([quotes[i][1] for i in idx])
        ask = np.array([quotes[i][2] for i in idx])
        scale = 10 ** DEFAULT_INSTRUMENTS[symbol].digits
        bid_p, ask_p = np.rint(bid * scale), np.rint(ask * scale)
        run = {
            "bid_min": np.minimum.accumulate(bid_p),
            "bid_max": np.maximum.accumulate(bid_p),
            "ask_min": np.minimum.accumulate(ask_p),
            "ask_max": np.maximum.accumulate(ask_p),
        }

        def first_at_most(series: np.ndarray, level: float) -> int:
            return int(np.searchsorted(-series, -level, side="left"))

        def first_at_least(series: np.ndarray, level: float) -> int:
            return int(np.searchsorted(series, level, side="left"))

        for d, rows in enumerate(placed):
            for ticket, sym, side, _v, _o, sl, tp in rows:
                if sym != symbol:
                    continue
                sl_p, tp_p = round(sl * scale), round(tp * scale)
                if side == "buy":
                    hit = min(
                        first_at_most(run["bid_min"], sl_p), first_at_least(run["bid_max"], tp_p)
                    )
                else:
                    hit = min(
                        first_at_least(run["ask_max"], sl_p), first_at_most(run["ask_min"], tp_p)
                    )
                if hit < idx.size:
                    first[(d, ticket)] = int(idx[hit])
    return first


# -- processes ---------------------------------------------------------------------------------


async def _seed(dsn: str, devices: int, clients: int) -> tuple[list[str], list[str], list[str]]:
    """Users and devices straight into Postgres (1,000 argon2 registrations would take a
    minute through the API): returns device ids, their secrets, and the client users."""
    password_hash = hash_password("bench-password")
    users = [f"bu-{d:05d}" for d in range(devices)]
    device_ids = [f"bd-{d:05d}" for d in range(devices)]
    device_secrets = [secrets.token_urlsafe(32) for _ in range(devices)]
    async with open_bridge() as bridge, open_database(bridge, dsn) as db:
        await migrate(db)
        await db.executemany(
            "INSERT INTO users (id, username, password_hash, settings) VALUES ($1, $2, $3, $4)",
            [(u, u, password_hash, {}) for u in users],
        )
        await db.executemany(
            "INSERT INTO devices (id, user_id, name, account_login, broker) "
            "VALUES ($1, $2, 'bench', $3, 'bench')",
            [(d, u, str(i)) for i, (d, u) in enumerate(zip(device_ids, users, strict=True))],
        )
        await db.executemany(
            "INSERT INTO device_secrets (device_id, secret) VALUES ($1, $2)",
            [(d, s.encode()) for d, s in zip(device_ids, device_secrets, strict=True)],
        )
    return device_ids, device_secrets, users[:clients]


_CLUSTER_ENV = ("REDIS_URL", "TRIPWIRE_NODE_URL", "TRIPWIRE_NODE_ID", "TRIPWIRE_NODES")
"""Settings an engine never inherits from the harness's environment, only from ``env``: a stray
``TRIPWIRE_NODE_URL`` would silently make the single-node baseline a cluster node."""


async def start_engine(
    dsn: str,
    folder: Path,
    port: int,
    echo_port: int = 0,
    trace: Path | None = None,
    *,
    steps: bool = False,
    name: str = "engine",
    env: dict[str, str] | None = None,
    cpus: list[int] | None = None,
) -> trio.Process:
    """The engine process (``bench.e2e_engine``) on ``dsn``: no built-in feed, paper device or
    demo strategy, quiet logs, no snapshot during a run; ``env`` adds settings. With
    ``echo_port`` it also runs the raw echo server there; with ``trace`` it stamps every close's
    hops and writes them there when it stops (with ``steps``, every trio task step too). Its
    log is ``folder/NAME.log``. With ``cpus`` it runs on those CPUs only (set before it has
    started a thread, so every thread it starts inherits it)."""
    settings = {
        "DATABASE_URL": dsn,
        "TRIPWIRE_PORT": str(port),
        "TRIPWIRE_STATE_DIR": str(folder / ("state" if name == "engine" else f"{name}-state")),
        "TRIPWIRE_FEED": "none",
        "TRIPWIRE_PAPER_DEVICE": "false",
        "TRIPWIRE_DEMO_STRATEGY": "false",
        "TRIPWIRE_JWT_SECRET": JWT_SECRET,
        "TRIPWIRE_LOG_LEVEL": "warning",
        "TRIPWIRE_SNAPSHOT_INTERVAL_S": "3600",
        # Every simulated device and client connects from loopback: no per-address limits.
        "TRIPWIRE_MAX_WS_PER_ADDRESS": "0",
        "TRIPWIRE_MAX_HTTP_PER_ADDRESS": "0",
        **(env or {}),
    }
    argv = [sys.executable, "-m", "bench.e2e_engine"]
    if echo_port:
        argv += ["--echo-port", str(echo_port)]
    if trace is not None:
        argv += ["--trace", str(trace), *(["--steps"] if steps else [])]
    inherited = {k: v for k, v in os.environ.items() if k not in _CLUSTER_ENV}
    # Its log goes to a file: warnings on the terminal would bury the harness's table.
    log = os.open(folder / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = await trio.lowlevel.open_process(
            argv, env={**inherited, **settings}, stdout=log, stderr=log
        )
    finally:
        os.close(log)  # the engine has its own copy
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    return process


async def stop_engine(engine: trio.Process, grace_s: float = 30) -> None:
    """SIGTERM (the engine shuts down gracefully: drain, final snapshot), then SIGKILL after
    ``grace_s``."""
    engine.send_signal(signal.SIGTERM)
    with trio.move_on_after(grace_s):
        await engine.wait()
    if engine.returncode is None:
        engine.kill()


async def wait_ready(http: httpx.AsyncClient, timeout_s: float = 120, poll_s: float = 0.2) -> None:
    """Until the engine's ``/readyz`` says 200 (asking every ``poll_s``)."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(poll_s)


class Worker:
    def __init__(self, role: str, config: WorkerConfig, folder: Path, name: str) -> None:
        self.role = role
        self.config_file = folder / f"{name}.cfg"
        self.out = folder / f"{name}.out"
        self.config_file.write_bytes(msgspec.msgpack.encode(config))
        self.process: trio.Process | None = None
        self.banner = ""
        """What the worker printed before ``ready`` (the feeder: ``start_ns N``)."""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "bench.e2e_workers",
                self.role,
                "--config",
                str(self.config_file),
                "--out",
                str(self.out),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = b""
        with trio.fail_after(600):
            while not line.endswith(b"ready\n"):
                chunk = await self.process.stdout.receive_some(64)
                if not chunk:
                    raise RuntimeError(f"{self.role} worker exited before it was ready")
                line += chunk
        self.banner = line.decode().removesuffix("ready\n")

    def kill(self) -> None:
        """SIGKILL, if it still runs (a harness's ``finally``: no worker outlives it)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def stop(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        await self.process.stdin.aclose()
        with trio.fail_after(120):
            await self.process.wait()
        return msgspec.msgpack.decode(self.out.read_bytes(), type=dict[str, Any])


def _schedstat(pid: int) -> tuple[float, float, float]:
    """(seconds on CPU, seconds runnable but waiting for a CPU, wall time) of a process."""
    try:
        on_cpu, waiting, _ = (int(x) for x in Path(f"/proc/{pid}/schedstat").read_text().split())
    except (OSError, ValueError):
        return (float("nan"), float("nan"), time.monotonic())
    return on_cpu / 1e9, waiting / 1e9, time.monotonic()


def _cpu_s(pid: int, thread: int | None = None) -> float:
    """Seconds of CPU a process has used (user + system, every thread), from /proc/PID/stat;
    or one of its threads', from /proc/PID/task/TID/stat."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        stat = Path(path).read_text()
    except OSError:
        return float("nan")
    # The command name (field 2) may hold spaces: count the fields after its closing paren.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sched_delta(
    before: tuple[float, float, float], after: tuple[float, float, float]
) -> dict[str, float]:
    """Share of the wall time a process was on a CPU, and waiting for one while runnable
    (the kernel's run queue: on a loaded machine the engine's latency is partly this)."""
    wall = max(1e-9, after[2] - before[2])
    return {
        "cpu_pct": round((after[0] - before[0]) / wall * 100, 1),
        "runqueue_wait_pct": round((after[1] - before[1]) / wall * 100, 1),
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _metric(http: httpx.AsyncClient, name: str) -> float:
    return (await _metrics(http, name))[0]


async def _metrics(http: httpx.AsyncClient, *names: str) -> list[float]:
    """The largest sample of each of ``names``, from one scrape (a scrape holds the engine's
    loop for a few ms at 10,000 positions: the harness takes as few as it can)."""
    text = (await http.get("/metrics")).text
    found = [0.0] * len(names)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        for i, name in enumerate(names):
            if line.startswith(name):
                found[i] = max(found[i], float(line.rsplit(" ", 1)[1]))
    return found


def _hist(values_us: list[float]) -> dict[str, float]:
    hist = HdrHistogram(1, 600_000_000, 3)
    for v in values_us:
        hist.record_value(max(1, int(v)))
    if not values_us:
        return {
            "p50": float("nan"),
            "p90": float("nan"),
            "p99": float("nan"),
            "p999": float("nan"),
            "max": float("nan"),
            "count": 0,
        }
    return {
        "p50": hist.get_value_at_percentile(50),
        "p90": hist.get_value_at_percentile(90),
        "p99": hist.get_value_at_percentile(99),
        "p999": hist.get_value_at_percentile(99.9),
        "max": hist.get_max_value(),
        "count": hist.get_total_count(),
    }


async def run(args: Any) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="tripwire-e2e-"))
    per_device = max(1, args.positions // args.devices)
    n_quotes = int(args.rate * (args.soak or args.duration))
    quotes = quote_stream(n_quotes)
    placed = place_positions(quotes, args.devices, per_device)
    expected = oracle(quotes, placed)
    server = EmbeddedPostgres(folder / "pg")
    dsn = await trio.to_thread.run_sync(server.start)
    engine: trio.Process | None = None
    workers: list[Worker] = []
    try:
        device_ids, device_secrets, client_users = await _seed(dsn, args.devices, args.clients)
        port, echo_port = _free_port(), _free_port()
        trace = folder / "trace.msgpack"
        cores = sorted(os.sched_getaffinity(0))
        engine_cpus: list[int] = []
        harness_cpus: list[int] = []
        if args.pin and len(cores) > 1:
            engine_cpus, harness_cpus = cores[:1], cores[1:]
        engine = await start_engine(
            dsn,
            folder,
            port,
            echo_port,
            trace,
            steps=args.task_steps,
            env={"TRIPWIRE_FEED_TOKEN": FEED_TOKEN},
            cpus=engine_cpus,
        )
        base = f"http://127.0.0.1:{port}"
        # Generous: an overloaded engine answers late, and a late answer is a measurement.
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            await wait_ready(http)
            url = f"ws://127.0.0.1:{port}"
            shards = np.array_split(np.arange(args.devices), args.device_workers)
            for w, shard in enumerate(shards):
                specs = [
                    DeviceSpec(device_ids[d], device_secrets[d], placed[d]) for d in shard.tolist()
                ]
                config = WorkerConfig(
                    url=f"{url}/ws/device",
                    devices=specs,
                    echo_url=f"ws://127.0.0.1:{echo_port}" if w == 0 else "",
                    nice=args.harness_nice,
                    cpus=harness_cpus,
                )
                workers.append(Worker("devices", config, folder, f"devices{w}"))
            for worker in workers:
                await worker.start()
            with trio.fail_after(600):
                while await _metric(
                    http, "tripwire_armed_positions"
                ) < per_device * args.devices - len([1 for q in expected.values() if q == 0]):
                    await trio.sleep(0.5)
            issuer = TokenIssuer(JWT_SECRET.encode(), 24 * 3600)
            tokens = [issuer.issue(u, "user")[0] for u in client_users]
            clients = Worker(
                "clients",
                WorkerConfig(url=url, tokens=tokens, nice=args.harness_nice, cpus=harness_cpus),
                folder,
                "clients",
            )
            if tokens:
                await clients.start()
            feeder = Worker(
                "feeder",
                WorkerConfig(
                    url=url,
                    quotes=quotes,
                    rate=args.rate,
                    feed_token=FEED_TOKEN,
                    frame_ms=args.frame_ms,
                    nice=args.harness_nice,
                    cpus=harness_cpus,
                ),
                folder,
                "feeder",
            )
            await feeder.start()
            pids = {"engine": engine.pid, **{w.config_file.stem: w.pid for w in workers}}
            pids["feeder"] = feeder.pid
            sched_before = {name: _schedstat(pid) for name, pid in pids.items()}
            engine_cpu_before = _cpu_s(engine.pid)
            soak: list[dict[str, float]] = []
            run_for = len(quotes) / args.rate
            deadline = trio.current_time() + run_for + 1.0
            while trio.current_time() < deadline:
                depth, lag_s = await _metrics(
                    http, "tripwire_mailbox_depth", "tripwire_feed_lag_seconds"
                )
                soak.append(
                    {
                        "t_s": round(run_for - (deadline - trio.current_time()), 1),
                        "rss_mb": round(_rss_mb(engine.pid), 1),
                        "mailbox_depth": depth,
                        "feed_lag_ms": 1000 * lag_s,
                    }
                )
                await trio.sleep(min(5.0, max(0.5, run_for / 20)))
            sched = {n: _sched_delta(sched_before[n], _schedstat(pid)) for n, pid in pids.items()}
            fed = await feeder.stop()
            start_ns = fed["start_ns"]
            await trio.sleep(args.grace)
            engine_cpu_s = _cpu_s(engine.pid) - engine_cpu_before
            engine_metrics = await _engine_metrics(http)  # while every peer is still there
            observed = [await w.stop() for w in workers]
            seen = (
                await clients.stop() if tokens else {"deltas": [], "price_lag_ms": [], "dropped": 0}
            )
    finally:
        with trio.CancelScope(shield=True):  # stopped by SIGTERM too (bench.common.run_harness)
            if engine is not None:
                await stop_engine(engine)
            await trio.to_thread.run_sync(server.close)
        # The database (~120 MB) goes; the engine's log and the traces stay for a look.
        shutil.rmtree(folder / "pg", ignore_errors=True)
    traced = msgspec.msgpack.decode(trace.read_bytes()) if trace.exists() else {}
    stamps: dict[str, list[int]] = traced.get("commands", {})
    out = _results(
        args, quotes, expected, observed, seen, soak, start_ns, device_ids, fed["late_ns"]
    )
    out["results"]["feeder_late_us"] = _hist([ns / 1000 for ns in fed["late_ns"]])
    traced_closes = list(_traced_closes(args, expected, observed, stamps, fed, device_ids))
    out["results"]["hop_us"] = _hops(traced_closes)
    out["results"]["burst_extra_close_us"] = _hist(_burst_spacing(traced_closes))
    out["results"]["burst_close_parts"] = _burst_parts(traced_closes)
    waits = _firing_waits(traced_closes)
    out["results"]["quote_wait"] = _quote_wait(waits, traced.get("busy", []))
    if traced.get("steps"):
        out["results"]["quote_wait_by_task"] = _waits_by_task(waits, traced["steps"])
    out["results"]["device_worker_lag_us"] = _hist(
        [ns / 1000 for part in observed for ns in part.get("lag_ns", [])]
    )
    out["results"]["device_read_lag_us"] = _hist(
        [ns / 1000 for part in observed for ns in part.get("read_lag_ns", [])]
    )
    out["results"]["engine_metrics"] = engine_metrics
    out["results"]["cpu"] = sched
    closes = out["results"]["closes"]
    out["results"]["engine_cpu_s"] = round(engine_cpu_s, 2)
    # The figure a change to the close path is judged by: the engine's CPU (every thread) from
    # the first quote to the end of the grace, per close that reached a device. Load on the
    # machine stretches latencies but hardly this.
    out["results"]["engine_cpu_us_per_close"] = (
        round(engine_cpu_s / closes * 1e6, 1) if closes else None
    )
    out["results"]["closes_per_engine_cpu_s"] = (
        round(closes / engine_cpu_s, 1) if engine_cpu_s > 0 else None
    )
    return out


_ENGINE_METRICS = (
    "tripwire_devices_connected",
    "tripwire_commands_total",
    "tripwire_alerts_total",
    "tripwire_quotes_total",
    "tripwire_quotes_rejected_total",
    "tripwire_quotes_coalesced_total",
    "tripwire_fires_total",
    "tripwire_handshakes_total",
    "tripwire_actor_restarts_total",
    "tripwire_clients_dropped_total",
    "tripwire_journal_pending",
    "tripwire_feed_first_deferrals_total",
)


async def _engine_metrics(http: httpx.AsyncClient) -> dict[str, float]:
    """What the engine says about itself at the end of the run (``/metrics``), for the
    cases where the figures need explaining: sessions, command outcomes, alerts."""
    out: dict[str, float] = {}
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith(_ENGINE_METRICS):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def tally_closes(
    observed: list[dict[str, Any]], index: dict[str, int]
) -> tuple[dict[tuple[int, int], set[str]], dict[tuple[int, int], int], int]:
    """The close commands the device workers saw, by (device index, ticket): each position's
    distinct command ids, its first arrival (ns), and how many arrived again under an id
    already seen (the protocol's resend after a reconnect)."""
    closes: dict[tuple[int, int], set[str]] = {}
    arrival: dict[tuple[int, int], int] = {}
    repeats = 0
    for part in observed:
        for device, command_id, ticket, arrived in part["arrivals"]:
            key = (index[device], ticket)
            if command_id in closes.setdefault(key, set()):
                repeats += 1  # the same close again: a resend after a reconnect, by protocol
            closes[key].add(command_id)
            arrival.setdefault(key, arrived)
    return closes, arrival, repeats


def _results(
    args: Any,
    quotes: list[Any],
    expected: dict[tuple[int, int], int],
    observed: list[dict[str, Any]],
    seen: dict[str, Any],
    soak: list[dict[str, float]],
    start_ns: int,
    device_ids: list[str],
    late_ns: list[int],
) -> dict[str, Any]:
    period_ns: float = 1e9 / args.rate

    def at_node(q: int) -> float:
        """When quote ``q`` reached the node: its scheduled time plus the feeder's lateness."""
        return start_ns + q * period_ns + (late_ns[q] if q < len(late_ns) else 0)

    index = {d: i for i, d in enumerate(device_ids)}
    closes, arrival, repeats = tally_closes(observed, index)
    disconnects = [row for part in observed for row in part.get("disconnects", [])]
    by_reason: dict[str, int] = {}
    for _device, code, reason in disconnects:
        label = f"{code} {reason or ''}".strip()
        by_reason[label] = by_reason.get(label, 0) + 1
    tick_to_close = [
        (arrival[k] - (start_ns + q * period_ns)) / 1000
        for k, q in expected.items()
        if k in arrival
    ]
    node_to_device = [(arrival[k] - at_node(q)) / 1000 for k, q in expected.items() if k in arrival]
    lost = sum(1 for k in expected if k not in arrival)
    unexpected = sum(1 for k in arrival if k not in expected)
    # Per second of the run (by the quote's scheduled time), so that the burst of the first
    # seconds (positions placed near the opening market) is told apart from the steady state.
    by_second: dict[int, list[float]] = {}
    # Per quote that closes k >= BURST_MIN positions: the time to its LAST close.
    by_quote: dict[int, list[int | None]] = {}
    for k, q in expected.items():
        due = start_ns + q * period_ns
        if k in arrival:
            by_second.setdefault(int((due - start_ns) // 1e9), []).append((arrival[k] - due) / 1e3)
        by_quote.setdefault(q, []).append(arrival.get(k))
    per_second = [
        {"t_s": t, **{p: h[p] for p in ("count", "p50", "p99", "max")}}
        for t, h in ((t, _hist(v)) for t, v in sorted(by_second.items()))
    ]
    bursts = [
        (q, max(a for a in got if a is not None))
        for q, got in by_quote.items()
        if len(got) >= BURST_MIN and all(a is not None for a in got)
    ]
    burst_last = [(last - (start_ns + q * period_ns)) / 1e3 for q, last in bursts]
    burst_last_node = [(last - at_node(q)) / 1e3 for q, last in bursts]
    # Each close by its rank in its quote's burst (by arrival): a burst's closes leave one
    # socket write after another, so rank r waits for the r before it; rank 0 is the path
    # itself. Tells the burst's spacing apart from a quote's wait for the engine.
    by_rank: dict[str, list[float]] = {label: [] for label, _low, _high in RANKS}
    first_close_node = []
    sizes: list[float] = []
    for q, got in by_quote.items():
        came = sorted(a for a in got if a is not None)
        if not came:
            continue
        sizes.append(len(got))
        first_close_node.append((came[0] - at_node(q)) / 1e3)
        for rank, arrived in enumerate(came):
            label = next(label for label, low, high in RANKS if low <= rank < high)
            by_rank[label].append((arrived - at_node(q)) / 1e3)
    # Two different close commands for one position is a duplicate; one command id arriving
    # again is the protocol's resend after a reconnect (the terminal answers it from its window
    # of executed ids), counted apart. Without a reconnect a resend would still be suspect:
    # ``resent`` is reported beside ``disconnects`` so that the two can be compared.
    duplicated = sum(1 for ids in closes.values() if len(ids) > 1)
    to_client = []
    for device, ticket, received, state, _lag in seen["deltas"]:
        key = (index.get(device, -1), ticket)
        if state == "closed" and key in arrival:
            to_client.append((received - arrival[key]) / 1e6)
    echo = [ns / 1000 for part in observed for ns in part["echo_ns"]]
    results = {
        "tick_to_close_us": _hist(tick_to_close),
        "node_to_device_us": _hist(node_to_device),
        "close_to_client_ms": _hist([v * 1000 for v in to_client]),
        "client_lag_ms": _hist([max(0, row[4]) * 1000 for row in seen["deltas"]]),
        "echo_rtt_us": _hist(echo),
        "burst_last_close_us": _hist(burst_last),
        "burst_last_close_node_us": _hist(burst_last_node),
        "first_close_node_us": _hist(first_close_node),
        "closes_per_firing_quote": _hist(sizes),
        "node_to_device_by_rank": [
            {"rank": label, **{p: h[p] for p in ("count", "p50", "p99", "max")}}
            for label, h in ((label, _hist(v)) for label, v in by_rank.items())
            if h["count"]
        ],
        "tick_to_close_per_second": per_second,
        "lost": lost,
        "duplicated": duplicated,
        "resent": repeats,
        "disconnects": len(disconnects),
        "disconnect_reasons": by_reason,
        "unexpected_closes": unexpected,
        "expected_closes": len(expected),
        "closes": len(arrival),
        "quotes": len(quotes),
        "bad_signatures": sum(p["bad_signatures"] for p in observed),
        "clients_dropped": seen["dropped"],
    }
    for name in ("close_to_client_ms", "client_lag_ms"):  # recorded in us for HDR precision
        results[name] = {k: (v / 1000 if k != "count" else v) for k, v in results[name].items()}
    echo_p50 = results["echo_rtt_us"]["p50"]
    ratios = {
        f"{name}_{p}_over_echo_p50": round(results[f"{name}_us"][p] / echo_p50, 2)
        if echo_p50
        else None
        for name in ("tick_to_close", "node_to_device")
        for p in ("p50", "p99")
    }
    if soak:
        rss = [s["rss_mb"] for s in soak if s["t_s"] > 0] or [soak[0]["rss_mb"]]
        results["soak"] = {
            "samples": soak,
            "rss_growth_pct": round((rss[-1] - rss[0]) / rss[0] * 100, 2),
        }
    results["_raw"] = {"tick_to_close_us": tick_to_close, "echo_rtt_us": echo}
    return {"results": results, "ratios": ratios}


BURST_MIN = 10
"""A quote that closes at least this many positions is a burst (``burst_last_close_us``)."""

RANKS: tuple[tuple[str, int, int], ...] = (
    ("0", 0, 1),
    ("1-4", 1, 5),
    ("5-9", 5, 10),
    ("10-19", 10, 20),
    ("20-49", 20, 50),
    ("50+", 50, 1 << 62),
)
"""The buckets of ``node_to_device_by_rank``: (label, first rank, past the last)."""

HOP_NAMES = (
    "feeder",
    "to_engine",
    "to_book",
    "book",
    "user",
    "outbox",
    "writer",
    "wire",
    "total",
)
"""The hops of ``hop_us``, each the time since the one before: the feeder's send after the
quote's scheduled time, its frame read by the engine's feed handler, the symbol actor judging
the quote, the book firing, the user actor deciding, the command in the outbox, its frame's
send returning (the writer), its arrival at the simulated EA (the wire and the EA's reader);
``total`` is scheduled time to arrival (as ``tick_to_close_us``)."""


TracedClose = tuple[int, float, float, list[int], int]
"""A traced close: its quote, the quote's scheduled time, its arrival at the node, the engine's
stamps (``actors.tracing.HOPS``), the close's arrival at the device."""


def _traced_closes(
    args: Any,
    expected: dict[tuple[int, int], int],
    observed: list[dict[str, Any]],
    stamps: dict[str, list[int]],
    fed: dict[str, Any],
    device_ids: list[str],
) -> Iterator[TracedClose]:
    """Every close that arrived and was traced end to end."""
    period_ns = 1e9 / args.rate
    start_ns, late = fed["start_ns"], fed["late_ns"]
    index = {d: i for i, d in enumerate(device_ids)}
    for part in observed:
        for device, command_id, ticket, arrived in part["arrivals"]:
            q = expected.get((index[device], ticket))
            row = stamps.get(command_id)
            if q is None or row is None or q >= len(late) or 0 in row:
                continue
            due = start_ns + q * period_ns
            yield q, due, due + late[q], row, arrived


def _hops(closes: list[TracedClose]) -> dict[str, dict[str, float]]:
    """Each hop's p50/p99/max over the traced closes (empty without an engine trace)."""
    hops: dict[str, list[float]] = {name: [] for name in HOP_NAMES}
    for _q, due, sent_by_feeder, row, arrived in closes:
        frame, offered, fired, decided, outbox, sent = row
        points = (due, sent_by_feeder, frame, offered, fired, decided, outbox, sent, arrived)
        for name, before, after in zip(HOP_NAMES, points, points[1:], strict=False):
            hops[name].append((after - before) / 1e3)
        hops["total"].append((arrived - due) / 1e3)
    if not hops["total"]:
        return {}
    return {
        name: {k: h[k] for k in ("p50", "p99", "max", "count")}
        for name, h in ((n, _hist(v)) for n, v in hops.items())
    }


def _firing_waits(closes: list[TracedClose]) -> list[tuple[float, int]]:
    """Per quote that closes anything (traced): (its arrival at the node, its frame's read)."""
    frame_of = {q: (at_node, row[0]) for q, _due, at_node, row, _arrived in closes}
    return list(frame_of.values())


def _waits_by_task(
    waits: list[tuple[float, int]], steps: list[tuple[str, int, int]]
) -> list[dict[str, Any]]:
    """Over every firing quote's wait to be read (``_firing_waits``): the engine's trio tasks
    that ran meanwhile, by name, with their share of the waits; ``(no task step)`` is the rest:
    the scheduler, I/O polling, the asyncio bridge's thread holding the GIL, or the process off
    the CPU. Collections (``gc:N``) happen inside task steps: their rows are part of those."""
    tasks = _Spans([step for step in steps if not step[0].startswith("gc:")])
    collections = _Spans([step for step in steps if step[0].startswith("gc:")])
    by_task: dict[str, float] = {}
    in_gc: dict[str, float] = {}
    total = 0.0
    for arrived, frame in waits:
        if frame <= arrived:
            continue
        total += frame - arrived
        for spans, sums in ((tasks, by_task), (collections, in_gc)):
            for name, ns in spans.within(arrived, frame):
                sums[name] = sums.get(name, 0.0) + ns
    by_task["(no task step)"] = total - sum(by_task.values())
    ranked = sorted(by_task.items(), key=lambda item: -item[1])[:12] + sorted(in_gc.items())
    return [
        {"task": name, "ms": round(ns / 1e6, 2), "share_pct": round(ns / total * 100, 1)}
        for name, ns in ranked
        if total
    ]


class _Spans:
    """Intervals (key, start, end) of one thread, none inside another: which overlap a window."""

    def __init__(self, spans: list[tuple[Any, int, int]]) -> None:
        self.spans = sorted(spans, key=lambda span: span[1])
        self.ends = [end for _key, _start, end in self.spans]

    def within(self, begin: float, end: float) -> Iterator[tuple[Any, float]]:
        """(key, ns of it inside [begin, end]) of every interval that overlaps the window."""
        spans = self.spans
        i = bisect.bisect_right(self.ends, begin)
        while i < len(spans) and spans[i][1] < end:
            key, start, stop = spans[i]
            yield key, max(0.0, min(stop, end) - max(start, begin))
            i += 1


def _quote_wait(
    waits: list[tuple[float, int]], busy: list[tuple[int, int, int]]
) -> dict[str, dict[str, float]]:
    """Per quote that closes anything: how long it waited at the node before the engine read
    its frame, and what the engine was doing meanwhile (the traced ``busy`` intervals): other
    feed frames (earlier quotes and the closes they fired), device frames (acks and reports),
    or neither (the journal, clients, timers, the scheduler, or another process on the core).
    ``device_frames`` counts the device frames handled meanwhile."""
    if not waits or not busy:
        return {}
    spans = _Spans(busy)
    parts: dict[str, list[float]] = {n: [] for n in ("wait", "feed", "device", "other")}
    frames: list[float] = []
    for arrived, frame in waits:
        wait = max(0.0, frame - arrived)
        took = {tracing.FEED: 0.0, tracing.DEVICE: 0.0}
        count = 0
        for kind, ns in spans.within(arrived, frame):
            took[kind] += ns
            count += kind == tracing.DEVICE
        parts["wait"].append(wait / 1e3)
        parts["feed"].append(took[tracing.FEED] / 1e3)
        parts["device"].append(took[tracing.DEVICE] / 1e3)
        parts["other"].append(max(0.0, wait - took[tracing.FEED] - took[tracing.DEVICE]) / 1e3)
        frames.append(count)
    out = {f"{name}_us": _hist(values) for name, values in parts.items()}
    out["device_frames"] = _hist(frames)
    return out


def _rows_by_quote(closes: list[TracedClose]) -> list[list[list[int]]]:
    """The engine's stamps of each quote's traced closes, in the order they were sent."""
    by_quote: dict[int, list[list[int]]] = {}
    for q, _due, _at_node, row, _arrived in closes:
        by_quote.setdefault(q, []).append(row)
    return [sorted(rows, key=lambda row: row[5]) for rows in by_quote.values()]


def _burst_parts(closes: list[TracedClose]) -> dict[str, dict[str, float]]:
    """Where an extra close of a burst goes, per close after its quote's first: ``decide_us``
    from the previous close's send returning to this one's user deciding it (the user core,
    and the bookkeeping of the close before), ``send_us`` from deciding it to its send
    returning (device core, signing, framing, the socket write); ``first_send_us`` the same for
    the first close of each firing quote."""
    decide: list[float] = []
    send: list[float] = []
    first: list[float] = []
    for rows in _rows_by_quote(closes):
        first.append((rows[0][5] - rows[0][3]) / 1e3)
        for before, row in itertools.pairwise(rows):
            if row[3] != before[3]:  # decided apart (one user's closes are decided at once)
                decide.append((row[3] - before[5]) / 1e3)
                send.append((row[5] - row[3]) / 1e3)
    if not first:
        return {}
    return {"decide_us": _hist(decide), "send_us": _hist(send), "first_send_us": _hist(first)}


def _burst_spacing(closes: list[TracedClose]) -> list[float]:
    """Per quote that closes at least ``BURST_MIN`` positions, the engine's time per extra
    close to the wire: from its first close's send returning to its last's, over k - 1 (the
    engine's own stamps; empty without a trace)."""
    return [
        (rows[-1][5] - rows[0][5]) / 1e3 / (len(rows) - 1)
        for rows in _rows_by_quote(closes)
        if len(rows) >= BURST_MIN
    ]


def _plot(path: str, raw: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in raw.items():
        if values:
            data = np.sort(np.array(values))
            ax.plot(data, np.linspace(0, 100, data.size), label=f"{name} (n={data.size:,})")
    ax.set_xscale("log")
    ax.set_xlabel("microseconds")
    ax.set_ylabel("percentile")
    ax.set_title("Tripwire end to end: quote -> close command at the device, vs raw echo")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--positions", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000.0, help="quotes per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of quotes")
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        help="run this many seconds and report RSS, mailbox depth and feed lag over time",
    )
    parser.add_argument("--device-workers", type=int, default=2)
    parser.add_argument(
        "--frame-ms",
        type=float,
        default=1.0,
        help="the feeder sends one frame per this many ms at most (quotes due are batched)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=3.0,
        help="seconds to wait for the last closes after the last quote",
    )
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the distributions")
    parser.add_argument(
        "--harness-nice",
        type=int,
        default=10,
        help="the EAs, clients and feeder run at this nice value (default 10: the engine's "
        "wake-ups are not preempted by the harness, which a real EA on its own machine never "
        "does; 0: as before)",
    )

    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the engine on CPU 0, the EAs, clients and feeder on the others (Postgres free)",
    )
    parser.add_argument(
        "--task-steps",
        action="store_true",
        help="record every trio task step of the engine (~1 us each) and say which tasks ran "
        "while firing quotes waited to be read",
    )
    args = parser.parse_args(argv)
    out = run_harness(run, args)
    raw = out["results"].pop("_raw")
    r = out["results"]
    rows = [
        {"metric": k, **{p: v[p] for p in ("p50", "p90", "p99", "p999", "max")}}
        for k, v in r.items()
        if isinstance(v, dict) and "p50" in v
    ]
    print_table(
        f"end to end: {args.devices:,} devices, {args.positions:,} positions, "
        f"{args.clients} clients, {args.rate:g} quotes/s",
        rows,
        ["metric", "p50", "p90", "p99", "p999", "max"],
    )
    print(
        f"\nlost {r['lost']}  duplicated {r['duplicated']}  expected closes "
        f"{r['expected_closes']:,}  unexpected {r['unexpected_closes']}  "
        f"bad signatures {r['bad_signatures']}"
    )
    print(f"resent {r['resent']}  disconnects {r['disconnects']} {r['disconnect_reasons'] or ''}")
    hops = r["hop_us"]
    if hops:
        print_table(
            "hops of the traced closes (us, each since the one before)",
            [{"hop": name, **hops[name]} for name in HOP_NAMES],
            ["hop", "p50", "p99", "max", "count"],
        )
    if r["quote_wait"]:
        print_table(
            "a firing quote's wait at the node for the engine to read it, and what the engine "
            "did meanwhile (us; device_frames: a count)",
            [{"part": name, **r["quote_wait"][name]} for name in r["quote_wait"]],
            ["part", "p50", "p90", "p99", "max", "count"],
        )
    if r["burst_close_parts"]:
        print_table(
            "an extra close of a burst (us): the user's decision, then its way to the socket",
            [{"part": name, **r["burst_close_parts"][name]} for name in r["burst_close_parts"]],
            ["part", "p50", "p90", "p99", "max", "count"],
        )
    if r.get("quote_wait_by_task"):
        print_table(
            "what ran while firing quotes waited to be read (trio task steps, summed)",
            r["quote_wait_by_task"],
            ["task", "ms", "share_pct"],
        )
    print_table(
        "node -> device by the close's rank in its quote's burst (us; rank 0: the first close)",
        r["node_to_device_by_rank"],
        ["rank", "count", "p50", "p99", "max"],
    )
    print_table(
        "tick -> close per second of the run (us, by the quote's scheduled time)",
        r["tick_to_close_per_second"],
        ["t_s", "count", "p50", "p99", "max"],
    )
    print(
        "CPU over the quotes (% of wall: on CPU / runnable but waiting): "
        + ", ".join(f"{k} {v['cpu_pct']}/{v['runqueue_wait_pct']}" for k, v in r["cpu"].items())
    )
    print(
        f"engine CPU {r['engine_cpu_s']} s over the quotes and the grace: "
        f"engine_cpu_us_per_close {r['engine_cpu_us_per_close']}  "
        f"closes_per_engine_cpu_s {r['closes_per_engine_cpu_s']} ({r['closes']:,} closes)"
    )
    print(f"ratios {out['ratios']} (targets: p50 <= 3, p99 <= 10)")
    for name in ("burst_last_close_us", "burst_last_close_node_us"):
        burst = r[name]
        print(
            f"{name} p50 {burst['p50']} p99 {burst['p99']} over {burst['count']} "
            f"quotes closing >= {BURST_MIN} (target p50 <= 2,000)"
        )
    extra = r["burst_extra_close_us"]
    print(
        f"burst_extra_close_us p50 {extra['p50']} p99 {extra['p99']} over {extra['count']} "
        f"quotes closing >= {BURST_MIN}: the engine's time per extra close to the wire "
        "(target <= 50)"
    )
    if "soak" in r:
        print(f"soak: RSS growth {r['soak']['rss_growth_pct']} % (target <= 5 %)")
    config = {k: v for k, v in vars(args).items() if k not in {"json", "plot"}}
    write_json(
        args.json, {"machine": machine(), "config": config, "results": r, "ratios": out["ratios"]}
    )
    if args.plot:
        _plot(args.plot, raw)
        print(f"wrote {args.plot}")
    return 0 if r["lost"] == 0 and r["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
