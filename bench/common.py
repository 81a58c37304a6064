"""What every harness shares: the machine record, percentiles, the table and the JSON file."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import trio

from engine.lifecycle import PositionState
from engine.positions import Position
from protocol.common import Side

__all__ = [
    "BENCH_EXTRA",
    "base_parser",
    "bench_extra_missing",
    "machine",
    "open_positions",
    "percentiles",
    "print_table",
    "require_bench_extra",
    "run_harness",
    "write_json",
]

T = TypeVar("T")

BENCH_EXTRA = ("hdrh",)
"""The modules of pyproject's ``bench`` extra that a harness imports (``make run`` omits them)."""


def bench_extra_missing(harness: str) -> NoReturn:
    """Stop ``harness`` with one line that says what to install, instead of a traceback."""
    sys.exit(
        f"{harness}: the bench extra is not installed; "
        "run `make bench`, or `pip install -c constraints.txt -e '.[bench]'`"
    )


def require_bench_extra(harness: str) -> None:
    """Stop ``harness`` at once (one line) if any module of the bench extra is missing."""
    if any(importlib.util.find_spec(name) is None for name in BENCH_EXTRA):
        bench_extra_missing(harness)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    with contextlib.suppress(ValueError, OSError):
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
                timeout=5,
                cwd=Path(__file__).resolve().parents[1],
            ).stdout.strip()
            or None
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "commit": commit,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def percentiles(
    values: Sequence[float] | np.ndarray, points: Iterable[float] = (50, 90, 99, 99.9)
) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ..., "p999": ..., "max": ...}`` of ``values``."""
    data = np.asarray(values, dtype=np.float64)
    out: dict[str, float] = {}
    for p in points:
        key = "p" + (f"{p:g}".replace(".", ""))
        out[key] = float(np.percentile(data, p)) if data.size else float("nan")
    out["max"] = float(data.max()) if data.size else float("nan")
    return out


def print_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A plain aligned table on standard output."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


def write_json(path: str | None, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` (if given) as indented JSON."""
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
        print(f"\nwrote {path}")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return parser


def open_positions(
    n: int, owners: int, entry: int, *, seed: int, all_buy: bool = False
) -> list[Position]:
    """``n`` OPEN XAUUSD positions opened at ``entry`` (points), position ``i`` owned by user
    ``u{i % owners}`` on device ``d{i % owners}``: buys and sells in turn (or all buys, for a
    storm), SL and TP at log-normal distances around 8,000 and 12,000 points."""
    rng = np.random.default_rng(seed)
    sl = np.clip(rng.lognormal(np.log(8_000), 0.7, n), 300, 60_000).astype(int).tolist()
    tp = np.clip(rng.lognormal(np.log(12_000), 0.7, n), 300, 90_000).astype(int).tolist()
    out = []
    for i in range(n):
        side = Side.BUY if all_buy or i % 2 == 0 else Side.SELL
        k = i % owners
        out.append(
            Position(
                id=f"P{i:08d}",
                user_id=f"u{k}",
                device_id=f"d{k}",
                account=str(k),
                symbol="XAUUSD",
                side=side,
                volume=0.1,
                state=PositionState.OPEN,
                open_price=entry,
                open_time_ms=0,
                sl=entry - side.sign * sl[i],
                tp=entry + side.sign * tp[i],
                ticket=1_000_000 + i,
                client_id=f"tw:P{i:08d}",
            )
        )
    return out


def run_harness(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run(fn, *args)``, stopped by SIGTERM as by Ctrl-C: the run is cancelled, so the
    harness's own clean-up stops what it started (engines, nodes, its Postgres and Redis)
    instead of leaving them running, and the process exits 143.

    Without it, SIGTERM (``kill``, ``timeout``) ends the process on the spot: its children
    outlived it and disturbed the runs after it."""
    done: list[T] = []

    async def stoppable() -> None:
        async with trio.open_nursery() as nursery:

            async def stop_on_sigterm() -> None:
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        print("SIGTERM: stopping what this harness started", file=sys.stderr)
                        nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_sigterm)
            done.append(await fn(*args))
            nursery.cancel_scope.cancel()

    trio.run(stoppable)
    if not done:
        raise SystemExit(128 + signal.SIGTERM)
    return done[0]
