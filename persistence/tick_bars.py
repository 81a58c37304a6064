"""1 s bars of the tick streams in Postgres: the last resort of a cluster replay.

Cluster mode only (single-node mode never builds one). Whoever appends quotes to the Redis
streams (:class:`~persistence.tick_streams.TickAppender`) knows every quote it stamped and
folds each into its bar: per symbol per second of the stream id, the min and max of bid and
ask and the first and last sequence number. :class:`TickBarStore` keeps the open bars in
memory and writes them in batches (``INSERT ... ON CONFLICT DO UPDATE`` with LEAST/GREATEST,
so the bars of one second written by several nodes, or by one node in several flushes, merge
into one row). Rows are written sorted by key, so two nodes' batches lock rows in the same
order and cannot deadlock. Bars older than ``keep_s`` are deleted by :meth:`TickBarStore.trim`.

When Postgres is down the pending bars stay in memory (merged per key, so a long outage costs
one entry per symbol-second) up to ``max_pending``; past it the oldest are dropped and
counted. A bar lost that way only matters if a replay later needs it, and the replay then
reports its seqs as missing and alerts.

**How a bar is replayed** (:func:`bar_path`). A bar has no order inside its second: it says
how low and how high bid and ask went, not in which order. It is replayed as at most two
synthetic quotes, ``low = (bid_min, ask_min)`` and ``high = (bid_max, ask_max)`` (both valid
quotes: ``bid_min <= ask_min`` and ``bid_max <= ask_max`` hold because every real quote had
``bid <= ask``). The low quote touches every long stop-loss and short take-profit the second
reached, the high quote every long take-profit and short stop-loss: no touch is lost.

The order of the two is the tie rule. "Adverse first" (the stop-loss before the take-profit,
a conservative broker backtest's rule) cannot be one path: the adverse side of a long is the
low, of a short the high, and one symbol's book holds both. So the path goes to the extreme
nearest the last known price first (the MetaTrader tester's rule for OHLC bars: a price
rarely travels the long way round within one second), and to the low first when both are
equally near or no price is known. A position whose SL and TP both lie inside one bar's range
therefore closes at whichever the path meets first, which may not be what the market did:
every replay that used bars raises an alert, and the quotes carry ``synthetic=True`` so the
engine can apply a per-position rule (adverse first) where it prefers. A bar is kept per
second, not per seq: one that only partly lies in the replayed range is replayed with its
whole second's bounds, which may include prices of quotes just outside the range (already
processed, or about to be): conservative, a touch is never missed, at worst met early.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import structlog
import trio

from persistence.db import Database
from protocol.errors import StorageError

__all__ = ["BarPoint", "TickBar", "TickBarStore", "bar_path"]

_log = structlog.get_logger(component="tick_bars")  # lazy: configured at first use

_UPSERT = """
INSERT INTO tick_bars AS b
    (symbol, second, first_seq, last_seq, bid_min, bid_max, ask_min, ask_max)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (symbol, second) DO UPDATE SET
    first_seq = LEAST(b.first_seq, EXCLUDED.first_seq),
    last_seq = GREATEST(b.last_seq, EXCLUDED.last_seq),
    bid_min = LEAST(b.bid_min, EXCLUDED.bid_min),
    bid_max = GREATEST(b.bid_max, EXCLUDED.bid_max),
    ask_min = LEAST(b.ask_min, EXCLUDED.ask_min),
    ask_max = GREATEST(b.ask_max, EXCLUDED.ask_max)
"""

_READ = """
SELECT symbol, second, first_seq, last_seq, bid_min, bid_max, ask_min, ask_max
FROM tick_bars
WHERE symbol = $1 AND last_seq > $2 AND first_seq <= $3
ORDER BY first_seq
"""


class TickBar(msgspec.Struct, frozen=True, kw_only=True):
    """One symbol's quotes of one second of stream ids, as bounds (a row of ``tick_bars``)."""

    symbol: str
    second: int
    """Unix second of the quotes' stream ids (Redis's clock)."""
    first_seq: int
    last_seq: int
    bid_min: float
    bid_max: float
    ask_min: float
    ask_max: float

    def merged(self, other: TickBar) -> TickBar:
        """Both bars' quotes in one bar (same symbol and second)."""
        return TickBar(
            symbol=self.symbol,
            second=self.second,
            first_seq=min(self.first_seq, other.first_seq),
            last_seq=max(self.last_seq, other.last_seq),
            bid_min=min(self.bid_min, other.bid_min),
            bid_max=max(self.bid_max, other.bid_max),
            ask_min=min(self.ask_min, other.ask_min),
            ask_max=max(self.ask_max, other.ask_max),
        )


class BarPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One synthetic quote of a replayed bar (see :func:`bar_path`)."""

    seq: int
    bid: float
    ask: float
    time_ms: int


def bar_path(bar: TickBar, lo: int, hi: int, last_mid: float | None) -> list[BarPoint]:
    """The synthetic quotes that replay ``bar`` for the seqs ``[lo, hi]`` it covers.

    ``[lo, hi]`` is the bar's seq range clipped to what the replay needs. A bar of one quote
    (``first_seq == last_seq``) is that quote, exactly. Otherwise the low and high quotes in
    the order of the module's tie rule: nearest to ``last_mid`` first, the low first on a tie
    or when ``last_mid`` is None. The first carries seq ``lo`` and the second's time, the
    second seq ``hi`` and the last millisecond of the second (both ``lo`` when ``lo == hi``).
    """
    start_ms = bar.second * 1000
    low = (bar.bid_min, bar.ask_min)
    high = (bar.bid_max, bar.ask_max)
    if bar.first_seq == bar.last_seq or low == high:
        return [BarPoint(seq=lo, bid=low[0], ask=low[1], time_ms=start_ms)]
    first, second = low, high
    if last_mid is not None:
        to_low = abs(last_mid - (low[0] + low[1]) / 2)
        to_high = abs((high[0] + high[1]) / 2 - last_mid)
        if to_high < to_low:
            first, second = high, low
    return [
        BarPoint(seq=lo, bid=first[0], ask=first[1], time_ms=start_ms),
        BarPoint(seq=hi, bid=second[0], ask=second[1], time_ms=start_ms + 999),
    ]


def _wall_clock_s() -> int:
    return int(time.time())


class TickBarStore:
    """Pending bars in memory, written to ``tick_bars`` in batches; read back for replays.

    Attributes:
        written_total: bar rows written (a counter; a row merged twice counts twice).
        dropped_total: pending bars dropped past ``max_pending`` while Postgres was down.
        flush_failures: flushes that failed (Postgres unavailable).
        trimmed_total: rows deleted by :meth:`trim`.
    """

    def __init__(
        self,
        db: Database,
        *,
        keep_s: int = 2 * 86_400,
        max_pending: int = 100_000,
        clock_s: Callable[[], int] = _wall_clock_s,
    ) -> None:
        self.db = db
        self.keep_s = keep_s
        self.max_pending = max_pending
        self._clock_s = clock_s
        self._pending: dict[tuple[str, int], TickBar] = {}
        self.written_total = 0
        self.dropped_total = 0
        self.flush_failures = 0
        self.trimmed_total = 0

    @property
    def pending(self) -> int:
        """Bars waiting to be written (a gauge)."""
        return len(self._pending)

    def add(self, symbol: str, second: int, seq: int, bid: float, ask: float) -> None:
        """Fold one stamped quote into its bar (no I/O)."""
        bar = TickBar(
            symbol=symbol,
            second=second,
            first_seq=seq,
            last_seq=seq,
            bid_min=bid,
            bid_max=bid,
            ask_min=ask,
            ask_max=ask,
        )
        self._put(bar)

    def _put(self, bar: TickBar) -> None:
        key = (bar.symbol, bar.second)
        known = self._pending.get(key)
        if known is not None:
            self._pending[key] = known.merged(bar)
            return
        self._pending[key] = bar
        while len(self._pending) > self.max_pending:
            # Dicts keep insertion order: the first key is the oldest pending bar.
            del self._pending[next(iter(self._pending))]
            self.dropped_total += 1

    async def flush(self) -> int:
        """Write every pending bar (one batch); return how many.

        Raises:
            StorageError: Postgres is unavailable; the bars stay pending (merged with any
                added meanwhile) for the next flush.
        """
        if not self._pending:
            return 0
        batch = [self._pending[key] for key in sorted(self._pending)]
        self._pending = {}
        rows = [
            (
                b.symbol,
                b.second,
                b.first_seq,
                b.last_seq,
                b.bid_min,
                b.bid_max,
                b.ask_min,
                b.ask_max,
            )
            for b in batch
        ]
        try:
            await self.db.executemany(_UPSERT, rows)
        except StorageError:
            self.flush_failures += 1
            for bar in batch:
                self._put(bar)
            raise
        self.written_total += len(rows)
        return len(rows)

    async def trim(self) -> int:
        """Delete bars older than ``keep_s``; return how many.

        Raises:
            StorageError: Postgres is unavailable.
        """
        cutoff = self._clock_s() - self.keep_s
        status = await self.db.execute("DELETE FROM tick_bars WHERE second < $1", cutoff)
        deleted = int(status.rsplit(" ", 1)[-1])
        self.trimmed_total += deleted
        return deleted

    async def read(self, symbol: str, after_seq: int, upto_seq: int) -> list[TickBar]:
        """The bars of ``symbol`` holding any seq in ``(after_seq, upto_seq]``, by first seq.

        Raises:
            StorageError: Postgres is unavailable.
        """
        records = await self.db.fetch(_READ, symbol, after_seq, upto_seq)
        return [TickBar(**dict(record)) for record in records]

    async def run(
        self,
        *,
        flush_interval_s: float = 1.0,
        trim_interval_s: float = 3_600.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Flush every ``flush_interval_s`` and trim every ``trim_interval_s``, until cancelled.

        Postgres trouble is logged and retried at the next interval, never raised.
        """
        next_trim = trio.current_time()
        task_status.started()
        while True:
            await trio.sleep(flush_interval_s)
            try:
                await self.flush()
                if trio.current_time() >= next_trim:
                    next_trim = trio.current_time() + trim_interval_s
                    await self.trim()
            except StorageError as exc:
                _log.warning("tick bars not written", error=repr(exc), pending=self.pending)
