"""A soak of idle ``/ws/client`` connections: the engine's memory per connection, and
``/healthz`` latency while they connect, while they idle and after they close.

    python -m bench.soak_clients --clients 2000 --users 100 --hold 20 --json out.json

What runs, each its own process: the engine (``bench.e2e_engine``: the real runtime on an
embedded Postgres), the clients (``python -m bench.soak_clients --worker``) and this harness,
which drives them and probes ``/healthz`` (so the probe's latency is the engine's, not that of
a loop busy opening connections). Each client logs in with its user's JWT, subscribes
(positions, alerts, devices: nothing arrives while nothing trades), reads its snapshot, then
idles. ``/healthz`` is paced at ``--rate`` throughout, each request's latency counted from its
scheduled time (a late send counts). Phases:

1. ``baseline``: no clients (the same probe against the idle engine: the comparison);
2. ``ramp``: ``--clients`` connections opened, ``--concurrency`` at a time;
3. ``hold``: all of them open and idle for ``--hold`` seconds;
4. ``closed``: all closed again, for ``--settle`` seconds;
5. ``again``: all opened again and held: how much the RSS grows a second time.

Reported: the engine's RSS (``/proc/PID/status`` VmRSS) at the end of each phase; the growth
per connection (``hold`` over ``baseline``); ``regrowth`` per connection (``again`` over
``closed``): CPython's allocator keeps freed pages, so the RSS barely falls after a close, but
memory given back to it is reused, and a second round costs ~nothing where a leak would cost as
much as the first; ``/healthz`` p50/p99/max per phase; connections that failed to open or
dropped while idle (must be 0). File descriptors: the soft limit is raised if the run needs it.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from bench.common import base_parser, machine, print_table, run_harness, write_json
from bench.e2e import (
    JWT_SECRET,
    _free_port,
    _metric,
    _seed,
    start_engine,
    stop_engine,
    wait_ready,
)
from gateway.auth import TokenIssuer
from persistence.embedded import EmbeddedPostgres
from protocol.client import Snapshot, Subscribe
from protocol.codec import client_client_codec

__all__ = ["PHASES", "main", "rss_kib"]

PHASES = ("baseline", "ramp", "hold", "closed", "again")
_CODEC = client_client_codec("json")


def rss_kib(pid: int) -> int:
    """The resident set of process ``pid``, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def raise_fd_limit(needed: int) -> int:
    """Raise the soft file-descriptor limit to ``needed`` if it is lower (up to the hard one;
    the engine, started after, inherits it). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return soft


class Probe:
    """``/healthz`` at a paced rate, each sample labelled with the phase it was due in."""

    def __init__(self, http: httpx.AsyncClient, rate: float, max_requests: int) -> None:
        self.http = http
        self.period = 1.0 / rate
        self.budget = max_requests
        self.phase = PHASES[0]
        self.samples: dict[str, list[float]] = {p: [] for p in PHASES}
        self.errors: list[str] = []

    async def run(self, stop: trio.Event) -> None:
        due = time.perf_counter()
        while not stop.is_set() and self.budget > 0:
            self.budget -= 1
            await trio.sleep(max(0.0, due - time.perf_counter()))
            phase = self.phase
            try:
                answer = await self.http.get("/healthz")
            except httpx.HTTPError as exc:
                self.errors.append(f"{phase}: {exc!r}")
            else:
                if answer.status_code == 200:
                    self.samples[phase].append((time.perf_counter() - due) * 1000)
                else:
                    self.errors.append(f"{phase}: HTTP {answer.status_code}")
            due += self.period


class Clients:
    """The idle client connections, each in its own task until ``closing`` is set."""

    def __init__(self, url: str, tokens: list[str], concurrency: int) -> None:
        self.url = url
        self.tokens = tokens
        self.gate = trio.Semaphore(concurrency)
        self.opened = 0
        self.failed: list[str] = []
        self.dropped: list[str] = []
        self.closing = trio.Event()

    async def one(
        self, k: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, subscribe, read the snapshot (``started``), idle until ``closing``."""
        url = f"{self.url}?token={self.tokens[k % len(self.tokens)]}"
        started = False
        await self.gate.acquire()
        gated = True
        try:
            async with open_websocket_url(url, subprotocols=["tripwire.v1.json"]) as ws:
                await ws.send_message(_CODEC.encode(Subscribe()))
                with trio.fail_after(30):
                    first = _CODEC.decode(await ws.get_message())
                if not isinstance(first, Snapshot):
                    raise RuntimeError(f"first message {type(first).__name__}, not a snapshot")
                self.opened += 1
                self.gate.release()
                gated = False
                started = True
                task_status.started()
                async with trio.open_nursery() as idle:

                    async def drain() -> None:  # nothing is expected; whatever comes is read
                        try:
                            while True:
                                await ws.get_message()
                        except ConnectionClosed as exc:
                            if not self.closing.is_set():
                                self.dropped.append(f"{k}: {exc.reason}")
                            idle.cancel_scope.cancel()

                    idle.start_soon(drain)
                    await self.closing.wait()
                    idle.cancel_scope.cancel()
                await ws.aclose()
        except (OSError, HandshakeError, RuntimeError, trio.TooSlowError, ConnectionClosed) as exc:
            self.failed.append(f"{k}: {exc!r}")
        finally:
            if gated:
                self.gate.release()
            if not started:
                task_status.started()


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    ms = np.asarray(values)
    p50, p99 = np.percentile(ms, [50, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(ms.max()), 3),
        "n": int(ms.size),
    }


