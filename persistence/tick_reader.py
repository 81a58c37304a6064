"""Reading the tick streams (cluster mode): a reader with its own connection, a ring, replays.

:class:`StreamReader` follows a set of symbols' streams (:mod:`persistence.tick_streams`)
with ``XREAD BLOCK`` on a Redis connection of its own, never the shared pool's, and a short
block (500 ms by default: an idle node wakes twice a second here; entries end a block at
once). The block is never cancelled to change the set of symbols (redis-py
drops a connection whose command is cancelled): :meth:`StreamReader.watch` and
:meth:`StreamReader.unwatch` only record the change, and the read loop applies it between two
reads. Every entry's seq is checked against the last one delivered for its symbol: a jump is a
gap, counted, reported to ``on_gap``, and filled by :meth:`StreamReader.replay` before the
later quote is delivered; an old or repeated seq is skipped. While Redis is down the reader
waits ``retry_after_s`` between attempts and resumes from its cursors.

Every real quote delivered goes into the :class:`TickRing` (the newest ``capacity`` quotes of
each symbol, in memory). :meth:`StreamReader.replay` serves ``(after_seq, upto_seq]`` in
order from the ring first, then from the stream (``XREVRANGE`` pages walking back from the
ring's oldest quote), then from the 1 s bars in Postgres for what the stream no longer has
(synthetic quotes, by the rule in :mod:`persistence.tick_bars`, with an alert).

**Streams this node feeds alone** need no read at all. A blocking ``XREAD`` wakes for every
entry of the streams it follows, this node's own appends included, and the node had those
already: the append's reply carries their seqs (:meth:`StreamReader.appended`). So once
``mute_after`` of this node's appends to a symbol came back with consecutive seqs (no other
node appended in between), the reader *mutes* the symbol: it leaves the ``XREAD`` (between two
reads, as any change), and its cursor follows the node's appends instead, each delivered in
order through the same gap check as a read. Another node's entries on a muted stream are still
found, in order: by the next own append (its seq jumps: the gap is replayed first), or at the
latest by :meth:`StreamReader.poll`, a read without ``BLOCK`` that the node runs every
``poll`` interval on a connection of its choice. Either way the symbol is *unmuted* (back in the
``XREAD``, from its cursor) and not muted again for ``mute_holdoff_s``. A poll reads only the
muted streams no own append moved for a while (``quiet_s``): the appends of a stream fed
steadily check it already. The cost: another node's first quote on a stream muted here waits up
to the poll interval plus ``quiet_s``; the saving: one wake-up of the node, one round trip and one
decode per quote it feeds, and no poll while it feeds them. Muting is off while
:attr:`StreamReader.muting_allowed` is False (the node's claims: their replays count on the
read) and with ``mute_after=0``. A muted symbol that no own append moved for
``unmute_idle_s`` goes back to the read: the node stopped feeding it, and a quiet blocking read
costs nothing while a poll would wake the node every interval.

Reader lag (``lag_ms``) is the wall clock minus the ms of the newest id the last read
delivered, 0 after a read that found nothing new; it includes the clock difference between
this host and Redis.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from typing import Any, NamedTuple

import msgspec
import structlog
import trio

from persistence.redis_link import Degradation, RedisLink
from persistence.resp import RespConnection
from persistence.tick_bars import TickBar, TickBarStore, bar_path
from persistence.tick_streams import (
    FIELD_QUOTE,
    FIELD_SEQ,
    AlertSink,
    Replayed,
    Stamped,
    StreamId,
    TickKeys,
    format_stream_id,
    parse_stream_id,
    wall_clock_ms,
)
from protocol.common import Alert, AlertLevel
from protocol.errors import StorageError
from protocol.feed import Quote

__all__ = ["OwnAppends", "ReaderStats", "StreamReader", "TickRing", "seq_holes"]

_log = structlog.get_logger(component="tick_reader")  # lazy: configured at first use

GapSink = Callable[[str, int, int], None]
"""``on_gap(symbol, last_seq, next_seq)``: seqs ``last_seq + 1 .. next_seq - 1`` were missing."""


def seq_holes(present: Iterable[int], after: int, upto: int) -> list[tuple[int, int]]:
    """The inclusive ranges of ``(after, upto]`` not in ``present`` (sorted ascending)."""
    holes: list[tuple[int, int]] = []
    expected = after + 1
    for seq in present:
        if seq < expected:
            continue
        if seq > upto:
            break
        if seq > expected:
            holes.append((expected, seq - 1))
        expected = seq + 1
    if expected <= upto:
        holes.append((expected, upto))
    return holes


class TickRing:
    """The newest ``capacity`` real quotes of each symbol, in seq order."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._by_symbol: dict[str, deque[Stamped]] = {}

    def add(self, stamped: Stamped) -> None:
        """Keep ``stamped`` (synthetic quotes and seqs already held are ignored)."""
        if stamped.synthetic:
            return
        ring = self._by_symbol.get(stamped.symbol)
        if ring is None:
            ring = self._by_symbol[stamped.symbol] = deque(maxlen=self.capacity)
        if not ring or ring[-1].seq < stamped.seq:
            ring.append(stamped)
            return
        # An older seq (a gap filled late): rare, so a linear insert is fine.
        seqs = [s.seq for s in ring]
        at = bisect.bisect_left(seqs, stamped.seq)
        if at < len(seqs) and seqs[at] == stamped.seq:
            return
        if len(ring) == self.capacity and at == 0:
            return  # older than everything a full ring keeps
        if len(ring) == self.capacity:
            ring.popleft()
            at -= 1
        ring.insert(at, stamped)

    def newest(self, symbol: str) -> Stamped | None:
        ring = self._by_symbol.get(symbol)
        return ring[-1] if ring else None

    def between(self, symbol: str, after_seq: int, upto_seq: int) -> list[Stamped]:
        """The quotes held with ``after_seq < seq <= upto_seq``, in seq order."""
        ring = self._by_symbol.get(symbol)
        if not ring or ring[-1].seq <= after_seq or ring[0].seq > upto_seq:
            return []
        found: list[Stamped] = []
        for stamped in reversed(ring):
            if stamped.seq <= after_seq:
                break
            if stamped.seq <= upto_seq:
                found.append(stamped)
        found.reverse()
        return found


