"""Trigger book harness: cost per quote and per fired trigger, and memory per position.

    python -m bench.triggers --positions 1000,100000,1000000 --json out.json

For each N it builds a book of N positions (a ``Position`` each, half long half short) with SL and
TP spread around the market the way traders place them (log-normal distances, a few dollars to
tens of dollars on gold), replays the real XAUUSD day (265,015 quotes) through it and reports:

``quote_ns_p50``/``quote_ns_p99``  cost of ``on_quote`` for quotes that fire nothing
``fire_ns_mean``                   cost of a quote that fires, divided by the triggers it fired
``bytes_per_position``             memory of the book plus the positions (tracemalloc), per position
``compact_pause_ms``               the longest single cancel while three fifths of the book are
                                   cancelled in random order: the compaction that drops the
                                   stale levels, which every change of the book waits for
``fired``                          triggers fired over the day

Timer overhead (``perf_counter_ns`` back to back) is measured in the same run and subtracted.
"""

from __future__ import annotations

import gc
import time
import tracemalloc

import numpy as np

from bench.common import base_parser, machine, percentiles, print_table, write_json
from engine import DEFAULT_INSTRUMENTS, Position, TriggerBook
from protocol.common import Side
from sim.market_data import load_ticks


def build(n: int, entry: int, seed: int = 1) -> tuple[TriggerBook, list[Position]]:
    """N positions around ``entry`` (points), SL/TP log-normally 2-60 dollars away."""
    rng = np.random.default_rng(seed)
    sl_dist = np.clip(rng.lognormal(np.log(8_000), 0.7, n), 500, 60_000).astype(np.int64)
    tp_dist = np.clip(rng.lognormal(np.log(12_000), 0.7, n), 500, 90_000).astype(np.int64)
    jitter = rng.integers(-3_000, 3_000, n)
    book = TriggerBook("XAUUSD")
    positions = []
    for i, (sd, td, j) in enumerate(
        zip(sl_dist.tolist(), tp_dist.tolist(), jitter.tolist(), strict=True)
    ):
        side = Side.BUY if i & 1 == 0 else Side.SELL
        open_price = entry + j
        sl = open_price - side.sign * sd
        tp = open_price + side.sign * td
        pid = f"P{i:08d}"
        positions.append(
            Position(
                id=pid,
                user_id=f"u{i % 1000}",
                device_id=f"d{i % 1000}",
                account="1",
                symbol="XAUUSD",
                side=side,
                volume=0.1,
                open_price=open_price,
                sl=sl,
                tp=tp,
            )
        )
        book.register(pid, side, sl, tp)
    return book, positions


def measure(n: int, bids: list[int], asks: list[int]) -> dict[str, float | int]:
    entry = bids[0]
    # Memory first, in its own build (tracemalloc slows everything it traces). A small build
    # first warms the process's one-time caches so they are not charged to the positions.
    build(100, entry, seed=2)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    book, positions = build(n, entry)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del book, positions
    gc.collect()

    book, positions = build(n, entry)
    gc.collect()
    gc.freeze()  # as the engine does after recovery: the long-lived set leaves the young GC
    clock = time.perf_counter_ns
    overhead = min(-(clock() - clock()) for _ in range(10_000))
    quiet = np.empty(len(bids), dtype=np.int64)
    n_quiet = 0
    fire_ns = 0
    fired = 0
    on_quote = book.on_quote
    for bid, ask in zip(bids, asks, strict=True):
        t0 = clock()
        triggers = on_quote(bid, ask)
        elapsed = clock() - t0 - overhead
        if triggers:
            fired += len(triggers)
            fire_ns += elapsed
        else:
            quiet[n_quiet] = elapsed
            n_quiet += 1
    # Then cancel three fifths of the book in random order: the longest cancel is the
    # compaction (the stale items outnumber the live ones twice over from one half on), a pause
    # every change of this symbol's book waits for.
    ids = [p.id for p in positions]
    pause_ns = 0
    for i in np.random.default_rng(3).permutation(n)[: n * 3 // 5].tolist():
        t0 = clock()
        book.cancel(ids[i])
        pause_ns = max(pause_ns, clock() - t0)
    gc.unfreeze()
    q = percentiles(quiet[:n_quiet], (50, 99))
    return {
        "positions": n,
        "quote_ns_p50": round(q["p50"], 1),
        "quote_ns_p99": round(q["p99"], 1),
        "fire_ns_mean": round(fire_ns / fired, 1) if fired else 0.0,
        "bytes_per_position": round(used / n, 1),
        "compact_pause_ms": round(pause_ns / 1e6, 1),
        "fired": fired,
        "quotes": len(bids),
        "timer_overhead_ns": overhead,
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--positions",
        default="1000,100000,1000000",
        help="comma-separated book sizes (default 1000,100000,1000000)",
    )
    parser.add_argument(
        "--ticks",
        type=int,
        default=0,
        help="replay only the first N quotes of the day (default: all)",
    )
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.positions.split(",") if x]
    instrument = DEFAULT_INSTRUMENTS["XAUUSD"]
    bids_a, asks_a = load_ticks("XAUUSD").points(instrument.digits)
    if args.ticks:
        bids_a, asks_a = bids_a[: args.ticks], asks_a[: args.ticks]
    bids, asks = bids_a.tolist(), asks_a.tolist()
    results = [measure(n, bids, asks) for n in sizes]
    print_table(
        "trigger book, real XAUUSD day",
        results,
        [
            "positions",
            "quote_ns_p50",
            "quote_ns_p99",
            "fire_ns_mean",
            "bytes_per_position",
            "compact_pause_ms",
            "fired",
        ],
    )
    if len(results) > 1:
        ratio = results[-1]["quote_ns_p50"] / max(results[0]["quote_ns_p50"], 1e-9)
        print(f"\nquote_ns_p50 at {sizes[-1]:,} / at {sizes[0]:,}: {ratio:.2f}x (target <= 1.3x)")
    write_json(args.json, {"machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
