"""Ticks on Redis Streams (cluster mode): one stream per symbol, one contiguous seq per symbol.

Cluster mode only: a single node keeps today's in-process quote path with no Redis hop, and
never builds anything here. In a cluster every feed appends its quotes with
:meth:`TickAppender.append` and every node reads them back with
:class:`~persistence.tick_reader.StreamReader`; a quote is processed only once it has its
stream id, so no node acts on a quote the others never see.

Keys (``prefix`` defaults to ``tripwire:``)::

    <prefix>ticks:<symbol>     the stream; entry fields  s = seq, q = msgpack Quote
    <prefix>tickseq:<symbol>   the symbol's last seq (a counter)

**Sequence numbers.** One Lua script does, for each quote of a batch, ``INCR`` of the
symbol's counter and ``XADD`` of the entry carrying it: atomic, so the seqs of a symbol are
contiguous in stream order whoever appends, and a reader that sees seq n+2 after n knows
exactly that n+1 is missing. A batch is one ``EVALSHA`` (one round trip; ``NOSCRIPT`` after a
Redis restart costs one ``SCRIPT LOAD`` once). A counter that does not exist starts at Redis's
clock in microseconds (``TIME`` ms x 1000): after a Redis that lost its memory restarts, the
new seqs stay above every seq issued before (unless more than a million quotes a second of one
symbol were appended since the previous start), so checkpoints never meet a reused seq. The
jump reads as one gap to every reader, which replays it (bars) and alerts: Redis cannot tell
it whether anything was lost.

**Stream ids** are ``ms-seq`` strings: compare them only as integer tuples
(:func:`parse_stream_id`); ``"9-0" > "10-0"`` as strings.

**Trimming by time.** Every ``XADD`` carries ``MINID ~ <now_ms - keep_ms>``, ``now_ms`` from
Redis's clock (the clock of the ids). ``~`` lets Redis drop whole macro nodes only (cheap,
keeps a little more). ``keep_ms`` must cover the lease, plus the recovery of a claim, plus the
largest reader lag: a claimer replays from the stream what the previous owner had not
processed; what was trimmed comes from the 1 s bars, approximately (see
:mod:`persistence.tick_bars`).

**From the feed's own call.** :meth:`TickAppender.append_nowait` appends without the event
loop when nothing else is in the way (no backlog, no outage, the connection free): the script is
sent at once and its reply awaited blocked for at most ``wait_s`` (``persistence.resp``). The
reply in time, the quotes are stamped in the caller's own call, with no task switch and no trip
through the scheduler; late, the caller takes them with :meth:`TickAppender.finish`; anything
else, nothing was sent and the caller uses :meth:`TickAppender.append`.

**Redis down.** :meth:`TickAppender.append` never drops a quote silently. Quotes that cannot
be appended wait in a bounded in-memory backlog, in arrival order (so in per-symbol order),
and go out first, in order, on the next attempt (paced by ``retry_after_s``; :meth:`run`
retries on its own). The outage raises one alert; past ``backlog_limit`` the oldest quotes are
dropped, counted, and alerted once per outage; the recovery raises an info alert with the
counts. An append whose reply was lost (a timeout after Redis ran the script) is retried and
its quotes appear twice, with two seqs: at least once, never lost.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio

from persistence.redis_link import Degradation, RedisLink
from persistence.resp import RespConnection
from persistence.tick_bars import TickBarStore
from protocol.common import Alert, AlertLevel
from protocol.errors import RedisReplyError, StorageError
from protocol.feed import Quote

__all__ = [
    "AppendInFlight",
    "AppenderStats",
    "Replayed",
    "Stamped",
    "StreamId",
    "TickAppender",
    "TickKeys",
    "format_stream_id",
    "parse_stream_id",
]

StreamId = tuple[int, int]
"""A Redis stream id as ``(milliseconds, sequence)``: compare these, never the strings."""

FIELD_SEQ = b"s"
FIELD_QUOTE = b"q"

AlertSink = Callable[[Alert], None]


def parse_stream_id(raw: bytes | str) -> StreamId:
    """``b"1700000000000-3"`` -> ``(1700000000000, 3)``.

    Raises:
        ValueError: not an ``ms-seq`` id.
    """
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_stream_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class Stamped(msgspec.Struct, frozen=True, kw_only=True):
    """A quote with its place in its symbol's stream."""

    symbol: str
    seq: int
    """Contiguous per symbol: the checkpoint a partition records."""
    stream_id: StreamId
    quote: Quote
    synthetic: bool = False
    """True for a quote replayed from a 1 s bar (prices are the bar's bounds, the order is the
    tie rule's; ``stream_id`` is then ``(bar second in ms, 0)``, not a real entry)."""


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay found for ``(after_seq, upto_seq]``, with where each part came from."""

    quotes: list[Stamped]
    """In seq order; a bar's synthetic quotes may share a seq when only one seq was needed."""
    from_ring: int
    from_stream: int
    from_bars: int
    """Synthetic quotes (not seqs) made from bars."""
    missing: list[tuple[int, int]]
    """Inclusive seq ranges nothing covered: trimmed and without bars, or never issued (the
    jump of a Redis that restarted empty)."""