class ReaderStats(msgspec.Struct, frozen=True, kw_only=True):
    delivered: int
    gaps_detected: int
    duplicates: int
    decode_errors: int
    replayed_from_ring: int
    replayed_from_stream: int
    replayed_from_bars: int
    missing: int
    """Seqs replays could not find anywhere (a counter). A Redis that restarted empty adds its
    whole seq jump (see :mod:`persistence.tick_streams`): watch the alerts, not the size."""
    lag_ms: int
    degraded: bool
    muted: int
    """Symbols followed through this node's own appends, out of the blocking read (a gauge)."""
    mutes: int
    unmutes: int
    """Muted symbols another node's entries brought back to the read (counters)."""
    polls: int


class OwnAppends(NamedTuple):
    """What :meth:`StreamReader.appended` made of the node's appended quotes."""

    delivered: list[Stamped]
    """Of muted symbols: the reader's delivery, in per-symbol seq order, gaps filled (another
    node's entries ahead of an own one come first)."""
    left: list[Stamped]
    """Of the other symbols: the read brings them (the node may deliver one early where it
    directly follows what it delivered, ``gateway.cluster.DeliveryOrder``)."""


class _Cursor:
    __slots__ = ("key", "last_id", "last_seq", "own_at")

    def __init__(self, key: bytes, last_id: StreamId, last_seq: int | None) -> None:
        self.key = key
        self.last_id = last_id
        self.last_seq = last_seq
        self.own_at = -math.inf
        """The monotonic time an own append last moved it. Used once muted (no poll needed
        soon after); kept while read too, since the appends that mute a stream come before
        the read loop applies the mute."""


