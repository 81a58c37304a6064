"""REST read latency for 100 concurrent clients, against a ``/healthz`` baseline in the same run.

    python -m bench.rest --clients 100 --users 100 --positions 10000 --rate 200 \\
        --duration 20 --saturation 10 --json out.json

What runs (each role its own process, so both cores work):

* the engine (``bench.e2e_engine``): the real runtime on an embedded Postgres, Hypercorn in front;
* simulated EAs (``bench.e2e_workers devices``), one per user, whose terminals hold the
  positions, tagged as the engine's own: the engine adopts them at once (EXTERNAL, with
  reconciliation entries) and arms them, so every user has live positions, reconciliation rows
  and a guard to read;
* the load (``python -m bench.rest --worker``): ``--clients`` clients, each with its own
  keep-alive connection and its user's JWT, cycling through ``GET /api/v1/positions``,
  ``/api/v1/reconciliation`` and ``/api/v1/guards``. h11 over trio sockets keeps the client's
  own cost per request small, so the numbers are the server's.

Three phases on the same clients:

1. baseline: ``/healthz`` (routing, Hypercorn, the event loop, no work) at ``--rate``
   requests/s over all clients, each request at its scheduled time;
2. reads: the three endpoints at the same paced rate. A paced request's latency runs from its
   SCHEDULED time to the last byte of the answer, so a late send counts (no coordinated
   omission). This is the latency figure (``overall``, ``endpoints``);
3. saturation: closed loop, every client asks again as soon as it has its answer, for
   ``--saturation`` seconds: the most reads per second one engine process serves. Its
   latencies are queueing (Little's law: clients / throughput), not service time.

Reported: per endpoint and overall ``p50_ms``, ``p95_ms``, ``p99_ms``, ``req_per_s``; errors
(any status but 200, or a broken connection: must be 0); ``ratios``: the reads' p50 and p99
over the baseline's. Target: reads p99 <= 10 ms on the dev machine (the old platform promised
p50 < 25 ms, p95 < 50 ms, p99 < 100 ms).
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h11
import httpx
import msgspec
import numpy as np
import trio

from bench.common import base_parser, machine, print_table, run_harness, write_json
from bench.e2e import (
    JWT_SECRET,
    Worker,
    _free_port,
    _metric,
    _seed,
    place_positions,
    quote_stream,
    start_engine,
    stop_engine,
    wait_ready,
)
from bench.e2e_workers import DeviceSpec, WorkerConfig
from gateway.auth import TokenIssuer
from persistence.embedded import EmbeddedPostgres

__all__ = ["ENDPOINTS", "main"]

ENDPOINTS = ("/api/v1/positions", "/api/v1/reconciliation", "/api/v1/guards")
BASELINE = "/healthz"


class LoadConfig(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    port: int
    tokens: list[str]
    clients: int
    rate: float
    """Requests per second over all clients in the paced phases (each client its share)."""
    duration_s: float
    saturation_s: float
    max_requests: int
    """Per phase, over all clients: the load stops at whichever bound comes first."""


class PhaseResult(msgspec.Struct, kw_only=True):
    # (endpoint index, latency ns, sent at: ns since the phase began) per 200 answer; the index
    # is into the phase's paths
    samples: list[tuple[int, int, int]]
    errors: list[str]
    seconds: float


class _Connection:
    """One keep-alive HTTP/1.1 connection (h11 does the protocol, trio the socket)."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host.encode()
        self.conn = h11.Connection(our_role=h11.CLIENT)

    async def get(self, path: str, token: str) -> tuple[int, bytes]:
        headers = [(b"Host", self.host), (b"Accept", b"application/json")]
        if token:
            headers.append((b"Authorization", b"Bearer " + token.encode()))
        data = self.conn.send(h11.Request(method="GET", target=path, headers=headers))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status = 0
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                self.conn.receive_data(chunk)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("server closed the connection")
        self.conn.start_next_cycle()
        return status, bytes(body)