async def _wait_metric(http: httpx.AsyncClient, name: str, value: float, timeout_s: float) -> bool:
    with trio.move_on_after(timeout_s):
        while await _metric(http, name) != value:
            await trio.sleep(0.2)
        return True
    return False


class Worker:
    """The clients' process: ``open`` opens them all, ``close`` closes them, one JSON line
    answers each."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.buffer = b""

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        await self.process.stdin.send_all(command.encode() + b"\n")
        while b"\n" not in self.buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise RuntimeError("the clients' process ended")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer


async def _worker_main(url: str, tokens: list[str], count: int, concurrency: int) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""

    async def command() -> str:
        nonlocal buffer
        while b"\n" not in buffer:
            chunk = await stdin.receive_some(1024)
            if not chunk:
                return "exit"
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        return line.decode().strip()

    def answer(value: dict[str, Any]) -> None:
        print(json.dumps(value), flush=True)

    while (what := await command()) == "open":
        clients = Clients(url, tokens, concurrency)
        async with trio.open_nursery() as held:
            async with trio.open_nursery() as starting:
                for k in range(count):
                    starting.start_soon(held.start, clients.one, k)
            answer(
                {"opened": clients.opened, "failed": clients.failed[:5], "n": len(clients.failed)}
            )
            if await command() != "close":
                raise SystemExit("expected close")
            clients.closing.set()  # every client closes its WebSocket and ends
        answer({"dropped": len(clients.dropped), "examples": clients.dropped[:5]})
    if what != "exit":
        raise SystemExit(f"unknown command {what!r}")


async def soak(args: Any, port: int, engine_pid: int, tokens_file: Path) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    rss: dict[str, int] = {}
    worker = Worker(
        await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "bench.soak_clients",
                "--worker",
                f"ws://127.0.0.1:{port}/ws/client",
                str(tokens_file),
                str(args.clients),
                str(args.concurrency),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
    )
    failed: list[str] = []
    dropped: list[str] = []
    opened: list[int] = []
    seen: dict[str, float] = {}
    ramp_s = 0.0
    try:
        async with (
            httpx.AsyncClient(base_url=base, timeout=10) as probe_http,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
        ):
            probe = Probe(probe_http, args.rate, args.max_requests)
            stop = trio.Event()
            bound = 2 * (args.ramp_timeout + args.hold) + 3 * args.settle + 180
            with trio.fail_after(bound):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(probe.run, stop)
                    await trio.sleep(args.settle)
                    rss["baseline"] = rss_kib(engine_pid)
                    for first in (True, False):
                        probe.phase = "ramp" if first else "again"
                        started = time.perf_counter()
                        with trio.fail_after(args.ramp_timeout):
                            done = await worker.ask("open")
                        if first:
                            ramp_s = time.perf_counter() - started
                            rss["ramp"] = rss_kib(engine_pid)
                            probe.phase = "hold"
                        opened.append(done["opened"])
                        failed += done["failed"]
                        seen["connected" if first else "connected_again"] = await _metric(
                            http, "tripwire_clients_connected"
                        )
                        await trio.sleep(args.hold if first else args.settle)
                        rss["hold" if first else "again"] = rss_kib(engine_pid)
                        if first:
                            seen["after_hold"] = await _metric(http, "tripwire_clients_connected")
                        closed = await worker.ask("close")
                        dropped += (
                            closed["examples"][: 5 - len(dropped)] if closed["dropped"] else []
                        )
                        if closed["dropped"]:
                            dropped.append(f"{closed['dropped']} dropped")
                        gone = await _wait_metric(http, "tripwire_clients_connected", 0, 60)
                        seen["all_closed" if first else "all_closed_again"] = float(gone)
                        if first:
                            probe.phase = "closed"
                            await trio.sleep(args.settle)
                            rss["closed"] = rss_kib(engine_pid)
                    stop.set()
        await worker.process.stdin.send_all(b"exit\n")  # type: ignore[union-attr]
        with trio.move_on_after(30):
            await worker.process.wait()
    finally:
        if worker.process.returncode is None:
            worker.process.kill()
            await worker.process.wait()
    grew = rss["hold"] - rss["baseline"]
    n = max(1, opened[0] if opened else 1)
    return {
        "clients": args.clients,
        "opened": opened,
        "failed": len(failed),
        "dropped": len(dropped),
        "examples": (failed + dropped + probe.errors)[:5],
        "engine_saw": seen,
        "ramp_s": round(ramp_s, 2),
        "rss_mib": {k: round(v / 1024, 1) for k, v in rss.items()},
        "kib_per_connection": round(grew / n, 1),
        "regrowth_kib_per_connection": round((rss["again"] - rss["closed"]) / n, 1),
        "healthz": {p: _stats(probe.samples[p]) for p in PHASES},
        "healthz_errors": len(probe.errors),
    }


async def run(args: Any) -> dict[str, Any]:
    fd_limit = raise_fd_limit(2 * args.clients + 1024)
    folder = Path(tempfile.mkdtemp(prefix="tripwire-soak-"))
    server = EmbeddedPostgres(folder / "pg")
    dsn = await trio.to_thread.run_sync(server.start)
    engine: trio.Process | None = None
    try:
        _, _, user_ids = await _seed(dsn, args.users, args.users)
        port = _free_port()
        engine = await start_engine(dsn, folder, port, _free_port())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            await wait_ready(http)
        issuer = TokenIssuer(JWT_SECRET.encode(), 24 * 3600)
        tokens_file = folder / "tokens"
        tokens_file.write_text("\n".join(issuer.issue(u, "user")[0] for u in user_ids))
        out = await soak(args, port, engine.pid, tokens_file)
        out["fd_soft_limit"] = fd_limit
        return out
    finally:
        if engine is not None:
            await stop_engine(engine)
        await trio.to_thread.run_sync(server.close)
        # The database (~120 MB) goes; the engine's log and the traces stay for a look.
        shutil.rmtree(folder / "pg", ignore_errors=True)


def ok(results: dict[str, Any]) -> bool:
    """Every client opened and stayed, the engine saw them all and saw them go, and every
    ``/healthz`` was a 200."""
    seen = results["engine_saw"]
    return (
        results["opened"] == [results["clients"]] * 2
        and results["failed"] == 0
        and results["dropped"] == 0
        and seen["after_hold"] == results["clients"]
        and bool(seen["all_closed"] and seen["all_closed_again"])
        and results["healthz_errors"] == 0
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # the clients' process that soak() starts
        url, tokens_file, count, concurrency = argv[1:5]
        tokens = Path(tokens_file).read_text().split()
        trio.run(_worker_main, url, tokens, int(count), int(concurrency))
        return 0
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000, help="idle connections")
    parser.add_argument("--users", type=int, default=100, help="users the clients log in as")
    parser.add_argument("--concurrency", type=int, default=64, help="connections opening at once")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds all of them idle")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before and after")
    parser.add_argument("--rate", type=float, default=50.0, help="/healthz requests per second")
    parser.add_argument("--ramp-timeout", type=float, default=300.0, help="bound on the ramp, s")
    parser.add_argument("--max-requests", type=int, default=100_000, help="bound on the probe")
    args = parser.parse_args(argv)
    r = run_harness(run, args)
    print_table(
        f"/healthz while {args.clients:,} idle /ws/client connections come and go "
        f"({args.rate:g} requests/s, from the scheduled time)",
        [{"phase": p, **r["healthz"][p]} for p in PHASES],
        ["phase", "p50_ms", "p99_ms", "max_ms", "n"],
    )
    m = r["rss_mib"]
    print(
        f"\nengine RSS MiB: baseline {m['baseline']}, ramp {m['ramp']}, hold {m['hold']}, "
        f"closed {m['closed']}, again {m['again']}; {r['kib_per_connection']} KiB per "
        f"connection, {r['regrowth_kib_per_connection']} KiB per connection the second time"
    )
    print(
        f"opened {r['opened']} of {r['clients']} (first ramp {r['ramp_s']} s), "
        f"failed {r['failed']}, "
        f"dropped {r['dropped']}, /healthz errors {r['healthz_errors']} {r['examples'] or ''}"
    )
    config = {k: v for k, v in vars(args).items() if k != "json"}
    write_json(args.json, {"machine": machine(), "config": config, "results": r})
    return 0 if ok(r) else 1


if __name__ == "__main__":
    sys.exit(main())