class StreamReader:
    """Follows symbols' tick streams on a dedicated connection (see the module docstring).

    Open it with :meth:`open` (its own :class:`~persistence.resp.RespConnection` to
    ``link.url``: trio sockets, no asyncio bridge on the read path), close it with
    :meth:`aclose`.

    Args:
        link: the shared link (replays' ``XREVRANGE`` pages go through its pool).
        conn: the dedicated connection the ``XREAD`` runs on.
        ring: the ring to fill and replay from (a new one of 10,000 per symbol if None).
        bars: the 1 s bars to fall back to (None: what the stream lost is reported missing).
        block_ms: the ``XREAD BLOCK``; also the longest a watch change waits to apply.
        count: entries per stream per read.
        on_gap: called for each gap detected, before it is filled.
        on_alert: called when a replay used bars or found seqs missing.
        retry_after_s: pacing of reads while Redis is down.
        prefix: the key prefix (as the appenders'), page: ``XREVRANGE`` page size.
        mute_after: consecutive own appends of a symbol after which it is muted (0: never).
        mute_holdoff_s: how long a symbol unmuted by another node's entries stays unmuted.
        unmute_idle_s: a muted symbol no own append moved for this long is unmuted by the
            next poll (this node stopped feeding it).
        monotonic: the clock of the hold-off and of the polls' ``quiet_s``.
    """

    def __init__(
        self,
        link: RedisLink,
        conn: RespConnection,
        *,
        ring: TickRing | None = None,
        bars: TickBarStore | None = None,
        block_ms: int = 500,
        count: int = 1_000,
        on_gap: GapSink | None = None,
        on_alert: AlertSink | None = None,
        retry_after_s: float = 0.5,
        prefix: str = "tripwire:",
        page: int = 1_000,
        clock_ms: Callable[[], int] = wall_clock_ms,
        mute_after: int = 50,
        mute_holdoff_s: float = 30.0,
        unmute_idle_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.conn = conn
        self.ring = ring if ring is not None else TickRing()
        self.bars = bars
        self.block_ms = block_ms
        self.unmute_idle_s = unmute_idle_s
        self.count = count
        self.page = page
        self.keys = TickKeys(prefix)
        self.state = Degradation("tick_reader", retry_after_s)
        self._on_gap = on_gap
        self._on_alert = on_alert
        self._clock_ms = clock_ms
        self._decoder = msgspec.msgpack.Decoder(Quote)
        self._cursors: dict[str, _Cursor] = {}
        self._by_key: dict[bytes, str] = {}
        # symbol -> (watch or unwatch, after_seq), applied between two reads
        self._changes: dict[str, tuple[bool, int | None]] = {}
        self._changed = trio.Event()
        self._mute_applied = trio.Event()
        self.mute_after = mute_after
        self.mute_holdoff_s = mute_holdoff_s
        self.muting_allowed = True
        self._monotonic = monotonic
        self._muted: dict[str, _Cursor] = {}
        """symbol -> its cursor, followed through own appends and polls (not in the XREAD)."""
        self._mute_changes: dict[str, bool] = {}
        """symbol -> mute (True) or unmute, applied between two reads."""
        self._streaks: dict[str, tuple[int, int]] = {}
        """symbol -> (seq of the last own append, consecutive own appends up to it)."""
        self._holdoff: dict[str, float] = {}
        self._muted_lock = trio.Lock()
        self.mutes = 0
        self.unmutes = 0
        self.polls = 0
        self.delivered_total = 0
        self.gaps_detected = 0
        self.duplicates = 0
        self.decode_errors = 0
        self.replayed_from_ring = 0
        self.replayed_from_stream = 0
        self.replayed_from_bars = 0
        self.missing_total = 0
        self.lag_ms = 0

    @classmethod
    async def open(cls, link: RedisLink, **options: Any) -> StreamReader:
        """A reader with a connection of its own (it connects at the first read)."""
        conn = RespConnection(
            link.url, op_timeout_s=link.op_timeout_s, client_name="tripwire-reader"
        )
        return cls(link, conn, **options)

    async def aclose(self) -> None:
        await self.conn.aclose()

    def stats(self) -> ReaderStats:
        return ReaderStats(
            delivered=self.delivered_total,
            gaps_detected=self.gaps_detected,
            duplicates=self.duplicates,
            decode_errors=self.decode_errors,
            replayed_from_ring=self.replayed_from_ring,
            replayed_from_stream=self.replayed_from_stream,
            replayed_from_bars=self.replayed_from_bars,
            missing=self.missing_total,
            lag_ms=self.lag_ms,
            degraded=self.state.degraded,
            muted=len(self._muted),
            mutes=self.mutes,
            unmutes=self.unmutes,
            polls=self.polls,
        )

    @property
    def symbols(self) -> set[str]:
        """The symbols followed now, muted ones included (changes not applied yet excluded)."""
        return set(self._cursors) | set(self._muted)

    @property
    def muted(self) -> set[str]:
        """The symbols followed through own appends and polls, out of the blocking read."""
        return set(self._muted)

    async def until_muted(self) -> None:
        """Return once some symbol is muted (at once if one is): what polls wait on."""
        while not self._muted:
            self._mute_applied = trio.Event()
            await self._mute_applied.wait()

    def unmute_all(self) -> None:
        """Put every muted symbol back in the read at the next read (pending mutes dropped)."""
        self._mute_changes = dict.fromkeys(self._muted, False)
        if self._mute_changes:
            self._changed.set()

    def watch(self, symbol: str, after_seq: int | None = None) -> None:
        """Start reading ``symbol`` at the next read: from its newest entry then, or, with
        ``after_seq``, from that seq on (what lies between is replayed first)."""
        self._changes[symbol] = (True, after_seq)
        self._mute_changes.pop(symbol, None)
        self._changed.set()

    def unwatch(self, symbol: str) -> None:
        """Stop reading ``symbol`` at the next read."""
        self._changes[symbol] = (False, None)
        self._mute_changes.pop(symbol, None)
        self._changed.set()

    async def appended(self, batch: list[Stamped], delivered: Mapping[str, int]) -> OwnAppends:
        """This node's quotes as its append returned them (see the module docstring, "Streams
        this node feeds alone"). ``delivered``: the last seq the node has delivered per symbol,
        whoever brought it (what is at or below it is skipped, never counted as a gap).

        The caller serializes this with :meth:`poll` and with the appends themselves, so that
        no poll reads an own entry before this call has seen it.
        """
        try:
            self._muted_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._muted_lock.acquire()
        try:
            out: list[Stamped] = []
            left: list[Stamped] = []
            for stamped in batch:
                cursor = self._own_cursor(stamped, delivered, left)
                if cursor is None or stamped.seq <= (cursor.last_seq or 0):
                    continue
                foreign = cursor.last_seq is not None and stamped.seq > cursor.last_seq + 1
                await self._deliver(cursor, stamped, out)
                if foreign:
                    self._foreign_on_muted(stamped.symbol)
            self.delivered_total += len(out)
            return OwnAppends(out, left)
        finally:
            self._muted_lock.release()

    def appended_nowait(
        self, batch: list[Stamped], delivered: Mapping[str, int]
    ) -> OwnAppends | None:
        """:meth:`appended` without waiting, for the append made from the feed's own call:
        None (nothing done: call :meth:`appended`) when a poll holds the muted streams or a
        muted symbol's seq jumps (another node's entries to replay first)."""
        try:
            self._muted_lock.acquire_nowait()
        except trio.WouldBlock:
            return None
        try:
            muted = self._muted
            lasts: dict[str, int] = {}
            for stamped in batch:
                symbol = stamped.symbol
                cursor = muted.get(symbol)
                if cursor is None or cursor.last_seq is None:
                    continue
                last = lasts.get(symbol) or max(cursor.last_seq, delivered.get(symbol, 0))
                if stamped.seq > last + 1:
                    return None
                lasts[symbol] = max(last, stamped.seq)
            out: list[Stamped] = []
            left: list[Stamped] = []
            for stamped in batch:
                cursor = self._own_cursor(stamped, delivered, left)
                if cursor is None:
                    continue
                if cursor.last_seq is None or stamped.seq > cursor.last_seq:
                    self._take(cursor, stamped, out)
            self.delivered_total += len(out)
            return OwnAppends(out, left)
        finally:
            self._muted_lock.release()

    async def poll(
        self, conn: RespConnection, delivered: Mapping[str, int], quiet_s: float = 0.0
    ) -> list[Stamped]:
        """Read the muted streams once, without blocking, on ``conn``: another node's entries
        there, in order (the symbol is unmuted). Never raises for Redis (the next poll or own
        append finds what this one could not).

        ``quiet_s``: only the streams no own append moved for that long are read. An own
        append finds the entries before it anyway (its seq jumps), so a stream this node
        feeds steadily is never polled; an entry right after the last own append then waits
        up to ``quiet_s`` plus the poll interval."""
        async with self._muted_lock:
            since = self._monotonic() - quiet_s
            cursors = [(s, c) for s, c in self._muted.items() if c.own_at <= since]
            if not cursors:
                return []
            command: list[str | bytes | int] = ["XREAD", "COUNT", self.count, "STREAMS"]
            command += [c.key for _, c in cursors]
            command += [format_stream_id(c.last_id) for _, c in cursors]
            try:
                reply = await conn.execute(*command)
            except StorageError as exc:
                _log.warning("poll of the muted streams failed", error=repr(exc))
                return []
            self.polls += 1
            by_key = {c.key: (symbol, c) for symbol, c in cursors}
            out: list[Stamped] = []
            for raw_key, entries in reply or ():
                symbol, cursor = by_key.get(raw_key, (None, None))
                if symbol is None or cursor is None or self._muted.get(symbol) is not cursor:
                    continue
                self._lift(cursor, symbol, delivered)
                found = len(out)
                for stamped in self._decoded(symbol, cursor, entries):
                    if stamped.seq > (cursor.last_seq or 0):
                        await self._deliver(cursor, stamped, out)
                if len(out) > found:
                    self._foreign_on_muted(symbol)
            idle_since = since + quiet_s - self.unmute_idle_s
            for symbol, cursor in cursors:
                if cursor.own_at <= idle_since and self._muted.get(symbol) is cursor:
                    self._mute_changes.setdefault(symbol, False)  # this node stopped feeding it
                    self._changed.set()
            self.delivered_total += len(out)
            return out

    def _own_cursor(
        self, stamped: Stamped, delivered: Mapping[str, int], left: list[Stamped]
    ) -> _Cursor | None:
        """The muted cursor an own append moves (lifted to what the node delivered), or None:
        the symbol is read, ``stamped`` goes to ``left`` and counts towards muting it."""
        cursor = self._muted.get(stamped.symbol)
        if cursor is None:
            left.append(stamped)
            read = self._cursors.get(stamped.symbol)
            if read is not None:
                read.own_at = self._monotonic()
            self._count_own(stamped)
            return None
        self._lift(cursor, stamped.symbol, delivered)
        cursor.last_id = max(cursor.last_id, stamped.stream_id)
        cursor.own_at = self._monotonic()
        return cursor

    def _lift(self, cursor: _Cursor, symbol: str, delivered: Mapping[str, int]) -> None:
        """What the node delivered (own appends before the mute applied) is behind the cursor."""
        seq = delivered.get(symbol)
        if seq is not None and (cursor.last_seq is None or seq > cursor.last_seq):
            cursor.last_seq = seq

    def _count_own(self, stamped: Stamped) -> None:
        symbol = stamped.symbol
        last, streak = self._streaks.get(symbol, (None, 0))
        streak = streak + 1 if last is not None and stamped.seq == last + 1 else 1
        self._streaks[symbol] = (stamped.seq, streak)
        if (
            self.mute_after
            and streak >= self.mute_after
            and self.muting_allowed
            and symbol in self._cursors
            and symbol not in self._changes
            and symbol not in self._mute_changes
            and self._monotonic() >= self._holdoff.get(symbol, 0.0)
        ):
            self._mute_changes[symbol] = True
            self._changed.set()

    def _foreign_on_muted(self, symbol: str) -> None:
        """Another node appends to ``symbol`` too: back to the read, and stay there a while."""
        self._holdoff[symbol] = self._monotonic() + self.mute_holdoff_s
        self._streaks.pop(symbol, None)
        if self._mute_changes.get(symbol) is not False:
            self._mute_changes[symbol] = False
            self._changed.set()

    async def replay(self, symbol: str, after_seq: int, upto_seq: int | None = None) -> Replayed:
        """Every quote of ``symbol`` with ``after_seq < seq <= upto_seq``, in order.

        ``upto_seq`` None: up to the newest seq known (ring or stream). Sources in turn: the
        ring, the stream, the bars (see :mod:`persistence.tick_bars` for the tie rule); an
        alert when bars were used or seqs are missing. Never raises for Redis or Postgres
        being down: what they would have given is reported missing.
        """
        return await self._replay(symbol, after_seq, upto_seq, before=None)

    async def batches(self) -> AsyncGenerator[list[Stamped], None]:
        """Yield what each read delivered (per-symbol seq order, gaps filled), forever."""
        while True:
            if self._mute_changes:
                await self._apply_mutes()
            if self._changes:
                watched = await self._apply_changes()
                if watched:
                    yield watched
                if self._changes:  # Redis refused: try again after the pacing
                    await trio.sleep_until(self.state.retry_at)
                continue
            if not self._cursors:
                # Nothing to read (none watched, or all muted): every change sets the event,
                # so an idle node does not wake here.
                await self._changed.wait()
                self._changed = trio.Event()
                continue
            if not self.state.should_try():
                await trio.sleep_until(self.state.retry_at)
            out = await self._read_once()
            if out:
                yield out

    async def __aiter__(self) -> AsyncGenerator[Stamped, None]:
        async for batch in self.batches():
            for stamped in batch:
                yield stamped

    # -- the read loop -------------------------------------------------------------------

    async def _apply_mutes(self) -> None:
        async with self._muted_lock:
            for symbol, mute in list(self._mute_changes.items()):
                del self._mute_changes[symbol]
                if mute:
                    cursor = self._cursors.pop(symbol, None)
                    if cursor is None:
                        continue  # unwatched meanwhile
                    del self._by_key[cursor.key]
                    self._muted[symbol] = cursor
                    self._mute_applied.set()
                    self.mutes += 1
                    _log.info("stream muted: this node feeds it alone", symbol=symbol)
                else:
                    cursor = self._muted.pop(symbol, None)
                    if cursor is None:
                        continue
                    self._cursors[symbol] = cursor
                    self._by_key[cursor.key] = symbol
                    self.unmutes += 1
                    _log.info(
                        "stream unmuted: another node appends to it, or this node stopped",
                        symbol=symbol,
                    )

    async def _apply_changes(self) -> list[Stamped]:
        delivered: list[Stamped] = []
        for symbol, (watching, after) in list(self._changes.items()):
            self._muted.pop(symbol, None)  # a (re)watch starts in the read
            if not watching:
                cursor = self._cursors.pop(symbol, None)
                if cursor is not None:
                    del self._by_key[cursor.key]
                del self._changes[symbol]
                continue
            try:
                newest = await self._newest(symbol)
            except StorageError as exc:
                self.state.failed(exc, symbol=symbol)
                return delivered
            key = self.keys.stream(symbol).encode()
            last_id, last_seq = newest if newest is not None else ((0, 0), None)
            if after is not None:
                if last_seq is not None and after < last_seq:
                    replayed = await self._replay(symbol, after, last_seq, before=None)
                    delivered += replayed.quotes
                last_seq = after if last_seq is None else max(after, last_seq)
            self._cursors[symbol] = _Cursor(key, last_id, last_seq)
            self._by_key[key] = symbol
            del self._changes[symbol]
        self.delivered_total += len(delivered)
        return delivered

    async def _newest(self, symbol: str) -> tuple[StreamId, int] | None:
        key = self.keys.stream(symbol)
        entries: Any = await self.link.call(lambda r: r.xrevrange(key, count=1))
        for raw_id, fields in entries:
            return parse_stream_id(raw_id), int(fields[FIELD_SEQ])
        return None

    async def _read_once(self) -> list[Stamped]:
        cursors = list(self._cursors.values())
        command: list[str | bytes | int] = ["XREAD", "COUNT", self.count]
        command += ("BLOCK", self.block_ms, "STREAMS")
        command += [c.key for c in cursors]
        command += [format_stream_id(c.last_id) for c in cursors]
        try:
            reply = await self.conn.execute(
                *command, timeout_s=self.block_ms / 1000 + self.link.op_timeout_s
            )
        except StorageError as exc:
            self.state.failed(exc, symbols=len(cursors))
            return []
        self.state.succeeded()
        out: list[Stamped] = []
        newest_ms = 0
        # RESP2: [[key, [[id, [field, value, ...]], ...]], ...], or nil when BLOCK ran out.
        for raw_key, entries in reply or ():
            symbol = self._by_key.get(raw_key)
            cursor = self._cursors.get(symbol) if symbol is not None else None
            if symbol is None or cursor is None:
                continue  # unwatched meanwhile
            for stamped in self._decoded(symbol, cursor, entries):
                await self._deliver(cursor, stamped, out)
            newest_ms = max(newest_ms, cursor.last_id[0])
        self.lag_ms = max(0, self._clock_ms() - newest_ms) if newest_ms else 0
        self.delivered_total += len(out)
        return out

    def _decoded(self, symbol: str, cursor: _Cursor, entries: Any) -> list[Stamped]:
        """One stream's entries of an ``XREAD`` reply, the cursor's id moved past them."""
        found: list[Stamped] = []
        for raw_id, flat in entries:
            stream_id = parse_stream_id(raw_id)
            cursor.last_id = max(cursor.last_id, stream_id)
            # A foreign entry's fields may not pair up: it then fails in _decode, counted.
            fields = dict(zip(flat[::2], flat[1::2], strict=False))
            stamped = self._decode(symbol, stream_id, fields)
            if stamped is not None:
                found.append(stamped)
        return found

    def _decode(self, symbol: str | None, stream_id: StreamId, fields: Any) -> Stamped | None:
        try:
            quote = self._decoder.decode(fields[FIELD_QUOTE])
            seq = int(fields[FIELD_SEQ])
        except (KeyError, ValueError, msgspec.DecodeError):
            self.decode_errors += 1
            return None
        return Stamped(symbol=symbol or quote.symbol, seq=seq, stream_id=stream_id, quote=quote)

    async def _deliver(self, cursor: _Cursor, stamped: Stamped, out: list[Stamped]) -> None:
        last = cursor.last_seq
        if last is not None and stamped.seq <= last:
            self.duplicates += 1
            return
        if last is not None and stamped.seq > last + 1:
            self.gaps_detected += 1
            if self._on_gap is not None:
                self._on_gap(stamped.symbol, last, stamped.seq)
            replayed = await self._replay(
                stamped.symbol, last, stamped.seq - 1, before=stamped.stream_id
            )
            out += replayed.quotes
        self._take(cursor, stamped, out)

    def _take(self, cursor: _Cursor, stamped: Stamped, out: list[Stamped]) -> None:
        """``stamped`` is next on its stream: ring it and deliver it."""
        self.ring.add(stamped)
        out.append(stamped)
        cursor.last_seq = stamped.seq

    # -- replays ---------------------------------------------------------------------------

    async def _replay(
        self, symbol: str, after: int, upto: int | None, *, before: StreamId | None
    ) -> Replayed:
        if upto is None:
            upto = await self._newest_seq(symbol)
            if upto is None:
                return Replayed(quotes=[], from_ring=0, from_stream=0, from_bars=0, missing=[])
        found = {s.seq: s for s in self.ring.between(symbol, after, upto)}
        from_ring = len(found)
        from_stream = 0
        for lo, hi in seq_holes(sorted(found), after, upto):
            upper = found.get(hi + 1)
            bound = upper.stream_id if upper is not None else before
            try:
                entries = await self._stream_range(symbol, lo, hi, bound)
            except StorageError as exc:
                _log.warning("replay: stream unavailable", symbol=symbol, error=repr(exc))
                break
            for stamped in entries:
                found[stamped.seq] = stamped
                self.ring.add(stamped)
            from_stream += len(entries)
        real = [found[seq] for seq in sorted(found)]
        holes = seq_holes((s.seq for s in real), after, upto)
        synthetic, missing = await self._from_bars(symbol, holes, real)
        quotes = sorted(real + synthetic, key=lambda s: s.seq)  # stable: a bar's order kept
        self.replayed_from_ring += from_ring
        self.replayed_from_stream += from_stream
        self.replayed_from_bars += len(synthetic)
        self.missing_total += sum(hi - lo + 1 for lo, hi in missing)
        if synthetic or missing:
            self._alert_replay(symbol, after, upto, len(synthetic), missing)
        return Replayed(
            quotes=quotes,
            from_ring=from_ring,
            from_stream=from_stream,
            from_bars=len(synthetic),
            missing=missing,
        )

    async def _newest_seq(self, symbol: str) -> int | None:
        newest = self.ring.newest(symbol)
        try:
            in_stream = await self._newest(symbol)
        except StorageError:
            in_stream = None
        seqs = [s for s in (newest and newest.seq, in_stream and in_stream[1]) if s]
        return max(seqs) if seqs else None

    async def _stream_range(
        self, symbol: str, lo: int, hi: int, before: StreamId | None
    ) -> list[Stamped]:
        """Entries with ``lo <= seq <= hi``, walking back from ``before`` (exclusive)."""
        key = self.keys.stream(symbol)
        end = "+" if before is None else "(" + format_stream_id(before)
        found: list[Stamped] = []
        page = self.page
        # Seqs fall as ids fall, so each page either reaches below ``lo`` or moves on; the
        # bound only guards against a stream far longer than any keep_ms should allow.
        for _ in range(1_000_000 // page + 1):

            async def fetch(client: Any, end: str = end) -> Any:
                return await client.xrevrange(key, max=end, min="-", count=page)

            entries = await self.link.call(fetch)
            for raw_id, fields in entries:
                stamped = self._decode(symbol, parse_stream_id(raw_id), fields)
                if stamped is None:
                    continue
                if stamped.seq < lo:
                    found.reverse()
                    return found
                if stamped.seq <= hi:
                    found.append(stamped)
            if len(entries) < page:
                break
            end = "(" + entries[-1][0].decode()
        found.reverse()
        return found

    async def _from_bars(
        self, symbol: str, holes: list[tuple[int, int]], real: list[Stamped]
    ) -> tuple[list[Stamped], list[tuple[int, int]]]:
        if not holes or self.bars is None:
            return [], holes
        try:
            bars = await self.bars.read(symbol, holes[0][0] - 1, holes[-1][1])
        except StorageError as exc:
            _log.warning("replay: bars unavailable", symbol=symbol, error=repr(exc))
            return [], holes
        real_seqs = [s.seq for s in real]
        synthetic: list[Stamped] = []
        missing: list[tuple[int, int]] = []
        for lo, hi in holes:
            covered: list[tuple[int, int]] = []
            for bar in bars:
                start, end = max(bar.first_seq, lo), min(bar.last_seq, hi)
                if start > end:
                    continue
                last_mid = self._last_mid(real, real_seqs, synthetic, start)
                synthetic += self._bar_quotes(symbol, bar, start, end, last_mid)
                covered.append((start, end))
            missing += _uncovered(lo, hi, covered)
        return synthetic, missing

    @staticmethod
    def _last_mid(
        real: list[Stamped], real_seqs: list[int], synthetic: list[Stamped], seq: int
    ) -> float | None:
        candidates: list[Stamped] = []
        at = bisect.bisect_left(real_seqs, seq)
        if at:
            candidates.append(real[at - 1])
        if synthetic and synthetic[-1].seq <= seq:
            candidates.append(synthetic[-1])
        if not candidates:
            return None
        last = max(candidates, key=lambda s: s.seq)
        return (last.quote.bid + last.quote.ask) / 2

    @staticmethod
    def _bar_quotes(
        symbol: str, bar: TickBar, lo: int, hi: int, last_mid: float | None
    ) -> list[Stamped]:
        return [
            Stamped(
                symbol=symbol,
                seq=point.seq,
                stream_id=(bar.second * 1000, 0),
                quote=Quote(symbol=symbol, bid=point.bid, ask=point.ask, time_ms=point.time_ms),
                synthetic=True,
            )
            for point in bar_path(bar, lo, hi, last_mid)
        ]

    def _alert_replay(
        self, symbol: str, after: int, upto: int, from_bars: int, missing: list[tuple[int, int]]
    ) -> None:
        if self._on_alert is None:
            return
        lost = sum(hi - lo + 1 for lo, hi in missing)
        if missing:
            kind, level = "tick_replay_missing", AlertLevel.CRITICAL
            message = f"replay of seqs {after + 1}..{upto}: {lost} seqs found nowhere"
        else:
            kind, level = "tick_replay_bars", AlertLevel.WARNING
            message = (
                f"replay of seqs {after + 1}..{upto} used 1 s bars ({from_bars} synthetic "
                "quotes): order inside a second is the tie rule's, not the market's"
            )
        alert = Alert(
            kind=kind,
            level=level,
            message=message,
            time_ms=self._clock_ms(),
            symbol=symbol,
            value=float(lost or from_bars),
        )
        self._on_alert(alert)


def _uncovered(lo: int, hi: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[lo, hi]`` outside every inclusive range of ``covered``."""
    out: list[tuple[int, int]] = []
    start = lo
    for a, b in sorted(covered):
        if a > start:
            out.append((start, a - 1))
        start = max(start, b + 1)
    if start <= hi:
        out.append((start, hi))
    return out