async def _phase(
    config: LoadConfig, paths: tuple[str, ...], rate: float, seconds: float
) -> PhaseResult:
    """Every client on its own connection; ``rate`` > 0: paced, each request at its scheduled
    time and its latency counted from then (a late send counts: no coordinated omission);
    ``rate`` == 0: closed loop, each client asks again as soon as it has its answer."""
    samples: list[tuple[int, int, int]] = []
    errors: list[str] = []
    budget = [config.max_requests]
    period = config.clients / rate if rate > 0 else 0.0
    # Times are time.perf_counter() seconds (trio's own clock has a random offset).
    start = time.perf_counter() + 0.2  # every connection is open before the first send
    start_ns = int(start * 1e9)
    deadline = start + seconds

    async def client(k: int) -> None:
        token = config.tokens[k % len(config.tokens)]
        stream = await trio.open_tcp_stream(config.host, config.port)
        connection = _Connection(stream, f"{config.host}:{config.port}")
        i = k  # start each client at a different endpoint so the mix is even from the start
        due = start + (k / rate if rate > 0 else 0.0)  # clients staggered over one period
        try:
            while budget[0] > 0 and due < deadline:
                budget[0] -= 1
                which = i % len(paths)
                i += 1
                await trio.sleep(max(0.0, due - time.perf_counter()))
                t0 = int(due * 1e9) if rate > 0 else time.perf_counter_ns()
                try:
                    status, body = await connection.get(paths[which], token)
                except (ConnectionError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                    errors.append(f"{paths[which]}: {exc!r}")
                    return
                elapsed = time.perf_counter_ns() - t0
                due = due + period if rate > 0 else time.perf_counter()
                if status == 200:
                    samples.append((which, elapsed, t0 - start_ns))
                else:
                    errors.append(f"{paths[which]}: HTTP {status} {body[:200]!r}")
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for k in range(config.clients):
            nursery.start_soon(client, k)
    return PhaseResult(samples=samples, errors=errors, seconds=time.perf_counter() - start)


async def _load(config: LoadConfig) -> dict[str, PhaseResult]:
    phases = {
        "baseline": ((BASELINE,), config.rate, config.duration_s),
        "reads": (ENDPOINTS, config.rate, config.duration_s),
        "saturation": (ENDPOINTS, 0.0, config.saturation_s),
    }
    out = {}
    for name, (paths, rate, seconds) in phases.items():
        # The load's own collector pauses (a full one took 20-70 ms here) would count as the
        # server's latency: collect between phases, never during one.
        gc.collect()
        gc.disable()
        try:
            out[name] = await _phase(config, paths, rate, seconds)
        finally:
            gc.enable()
    return out


def _worker(config_path: str, out_path: str) -> int:
    config = msgspec.msgpack.decode(Path(config_path).read_bytes(), type=LoadConfig)
    result = trio.run(_load, config)
    Path(out_path).write_bytes(msgspec.msgpack.encode(result))
    return 0


# -- the harness -------------------------------------------------------------------------------


def _stats(latencies_ns: np.ndarray, seconds: float) -> dict[str, float]:
    ms = latencies_ns / 1e6
    if ms.size == 0:
        nan = float("nan")
        return {
            "p50_ms": nan,
            "p95_ms": nan,
            "p99_ms": nan,
            "max_ms": nan,
            "requests": 0,
            "req_per_s": 0.0,
        }
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(ms.max()), 3),
        "requests": int(ms.size),
        "req_per_s": round(ms.size / seconds, 1) if seconds > 0 else 0.0,
    }


def summarise(phases: dict[str, PhaseResult]) -> dict[str, Any]:
    """Per-endpoint and overall statistics, errors, and ratios to the baseline."""
    base = phases["baseline"]
    reads = phases["reads"]
    saturated = phases["saturation"]
    base_ns = np.array([s[1] for s in base.samples], dtype=np.float64)
    read_idx = np.array([s[0] for s in reads.samples], dtype=np.int64)
    read_ns = np.array([s[1] for s in reads.samples], dtype=np.float64)
    results: dict[str, Any] = {
        "baseline_healthz": _stats(base_ns, base.seconds),
        "overall": _stats(read_ns, reads.seconds),
        "endpoints": {
            path: _stats(read_ns[read_idx == i], reads.seconds) for i, path in enumerate(ENDPOINTS)
        },
        "saturation": _stats(
            np.array([s[1] for s in saturated.samples], dtype=np.float64), saturated.seconds
        ),
        "errors": len(base.errors) + len(reads.errors) + len(saturated.errors),
        "error_examples": (base.errors + reads.errors + saturated.errors)[:5],
    }
    b, o = results["baseline_healthz"], results["overall"]
    ratios = {
        "p50_over_healthz_p50": round(o["p50_ms"] / b["p50_ms"], 2) if b["p50_ms"] else None,
        "p99_over_healthz_p99": round(o["p99_ms"] / b["p99_ms"], 2) if b["p99_ms"] else None,
        "req_per_s_over_healthz": round(o["req_per_s"] / b["req_per_s"], 3)
        if b["req_per_s"]
        else None,
    }
    return {"results": results, "ratios": ratios}