class AppenderStats(msgspec.Struct, frozen=True, kw_only=True):
    appended: int
    """Quotes stamped (a counter; swept quotes included)."""
    backlog: int
    """Quotes waiting for Redis (a gauge)."""
    swept: int
    """Quotes stamped after waiting in the backlog (a counter)."""
    dropped: int
    """Quotes dropped from a full backlog (a counter): never stamped, seen by nobody."""
    outages: int
    script_calls: int
    """Round trips to Redis that appended (a counter)."""


class AppendInFlight(msgspec.Struct, frozen=True):
    """An append sent by :meth:`TickAppender.append_nowait` whose reply was not in yet: the
    appender is busy until :meth:`TickAppender.finish` takes it."""

    quotes: list[Quote]


class TickKeys:
    """The Redis key names of one deployment (a prefix, so tests and clusters can share)."""

    def __init__(self, prefix: str = "tripwire:") -> None:
        self.prefix = prefix
        self.stream_prefix = f"{prefix}ticks:"

    def stream(self, symbol: str) -> str:
        return self.stream_prefix + symbol

    def seq(self, symbol: str) -> str:
        return f"{self.prefix}tickseq:{symbol}"


# KEYS: seq key and stream key of each quote, in pairs. ARGV[1]: keep_ms; ARGV[1 + i]: quote i.
# Numbers go back to Redis through string.format: Lua 5.1 would print 1.7e15 as "1.7e+15".
_APPEND_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minid = now_ms - tonumber(ARGV[1])
if minid < 0 then minid = 0 end
minid = string.format('%.0f', minid)
local out = {}
for i = 1, #ARGV - 1 do
  local seq_key = KEYS[2 * i - 1]
  if redis.call('EXISTS', seq_key) == 0 then
    redis.call('SET', seq_key, string.format('%.0f', now_ms * 1000))
  end
  local seq = redis.call('INCR', seq_key)
  local id = redis.call('XADD', KEYS[2 * i], 'MINID', '~', minid, '*',
                        's', string.format('%.0f', seq), 'q', ARGV[i + 1])
  out[i] = {seq, id}
