"""Simulated price feeds: they produce protocol :class:`Quote` values and hand them to a sink
(``node.offer_quotes`` in a node, a WebSocket or the Redis tick bus elsewhere). The real
upstream feed's client is :func:`actors.upstream_feed.websocket_feed`.

* :func:`replay` plays the bundled real days (``data/``) with their original spacing, in real
  time or accelerated, stamped with the current time (a 2014 timestamp would be "stale");
* :func:`random_walk` invents a plausible market (tests, demos of symbols without data).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import trio

from actors.clock import Clock
from protocol.feed import Quote
from sim.market_data import load_ticks

__all__ = ["QuoteSink", "random_walk", "replay"]

QuoteSink = Callable[[Sequence[Quote]], object]
"""Takes a batch of quotes and must not block (``Node.offer_quotes``)."""


async def replay(
    sink: QuoteSink,
    clock: Clock,
    symbols: Iterable[str] = ("XAUUSD", "EURUSD"),
    speed: float = 1.0,
    loop: bool = True,
    max_quotes: int | None = None,
    start_s: float = 0.0,
    data_dir: str | None = None,
) -> int:
    """Play the days of ``symbols`` side by side (from ``data_dir``, default the bundled
    ``data/``); returns the quotes sent.

    ``speed`` 1.0 is real time, 10.0 ten times faster. Quotes due at the same moment (within a
    millisecond of each other) leave as one batch. The first pass starts ``start_s`` seconds
    into the days (the demo starts where the market moves, not in the quiet night); with
    ``loop`` the days then start over from their beginning, so a demo never runs dry.
    """
    if speed <= 0:
        raise ValueError("speed must be positive")
    if start_s < 0:
        raise ValueError("start_s must be 0 or more")
    days = [load_ticks(s, Path(data_dir) if data_dir else None) for s in symbols]
    sent = 0
    skip_ms = start_s * 1000
    while True:
        # Merge the days on their offsets from each day's first tick.
        merged: list[tuple[float, str, float, float]] = []
        for day in days:
            t0 = float(day.ts_ms[0])
            merged += zip(
                (day.ts_ms - t0).tolist(),
                [day.symbol] * len(day),
                day.bid.tolist(),
                day.ask.tolist(),
                strict=True,
            )
        merged.sort(key=lambda row: row[0])
        i = bisect.bisect_left(merged, skip_ms, key=lambda row: row[0])
        if i == len(merged):  # past the end of every day: play them whole
            i, skip_ms = 0, 0.0
        start = trio.current_time()
        while i < len(merged):
            due = start + (merged[i][0] - skip_ms) / 1000 / speed
            await trio.sleep_until(due)
            now_ms = clock.now_ms()
            batch = []
            horizon = merged[i][0] + 1.0
            while i < len(merged) and merged[i][0] < horizon:
                _, symbol, bid, ask = merged[i]
                batch.append(Quote(symbol=symbol, bid=bid, ask=ask, time_ms=now_ms))
                i += 1
            sink(batch)
            sent += len(batch)
            if max_quotes is not None and sent >= max_quotes:
                return sent
        skip_ms = 0.0
        if not loop:
            return sent


async def random_walk(
    sink: QuoteSink,
    clock: Clock,
    symbol: str,
    start: float,
    spread: float,
    volatility: float = 0.0002,
    rate: float = 10.0,
    digits: int = 5,
    seed: int = 1,
    max_quotes: int | None = None,
) -> int:
    """A geometric random walk of ``symbol``: ``rate`` quotes a second, forever (or bounded)."""
    rng = random.Random(seed)
    mid = start
    sent = 0
    while max_quotes is None or sent < max_quotes:
        await trio.sleep(1 / rate)
        mid *= math.exp(rng.gauss(0.0, volatility))
        bid = round(mid - spread / 2, digits)
        sink(
            [Quote(symbol=symbol, bid=bid, ask=round(bid + spread, digits), time_ms=clock.now_ms())]
        )
        sent += 1
    return sent
