"""Another user's chart under a flood of distinct chart requests, against the same request on
the idle engine in the same run.

    python -m bench.charts --flood 150 --flooders 10 --victims 16 --duration 20 --json out.json

What runs, each its own process: the engine (``bench.e2e_engine``: the real runtime on an
embedded Postgres, with the ``--workers`` / ``--per-user`` / ``--queue`` chart settings), the
flood (``python -m bench.charts --flood-worker``) and this harness, the victims. Every victim
is a user of their own with ``--trades`` closed trades, so each ``equity.png`` is a real render
(nothing cached). Two phases:

1. ``idle``: half the victims ask for their ``equity.png`` one after the other, nothing else
   running: the baseline;
2. ``flood``: ``--flood`` requests in flight at all times, spread over ``--flooders`` users,
   each a candle chart never asked before (a distinct ``limit``: a render each, no cache);
   after a refusal (429) a loop waits what ``Retry-After`` says (or ``--backoff`` seconds,
   if given: a small one makes the flood a flood of requests, which no chart limit can help).
   Meanwhile the other victims ask for their ``equity.png``, one every ``--interval``
   seconds, each latency counted from its scheduled time.

Reported: the victims' latency per phase (p50, max) and their ratio; the flood's answers by
status (200 rendered, 429 refused); errors (a victim not answered 200: must be 0).
"""

from __future__ import annotations

import json
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

from bench.common import base_parser, machine, print_table, run_harness, write_json
from bench.e2e import JWT_SECRET, _free_port, _seed, start_engine, stop_engine, wait_ready
from gateway.auth import TokenIssuer
from persistence.bridge import open_bridge
from persistence.db import open_database
from persistence.embedded import EmbeddedPostgres

__all__ = ["main", "summarise"]

_TRADES = """
INSERT INTO positions (id, user_id, device_id, symbol, side, state, origin, volume, opened_at,
                       closed_at, pl, updated_at)
SELECT $1 || '-' || n, $1, $2, 'XAUUSD', 'buy', 'closed', 'signal', 0.1,
       now() - (n + 1) * interval '10 minutes', now() - n * interval '10 minutes',
       round((sin(n) * 50)::numeric, 2), now() - n * interval '10 minutes'
FROM generate_series(1, $3) AS n"""


async def _flood(config: dict[str, Any]) -> dict[str, Any]:
    """The flood's process: ``flood`` loops over ``tokens``, each asking for new charts."""
    counts: dict[str, int] = {}
    budget = [config["max_requests"]]
    deadline = time.perf_counter() + config["duration"]
    limits = iter(range(10, 1_000_000))
    tokens = config["tokens"]

    async def loop(k: int, http: httpx.AsyncClient) -> None:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            params = {"limit": next(limits) % 990 + 10, "interval_s": 60 + k % 7}
            pause = config["backoff"]
            try:
                answer = await http.get("/api/v1/charts/candles/XAUUSD.png", params=params)
                status = str(answer.status_code)
                if pause < 0:
                    pause = float(answer.headers.get("Retry-After", 1))
            except httpx.HTTPError as exc:
                status = type(exc).__name__
                pause = abs(pause)
            counts[status] = counts.get(status, 0) + 1
            if status != "200":
                await trio.sleep(pause)

    clients = [
        httpx.AsyncClient(
            base_url=config["base_url"],
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            limits=httpx.Limits(max_connections=config["flood"]),
        )
        for token in tokens
    ]
    try:
        async with trio.open_nursery() as nursery:
            for k in range(config["flood"]):
                nursery.start_soon(loop, k, clients[k % len(clients)])
    finally:
        for client in clients:
            await client.aclose()
    return counts


async def _victims(
    base_url: str, tokens: list[str], interval: float, paced: bool
) -> tuple[list[float], list[str]]:
    """Each token's ``equity.png`` once, one every ``interval`` s; latencies in ms from the
    scheduled time (``paced``) or from the send."""
    latencies: list[float] = []
    errors: list[str] = []
    due = time.perf_counter()
    for token in tokens:
        await trio.sleep(max(0.0, due - time.perf_counter()))
        started = due if paced else time.perf_counter()
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as http:
            answer = await http.get("/api/v1/charts/equity.png")
        if answer.status_code == 200:
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            errors.append(f"HTTP {answer.status_code} {answer.text[:120]}")
        due = max(due + interval, time.perf_counter()) if not paced else due + interval
    return latencies, errors