end
return out
"""
_APPEND_SHA = hashlib.sha1(_APPEND_LUA.encode()).hexdigest()


class TickAppender:
    """Stamps quotes onto the per-symbol streams (see the module docstring).

    The script goes out on a connection of the appender's own (:class:`RespConnection`: trio
    sockets, no asyncio bridge), one ``EVALSHA`` per batch; close it with :meth:`aclose`.

    Args:
        link: the shared Redis link (its URL and operation timeout are the connection's).
        keep_ms: how long the streams keep entries: lease + recovery + largest reader lag.
        bars: where each stamped quote's 1 s bar goes (None: no bars; replays then cannot fall
            back past the stream).
        backlog_limit: quotes held while Redis is down, at most.
        max_batch: quotes per script call (a bigger batch is split, so one script never holds
            Redis for long; a batch up to this size is one round trip).
        on_alert: called with each alert (outage, overflow, recovery).
        retry_after_s: pacing of attempts while Redis is down.
        prefix: key prefix (:class:`TickKeys`).
        clock_ms: wall clock for alert times.
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        keep_ms: int,
        bars: TickBarStore | None = None,
        backlog_limit: int = 100_000,
        max_batch: int = 1_000,
        on_alert: AlertSink | None = None,
        retry_after_s: float = 1.0,
        prefix: str = "tripwire:",
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if keep_ms <= 0 or backlog_limit <= 0 or max_batch <= 0:
            raise ValueError("keep_ms, backlog_limit and max_batch must be positive")
        self.link = link
        self.conn = RespConnection(
            link.url, op_timeout_s=link.op_timeout_s, client_name="tripwire-appender"
        )
        self.keep_ms = keep_ms
        self.bars = bars
        self.backlog_limit = backlog_limit
        self.max_batch = max_batch
        self.keys = TickKeys(prefix)
        self.state = Degradation("tick_streams", retry_after_s)
        self._on_alert = on_alert
        self._clock_ms = clock_ms
        self._encoder = msgspec.msgpack.Encoder()
        # Arrival order; the first ``_held`` quotes have waited through a failed attempt.
        self._backlog: deque[Quote] = deque()
        self._backlog_added = trio.Event()  # wakes the sweeping task (idle without a backlog)
        self._held = 0
        # FIFO: appends of one node reach Redis in call order. A semaphore, not a Lock: an
        # append begun in one task (append_nowait) may be finished in another (finish).
        self._lock = trio.Semaphore(1)
        self._overflow_alerted = False
        self._outage_from: tuple[int, int] | None = None  # (swept, dropped) when it began
        self.appended_total = 0
        self.swept_total = 0
        self.dropped_total = 0
        self.script_calls = 0

    def stats(self) -> AppenderStats:
        return AppenderStats(
            appended=self.appended_total,
            backlog=len(self._backlog),
            swept=self.swept_total,
            dropped=self.dropped_total,
            outages=self.state.outages_total,
            script_calls=self.script_calls,
        )

    async def aclose(self) -> None:
        """Close the appender's connection (quotes still in the backlog stay there)."""
        await self.conn.aclose()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    async def append(self, quotes: Sequence[Quote]) -> list[Stamped]:
        """Stamp ``quotes`` (after any backlog, in order); return what was stamped now.

        The result holds the backlog's quotes swept by this call, then ``quotes``, each with
        its seq and stream id; quotes Redis could not take stay in the backlog and are left
        out (they come back from a later call, or from :meth:`run`). Never raises for Redis.
        """
        try:  # uncontended (one append at a time per node), no trip through the scheduler
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()
        try:
            self._backlog.extend(quotes)
            self._bound_backlog()
            return await self._drain()
        finally:
            self._lock.release()

    def append_nowait(
        self, quotes: list[Quote], wait_s: float
    ) -> list[Stamped] | AppendInFlight | None:
        """Stamp ``quotes`` from the caller's own call (see the module docstring, "From the
        feed's own call"): what was stamped; an :class:`AppendInFlight` to hand to
        :meth:`finish` (the appender is busy until then); or None: nothing was done (a
        backlog, an outage, the connection busy or not up), use :meth:`append`. Redis failing
        here puts the quotes in the backlog, as :meth:`append` does (then ``[]``)."""
        if self._backlog or not 0 < len(quotes) <= self.max_batch or not self.state.should_try():
            return None
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            return None
        chunk = quotes  # the caller's own list: kept as is (in flight, in the backlog)
        try:
            if not self.conn.send_now("EVALSHA", *self._script_args(chunk)):
                self._lock.release()
                return None
            answered, reply = self.conn.reply_within(wait_s)
        except StorageError as exc:  # RedisReplyError included (NOSCRIPT: append runs EVAL)
            self._backlog.extend(chunk)
            self._bound_backlog()
            self._outage_or_retry(exc)
            self._lock.release()
            return []
        if not answered:
            return AppendInFlight(chunk)  # the lock stays taken: finish() releases it
        self._lock.release()
        done = self._stamped(chunk, reply)
        self.appended_total += len(done)
        return done

    async def finish(self, flight: AppendInFlight) -> list[Stamped]:
        """The quotes of an append :meth:`append_nowait` left in flight, stamped (``[]``: Redis
        failed meanwhile, and they wait in the backlog)."""
        try:
            reply = await self.conn.finish()
        except StorageError as exc:
            self._backlog.extendleft(reversed(flight.quotes))  # ahead of any quotes since
            self._bound_backlog()
            self._outage_or_retry(exc)
            return []
        finally:
            self._lock.release()
        done = self._stamped(flight.quotes, reply)
        self.appended_total += len(done)
        return done

    def _outage_or_retry(self, exc: StorageError) -> None:
        """A NOSCRIPT reply is no outage: the next :meth:`append` loads the script again."""
        if not exc.details.get("reply", "").startswith("NOSCRIPT"):
            self._outage(exc)

    async def sweep(self) -> list[Stamped]:
        """Try to stamp the backlog now (if the pacing allows); return what was stamped."""
        async with self._lock:
            return await self._drain()

    async def run(
        self,
        *,
        interval_s: float = 0.2,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sweep the backlog while there is one, every ``interval_s``, until cancelled.
        Without a backlog it sleeps until quotes go into one: no wake-ups on a healthy node."""
        task_status.started()
        while True:
            while not self._backlog:
                self._backlog_added = trio.Event()
                await self._backlog_added.wait()
            await trio.sleep(interval_s)
            if self._backlog:
                await self.sweep()

    def _bound_backlog(self) -> None:
        """After quotes went into the backlog: wake the sweeping task, drop what is over."""
        self._backlog_added.set()
        excess = len(self._backlog) - self.backlog_limit
        if excess <= 0:
            return
        for _ in range(excess):
            self._backlog.popleft()
        self._held = max(0, self._held - excess)
        self.dropped_total += excess
        if not self._overflow_alerted:
            self._overflow_alerted = True
            self._alert(
                "tick_backlog_overflow",
                AlertLevel.CRITICAL,
                f"tick backlog full ({self.backlog_limit} quotes): oldest quotes dropped",
                value=float(self.dropped_total),
            )

    async def _drain(self) -> list[Stamped]:
        stamped: list[Stamped] = []
        if not self._backlog:
            await trio.lowlevel.checkpoint()  # nothing to send: still a checkpoint (trio's rule)
            return stamped
        if not self.state.should_try():
            await trio.lowlevel.checkpoint()
            self.state.served_degraded()
            self._held = len(self._backlog)
            return stamped
        while self._backlog:
            chunk = [self._backlog[i] for i in range(min(self.max_batch, len(self._backlog)))]
            try:
                done = await self._call_script(chunk)
            except StorageError as exc:
                self._outage(exc)
                return stamped
            for _ in chunk:
                self._backlog.popleft()
            swept = min(len(chunk), self._held)
            self._held -= swept
            self.swept_total += swept
            self.appended_total += len(done)
            stamped.extend(done)
        self._recovered()
        return stamped

    def _script_args(self, chunk: list[Quote]) -> list[str | bytes | int]:
        """``EVALSHA``'s arguments for ``chunk``: the sha, the keys, keep_ms, the quotes."""
        keys: list[str] = []
        args: list[bytes | int] = [self.keep_ms]
        for quote in chunk:
            keys += (self.keys.seq(quote.symbol), self.keys.stream(quote.symbol))
            args.append(self._encoder.encode(quote))
        return [_APPEND_SHA, len(keys), *keys, *args]

    async def _call_script(self, chunk: list[Quote]) -> list[Stamped]:
        args = self._script_args(chunk)
        try:
            reply: Any = await self.conn.execute("EVALSHA", *args)
        except RedisReplyError as exc:
            if not exc.details.get("reply", "").startswith("NOSCRIPT"):
                raise
            # Redis restarted (or flushed its scripts): EVAL runs it and caches it again.
            reply = await self.conn.execute("EVAL", _APPEND_LUA, *args[1:])
        return self._stamped(chunk, reply)

    def _stamped(self, chunk: list[Quote], reply: Any) -> list[Stamped]:
        """The script's reply for ``chunk``: each quote with its seq and id (and its bar)."""
        self.script_calls += 1
        self.state.succeeded()
        done: list[Stamped] = []
        for quote, (seq, raw_id) in zip(chunk, reply, strict=True):
            stream_id = parse_stream_id(raw_id)
            done.append(
                Stamped(symbol=quote.symbol, seq=int(seq), stream_id=stream_id, quote=quote)
            )
            if self.bars is not None:
                self.bars.add(quote.symbol, stream_id[0] // 1000, int(seq), quote.bid, quote.ask)
        return done

    def _outage(self, exc: StorageError) -> None:
        self.state.failed(exc, backlog=len(self._backlog))
        self.state.served_degraded()
        self._held = len(self._backlog)
        if self._outage_from is None:
            self._outage_from = (self.swept_total, self.dropped_total)
            self._alert(
                "tick_stream_down",
                AlertLevel.CRITICAL,
                "Redis unavailable: quotes held in the backlog until it returns",
                value=float(len(self._backlog)),
                threshold=float(self.backlog_limit),
            )

    def _recovered(self) -> None:
        if self._outage_from is None:
            return
        swept = self.swept_total - self._outage_from[0]
        dropped = self.dropped_total - self._outage_from[1]
        self._outage_from = None
        self._overflow_alerted = False
        self._alert(
            "tick_stream_recovered",
            AlertLevel.WARNING if dropped else AlertLevel.INFO,
            f"Redis back: {swept} held quotes appended in order, {dropped} dropped",
            value=float(swept),
        )

    def _alert(
        self,
        kind: str,
        level: AlertLevel,
        message: str,
        *,
        value: float | None = None,
        threshold: float | None = None,
    ) -> None:
        if self._on_alert is not None:
            alert = Alert(
                kind=kind,
                level=level,
                message=message,
                time_ms=self._clock_ms(),
                value=value,
                threshold=threshold,
            )
            self._on_alert(alert)