async def run(args: Any) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="tripwire-rest-"))
    users = max(1, args.users)
    per_user = max(1, args.positions // users)
    # Positions are placed as bench.e2e places them (SL/TP around the real day's first quote);
    # no feed runs here, so none of them closes and every read sees the full set.
    placed = place_positions(quote_stream(1000), users, per_user)
    server = EmbeddedPostgres(folder / "pg")
    dsn = await trio.to_thread.run_sync(server.start)
    engine: trio.Process | None = None
    devices: Worker | None = None
    try:
        device_ids, device_secrets, user_ids = await _seed(dsn, users, users)
        port, echo_port = _free_port(), _free_port()
        engine = await start_engine(dsn, folder, port, echo_port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            await wait_ready(http)
            specs = [DeviceSpec(device_ids[d], device_secrets[d], placed[d]) for d in range(users)]
            devices = Worker(
                "devices",
                WorkerConfig(url=f"ws://127.0.0.1:{port}/ws/device", devices=specs),
                folder,
                "devices",
            )
            await devices.start()
            with trio.fail_after(300):
                while await _metric(http, "tripwire_armed_positions") < per_user * users:
                    await trio.sleep(0.25)
        issuer = TokenIssuer(JWT_SECRET.encode(), 24 * 3600)
        config = LoadConfig(
            host="127.0.0.1",
            port=port,
            tokens=[issuer.issue(u, "user")[0] for u in user_ids],
            clients=args.clients,
            rate=args.rate,
            duration_s=args.duration,
            saturation_s=args.saturation,
            max_requests=args.max_requests,
        )
        config_file, out_file = folder / "load.cfg", folder / "load.out"
        config_file.write_bytes(msgspec.msgpack.encode(config))
        with trio.fail_after(2 * args.duration + args.saturation + 120):
            done = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "bench.rest",
                    "--worker",
                    str(config_file),
                    str(out_file),
                ],
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"the load process failed with exit code {done.returncode}")
        raw = await trio.Path(out_file).read_bytes()
        if args.samples:
            await trio.Path(args.samples).write_bytes(raw)
        phases = msgspec.msgpack.decode(raw, type=dict[str, PhaseResult])
        out = summarise(phases)
        out["results"]["engine_rss_mb"] = _rss_mb(engine.pid)
        return out
    finally:
        if devices is not None and devices.process is not None:
            with trio.move_on_after(30):
                await devices.stop()
        if engine is not None:
            await stop_engine(engine)
        await trio.to_thread.run_sync(server.close)
        shutil.rmtree(folder, ignore_errors=True)  # the database and the engine's state


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # the load process that run() starts
        return _worker(argv[1], argv[2])
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients")
    parser.add_argument("--users", type=int, default=100, help="users (one device each)")
    parser.add_argument("--positions", type=int, default=10_000, help="open positions in all")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="requests/s over all clients (paced phases)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per paced phase")
    parser.add_argument(
        "--saturation", type=float, default=10.0, help="seconds of the closed-loop phase"
    )
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="per phase: a bound on the load"
    )
    parser.add_argument(
        "--samples", metavar="PATH", help="also write every request's sample (msgpack) to PATH"
    )
    args = parser.parse_args(argv)
    out = run_harness(run, args)
    r = out["results"]
    rows = [
        {"endpoint": BASELINE + " (baseline)", **r["baseline_healthz"]},
        *({"endpoint": path, **stats} for path, stats in r["endpoints"].items()),
        {"endpoint": "reads overall", **r["overall"]},
        {"endpoint": "reads, closed loop", **r["saturation"]},
    ]
    print_table(
        f"REST reads: {args.clients} clients, {args.users} users, {args.positions:,} positions, "
        f"{args.rate:g} requests/s paced for {args.duration:g} s, then {args.saturation:g} s "
        "closed loop",
        rows,
        ["endpoint", "p50_ms", "p95_ms", "p99_ms", "max_ms", "requests", "req_per_s"],
    )
    print(f"\nerrors {r['errors']} {r['error_examples'] or ''}")
    print(f"ratios {out['ratios']} (target: reads p99 <= 10 ms)")
    config = {k: v for k, v in vars(args).items() if k not in {"json", "samples"}}
    write_json(
        args.json, {"machine": machine(), "config": config, "results": r, "ratios": out["ratios"]}
    )
    return 0 if r["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