def summarise(idle: list[float], flood: list[float]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        if not values:
            return {"p50_ms": float("nan"), "max_ms": float("nan"), "n": 0}
        ms = np.asarray(values)
        return {
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "max_ms": round(float(ms.max()), 1),
            "n": int(ms.size),
        }

    out: dict[str, Any] = {"idle": stats(idle), "flood": stats(flood)}
    base = out["idle"]["p50_ms"]
    out["p50_ratio"] = round(out["flood"]["p50_ms"] / base, 2) if base else None
    return out


async def run(args: Any) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="tripwire-charts-"))
    server = EmbeddedPostgres(folder / "pg")
    dsn = await trio.to_thread.run_sync(server.start)
    engine: trio.Process | None = None
    try:
        users = args.flooders + args.victims
        device_ids, _, user_ids = await _seed(dsn, users, users)
        async with open_bridge() as bridge, open_database(bridge, dsn) as db:
            for user_id, device_id in zip(
                user_ids[args.flooders :], device_ids[args.flooders :], strict=True
            ):
                await db.execute(_TRADES, user_id, device_id, args.trades)
        port = _free_port()
        settings = {
            "TRIPWIRE_CHART_WORKERS": str(args.workers),
            "TRIPWIRE_CHART_PER_USER": str(args.per_user),
            "TRIPWIRE_CHART_QUEUE": str(args.queue),
        }
        engine = await start_engine(dsn, folder, port, _free_port(), None, env=settings)
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
            await wait_ready(http)
        issuer = TokenIssuer(JWT_SECRET.encode(), 24 * 3600)
        tokens = [issuer.issue(u, "user")[0] for u in user_ids]
        flooders, victims = tokens[: args.flooders], tokens[args.flooders :]
        half = len(victims) // 2
        # Warm the chart workers (their start is not what is measured), as a flooder.
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {flooders[0]}"}, timeout=60
        ) as http:
            await http.get("/api/v1/charts/candles/XAUUSD.png", params={"limit": 9})
        idle, idle_errors = await _victims(base_url, victims[:half], args.interval, paced=False)

        config = {
            "base_url": base_url,
            "tokens": flooders,
            "flood": args.flood,
            "duration": args.duration,
            "max_requests": args.max_requests,
            "backoff": args.backoff,
        }
        config_file = folder / "flood.json"
        config_file.write_text(json.dumps(config))
        out_file = folder / "flood.out"
        result: dict[str, Any] = {}
        with trio.fail_after(args.duration + 300):
            async with trio.open_nursery() as nursery:

                async def flood() -> None:
                    command = [sys.executable, "-m", "bench.charts", "--flood-worker"]
                    done = await trio.run_process(
                        [*command, str(config_file), str(out_file)],
                        check=False,
                        stdout=subprocess.DEVNULL,
                    )
                    result["rc"] = done.returncode

                nursery.start_soon(flood)
                await trio.sleep(min(2.0, args.duration / 4))  # the flood is in full swing
                under, flood_errors = await _victims(
                    base_url, victims[half:], args.interval, paced=True
                )
        counts = json.loads(out_file.read_text()) if out_file.exists() else {}
        out = summarise(idle, under)
        out["flood_answers"] = counts
        out["flood_rc"] = result.get("rc")
        out["errors"] = idle_errors + flood_errors
        return out
    finally:
        if engine is not None:
            await stop_engine(engine)
        await trio.to_thread.run_sync(server.close)
        # The database (~120 MB) goes; the engine's log and the traces stay for a look.
        shutil.rmtree(folder / "pg", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--flood-worker"]:  # the flood's process that run() starts
        config = json.loads(Path(argv[1]).read_text())
        Path(argv[2]).write_text(json.dumps(trio.run(_flood, config)))
        return 0
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=150, help="flood requests in flight")
    parser.add_argument("--flooders", type=int, default=10, help="users the flood is spread over")
    parser.add_argument("--victims", type=int, default=16, help="other users (half per phase)")
    parser.add_argument("--trades", type=int, default=500, help="closed trades per victim")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of flood at most")
    parser.add_argument("--interval", type=float, default=1.0, help="s between victims' asks")
    parser.add_argument(
        "--backoff", type=float, default=-1.0, help="flood's pause after a 429 (<0: Retry-After)"
    )
    parser.add_argument("--max-requests", type=int, default=20_000, help="bound on the flood")
    parser.add_argument("--workers", type=int, default=2, help="TRIPWIRE_CHART_WORKERS")
    parser.add_argument("--per-user", type=int, default=2, help="TRIPWIRE_CHART_PER_USER")
    parser.add_argument("--queue", type=int, default=8, help="TRIPWIRE_CHART_QUEUE")
    args = parser.parse_args(argv)
    r = run_harness(run, args)
    print_table(
        f"another user's equity.png: idle engine vs. {args.flood} distinct chart requests in "
        f"flight from {args.flooders} users (chart workers {args.workers}, per user "
        f"{args.per_user}, queue {args.queue})",
        [{"phase": p, **r[p]} for p in ("idle", "flood")],
        ["phase", "p50_ms", "max_ms", "n"],
    )
    print(f"\nflood p50 / idle p50: {r['p50_ratio']}; flood answers {r['flood_answers']}")
    print(f"errors {len(r['errors'])} {r['errors'][:3] or ''}")
    config = {k: v for k, v in vars(args).items() if k != "json"}
    write_json(args.json, {"machine": machine(), "config": config, "results": r})
    return 0 if not r["errors"] and r["flood_rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
