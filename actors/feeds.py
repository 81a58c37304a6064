"""Price feeds: where quotes come from. Every feed produces protocol :class:`Quote` values and
hands them to a sink (``node.offer_quotes`` in a node, a WebSocket or the Redis tick bus
elsewhere).

* :func:`replay` plays the bundled real days (``data/``) with their original spacing, in real
  time or accelerated, stamped with the current time (a 2014 timestamp would be "stale");
* :func:`random_walk` invents a plausible market (tests, demos of symbols without data);
* :func:`websocket_feed` follows an upstream feed over WebSocket (trio-websocket), reconnecting
  with backoff, decoding :class:`~protocol.feed.QuoteBatch` frames.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import structlog
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from actors.clock import Clock
from actors.marketdata import load_ticks
from protocol.codec import feed_codec
from protocol.errors import ProtocolError
from protocol.feed import Quote, QuoteBatch

__all__ = ["QuoteSink", "StampedQuoteSink", "random_walk", "replay", "websocket_feed"]

QuoteSink = Callable[[Sequence[Quote]], object]
"""Takes a batch of quotes and must not block (``Node.offer_quotes``)."""

StampedQuoteSink = Callable[[Sequence[Quote], int | None], object]
"""The same, with the batch's ``sent_ms`` (``Node.offer_quotes`` judges arrival by it)."""


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


async def websocket_feed(
    sink: StampedQuoteSink,
    url: str,
    encoding: str = "msgpack",
    max_backoff: float = 10.0,
    connections: int | None = None,
) -> None:
    """Follow an upstream quote feed, reconnecting with capped exponential backoff.

    Malformed frames are logged and skipped (the feed is not trusted more than a device); a
    close or a network error leads to a reconnect. ``connections`` bounds the attempts (tests).
    """
    log = structlog.get_logger().bind(feed=url)
    codec = feed_codec(encoding)  # type: ignore[arg-type]
    backoff = 0.1
    attempts = 0
    while connections is None or attempts < connections:
        attempts += 1
        try:
            async with open_websocket_url(url, subprotocols=[f"tripwire.v1.{encoding}"]) as ws:
                log.info("feed connected")
                backoff = 0.1
                while True:
                    frame = await ws.get_message()
                    try:
                        batch = codec.decode(frame)
                    except ProtocolError as exc:
                        log.warning("bad feed frame skipped", code=exc.code, error=exc.message)
                        continue
                    if isinstance(batch, QuoteBatch):
                        sink(batch.quotes, batch.sent_ms)
        except (ConnectionClosed, HandshakeError, OSError) as exc:
            log.warning("feed disconnected; reconnecting", error=str(exc), backoff_s=backoff)
        await trio.sleep(backoff)
        backoff = min(max_backoff, backoff * 2)
