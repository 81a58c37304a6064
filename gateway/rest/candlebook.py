"""The candle book: one price sample per symbol per second, OHLC candles on request.

The tick path never sees it. A background task (:meth:`CandleBook.run`, started with the app)
reads the price board once a second and appends each symbol's bid to a fixed ring buffer
(numpy, a day of seconds by default), only when the symbol has quoted since the last sample.
Candles of any interval are aggregated on request, vectorised: the samples of the wanted span
are bucketed by ``time // interval`` and each bucket gives its first, highest, lowest and last
price. The cost of a request grows with the span asked for, never with the tick rate.

Candles sampled once a second miss what happened inside a second: they are a chart of the
market as the engine watched it, not an exchange's tape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import trio

__all__ = ["Candle", "CandleBook", "Series"]


class _Board(Protocol):
    def all(self) -> Mapping[str, tuple[float, float, int]]: ...


class _Clock(Protocol):
    def now_ms(self) -> int: ...


class Candle(NamedTuple):
    t: int
    """Start of the candle, ms since the epoch (a multiple of the interval)."""
    o: float
    h: float
    l: float  # noqa: E741 - the conventional OHLC name
    c: float


class Series:
    """A ring buffer of (time ms, price) samples of one symbol."""

    def __init__(self, capacity: int) -> None:
        self.times: npt.NDArray[np.int64] = np.zeros(capacity, dtype=np.int64)
        self.prices: npt.NDArray[np.float64] = np.zeros(capacity, dtype=np.float64)
        self.count = 0
        self.last_quote_ms: int | None = None

    def append(self, time_ms: int, price: float) -> None:
        i = self.count % self.times.size
        self.times[i] = time_ms
        self.prices[i] = price
        self.count += 1

    def ordered(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """The samples, oldest first (copies)."""
        size = self.times.size
        if self.count <= size:
            return self.times[: self.count].copy(), self.prices[: self.count].copy()
        head = self.count % size
        return (
            np.concatenate((self.times[head:], self.times[:head])),
            np.concatenate((self.prices[head:], self.prices[:head])),
        )


class CandleBook:
    """Per-symbol samples of the price board, and candles built from them."""

    def __init__(self, capacity: int = 86_400) -> None:
        self.capacity = capacity
        self.series: dict[str, Series] = {}
        self.samples = 0
        self._scope = trio.CancelScope()

    def sample(self, board: _Board, now_ms: int) -> int:
        """Record the bid of every symbol that quoted since the last sample; how many did."""
        taken = 0
        for symbol, (bid, _ask, quote_ms) in board.all().items():
            series = self.series.get(symbol)
            if series is None:
                series = self.series[symbol] = Series(self.capacity)
            if series.last_quote_ms == quote_ms:
                continue
            series.last_quote_ms = quote_ms
            series.append(now_ms, bid)
            taken += 1
        self.samples += taken
        return taken

    def candles(self, symbol: str, interval_s: int, limit: int) -> list[Candle]:
        """Candles of the last ``limit`` intervals of ``interval_s`` seconds, oldest first
        (an interval without samples has no candle, so there may be fewer)."""
        series = self.series.get(symbol)
        if series is None or series.count == 0 or limit <= 0:
            return []
        interval = interval_s * 1000
        times, prices = series.ordered()
        first_bucket = times[-1] // interval - (limit - 1)
        keep = times >= first_bucket * interval
        times, prices = times[keep], prices[keep]
        buckets = times // interval
        starts = np.concatenate(([0], np.flatnonzero(np.diff(buckets)) + 1))
        ends = np.concatenate((starts[1:], [buckets.size])) - 1
        highs = np.maximum.reduceat(prices, starts)
        lows = np.minimum.reduceat(prices, starts)
        return [
            Candle(int(b) * interval, float(o), float(h), float(lo), float(c))
            for b, o, h, lo, c in zip(
                buckets[starts], prices[starts], highs, lows, prices[ends], strict=True
            )
        ]

    def closes(self, symbol: str, interval_s: int, limit: int) -> list[float]:
        """Closing prices of the last ``limit`` candles (for indicators such as the RSI)."""
        return [c.c for c in self.candles(symbol, interval_s, limit)]

    async def run(self, board: _Board, clock: _Clock, period_s: float = 1.0) -> None:
        """Sample ``board`` every ``period_s`` until :meth:`stop`."""
        with self._scope:
            while True:
                self.sample(board, clock.now_ms())
                await trio.sleep(period_s)

    def stop(self) -> None:
        self._scope.cancel()
