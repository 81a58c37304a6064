"""The trigger book: every armed SL/TP level of one symbol, and which ones a quote crosses.

Semantics (DESIGN.md, "Trigger semantics")
------------------------------------------
* A long (BUY) is watched on the bid: SL fires when ``bid <= SL``, TP when ``bid >= TP``.
  A short (SELL) is watched on the ask: SL fires when ``ask >= SL``, TP when ``ask <= TP``.
* A level already crossed by the last quote when it is registered (or modified) fires at once.
* A gap fires at the first quote past the level; the trigger records that quote's price (the
  price a market close will meet), not the level.
* A position fires at most once: when one of its levels fires, the position leaves the book.
  Should both of its levels be crossed by one quote (only possible with inverted levels), the
  SL wins.

Order of the triggers one quote fires
-------------------------------------
SL before TP; within a kind, longs before shorts; within a side, in the order the levels are
crossed (long SL: highest level first; short SL: lowest; long TP: lowest; short TP: highest);
levels at the same price in the order they were armed (price-time priority; a modification
re-arms). ``tests/engine/test_triggers_oracle.py`` checks this against brute force.

Cost
----
Four heaps per symbol (long SL, short SL, long TP, short TP) hold ``(key, seq, position_id)``
with lazy deletion: a modification or cancellation only forgets the entry's sequence number, and
a heap item whose sequence number is no longer current is skipped when it surfaces. A quote that
crosses nothing costs four comparisons with the heaps' nearest levels (copied out of the top items
whenever a heap changes), whatever the number of positions; each fired trigger costs one
``heappop``. Stale items are compacted away when they outnumber the live ones.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from collections.abc import Iterable
from operator import itemgetter
from typing import Any, NamedTuple

from protocol.common import Side
from protocol.errors import UsageError

__all__ = ["KEEP", "Trigger", "TriggerBook", "TriggerKind"]

_KEY, _SEQ = itemgetter(0), itemgetter(1)


class TriggerKind(enum.IntEnum):
    SL = 0
    TP = 1


class Trigger(NamedTuple):
    """A level a quote crossed. ``price`` is the quote's bid (long) or ask (short); ``owner``
    is what the position was registered with (its user, for the symbol's core)."""

    position_id: str
    kind: TriggerKind
    side: Side
    level: int
    price: int
    owner: str | None = None


class _Keep:
    """Sentinel: "leave this level as it is" (``None`` means "remove the level")."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()

# Entry layout, a small list per position (cheaper in memory than an object with slots). The
# owner rides along so that a fired trigger names it: the symbol core keeps no second table
# of owners in step with this one.
_IS_SELL, _SL, _TP, _SL_SEQ, _TP_SEQ, _OWNER = range(6)
_COMPACT_MIN = 4096
_BULK_AFTER = 32  # least pops before a crossed heap is drained in bulk (TriggerBook._drain)


class TriggerBook:
    """The armed SL/TP levels of one symbol, in integer points."""

    __slots__ = (
        "_entries",
        "_heaps",
        "_pending",
        "_seq",
        "_stale",
        "_top_long_sl",
        "_top_long_tp",
        "_top_short_sl",
        "_top_short_tp",
        "ask",
        "bid",
        "symbol",
    )

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bid: int | None = None
        self.ask: int | None = None
        self._entries: dict[str, list[Any]] = {}
        # 0: long SL (max-heap, key -level), 1: short SL (min), 2: long TP (min),
        # 3: short TP (max, key -level). Keys are negated where the crossing order is descending.
        self._heaps: tuple[list[tuple[int, int, str]], ...] = ([], [], [], [])
        self._seq = 0
        self._stale = 0
        # Crossed levels taken out of their heaps but not fired yet (a storm fired in steps,
        # see on_quote): [items, next index, seq slot, kind, side, negated, price] per heap.
        self._pending: deque[list[Any]] = deque()
        # The nearest level of each heap, copied out of its top item (see _refresh_tops).
        self._top_long_sl: float = -math.inf
        self._top_short_sl: float = math.inf
        self._top_long_tp: float = math.inf
        self._top_short_tp: float = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, position_id: object) -> bool:
        return position_id in self._entries

    def owner(self, position_id: str) -> str | None:
        """The owner a position was registered with (None: none, or not in the book)."""
        entry = self._entries.get(position_id)
        return None if entry is None else entry[_OWNER]

    def levels(self, position_id: str) -> tuple[int | None, int | None]:
        """The armed ``(sl, tp)`` of a position. Raises ``KeyError`` if it is not in the book."""
        entry = self._entries[position_id]
        return entry[_SL], entry[_TP]

    def position_ids(self) -> list[str]:
        return list(self._entries)

    # -- changes -----------------------------------------------------------------------------

    def register(
        self,
        position_id: str,
        side: Side,
        sl: int | None,
        tp: int | None,
        owner: str | None = None,
    ) -> list[Trigger]:
        """Arm a position's levels. Returns the trigger if the last quote already crossed one.
        Its triggers carry ``owner``.

        Raises:
            UsageError: the position is already in the book (use :meth:`modify`).
        """
        if position_id in self._entries:
            raise UsageError("position already registered", position_id=position_id)
        entry: list[Any] = [side is Side.SELL, None, None, 0, 0, owner]
        self._entries[position_id] = entry
        return self._arm(position_id, entry, sl, tp)

    def register_many(
        self,
        positions: Iterable[tuple[str, Side, int | None, int | None]],
        owners: Iterable[str | None] | None = None,
    ) -> list[Trigger]:
        """Arm many positions at once (recovery): the heaps are built in bulk, not pushed to.

        Positions whose levels the last quote already crossed fire at once, as with
        :meth:`register`. Before any quote (a restart) nothing can fire: the levels are
        appended to the heaps in the order given, numbered as one :meth:`register` after
        another would number them, and each heap is rebuilt by one heapify, O(n) in all.

        Raises:
            UsageError: a position is already in the book, or given twice (nothing is armed then).
        """
        batch = list(positions)
        owned = [None] * len(batch) if owners is None else list(owners)
        if len(owned) != len(batch):
            raise UsageError("register_many got owners that do not match its positions")
        entries = self._entries
        sell = Side.SELL
        if self.bid is not None or self.ask is not None:  # the slow path decides fire-on-register
            ids = [b[0] for b in batch]
            if len(set(ids)) != len(ids) or not entries.keys().isdisjoint(ids):
                raise UsageError("register_many got a position already in the book")
            fired: list[Trigger] = []
            for (pid, side, sl, tp), owner in zip(batch, owned, strict=True):
                entry: list[Any] = [side is sell, None, None, 0, 0, owner]
                entries[pid] = entry
                fired += self._arm(pid, entry, sl, tp)
            return fired
        # One pass, everything in locals (a restart arms every position of the symbol here),
        # into new containers: the book is only changed once the batch is known to be valid.
        fresh: dict[str, list[Any]] = {}
        long_sl: list[tuple[int, int, str]] = []
        short_sl: list[tuple[int, int, str]] = []
        long_tp: list[tuple[int, int, str]] = []
        short_tp: list[tuple[int, int, str]] = []
        seq = self._seq
        for (pid, side, sl, tp), owner in zip(batch, owned, strict=True):
            is_sell = side is sell
            sl_seq = tp_seq = 0
            if sl is not None:
                seq += 1
                sl_seq = seq
                if is_sell:
                    short_sl.append((sl, seq, pid))
                else:
                    long_sl.append((-sl, seq, pid))
            if tp is not None:
                seq += 1
                tp_seq = seq
                if is_sell:
                    short_tp.append((-tp, seq, pid))
                else:
                    long_tp.append((tp, seq, pid))
            fresh[pid] = [is_sell, sl, tp, sl_seq, tp_seq, owner]
        if len(fresh) != len(batch) or (entries and not entries.keys().isdisjoint(fresh)):
            raise UsageError("register_many got a position already in the book")
        entries.update(fresh)  # into an empty book (a restart): a copy of the table
        self._seq = seq
        for heap, items in zip(self._heaps, (long_sl, short_sl, long_tp, short_tp), strict=True):
            heap.extend(items)
            heapq.heapify(heap)
        self._refresh_tops()
        return []

    def modify(
        self,
        position_id: str,
        sl: int | _Keep | None = KEEP,
        tp: int | _Keep | None = KEEP,
    ) -> list[Trigger]:
        """Move or remove (``None``) a position's levels; ``KEEP`` leaves one as it is.

        A level moved past the last quote fires at once, as at registration.

        Raises:
            KeyError: the position is not in the book (it fired, or was never registered).
        """
        entry = self._entries[position_id]
        arm_sl = arm_tp = None
        if not isinstance(sl, _Keep) and sl != entry[_SL]:
            self._forget(entry, _SL_SEQ)
            entry[_SL], arm_sl = None, sl
        if not isinstance(tp, _Keep) and tp != entry[_TP]:
            self._forget(entry, _TP_SEQ)
            entry[_TP], arm_tp = None, tp
        return self._arm(position_id, entry, arm_sl, arm_tp)

    def cancel(self, position_id: str) -> bool:
        """Disarm a position (closed by other means). Returns False if it was not in the book."""
        entry = self._entries.pop(position_id, None)
        if entry is None:
            return False
        self._forget(entry, _SL_SEQ)
        self._forget(entry, _TP_SEQ)
        self._maybe_compact()
        return True

    # -- quotes ------------------------------------------------------------------------------

    def on_quote(self, bid: int, ask: int, max_fired: int | None = None) -> list[Trigger]:
        """Record the quote and return the triggers it crossed, in the documented order.

        The fired positions leave the book. With ``max_fired``, a quote that crosses more
        levels (a gap through a crowded book) fires only that many now: the rest are taken out
        of the heaps, in order, and fired by :meth:`fire_pending`, so that the caller can let
        other work run between steps (a 100,000-level storm is ~0.5 s of firing). Until then
        they are still in the book (cancel and modify apply to them as to any armed level).
        Fires still pending when another quote comes are fired first, whatever ``max_fired``.
        """
        fired = self.fire_pending() if self._pending else []
        self.bid = bid
        self.ask = ask
        # The fast path: four comparisons, nothing crossed.
        if (
            self._top_long_sl < bid
            and self._top_short_sl > ask
            and self._top_long_tp > bid
            and self._top_short_tp < ask
        ):
            return fired
        budget = math.inf if max_fired is None else len(fired) + max_fired
        long_sl, short_sl, long_tp, short_tp = self._heaps
        # Each heap is keyed so that "crossed" reads "key <= limit" (see _drain).
        if long_sl and -long_sl[0][0] >= bid:
            self._drain(long_sl, _SL_SEQ, TriggerKind.SL, Side.BUY, True, bid, -bid, fired, budget)
        if short_sl and short_sl[0][0] <= ask:
            self._drain(
                short_sl, _SL_SEQ, TriggerKind.SL, Side.SELL, False, ask, ask, fired, budget
            )
        if long_tp and long_tp[0][0] <= bid:
            self._drain(long_tp, _TP_SEQ, TriggerKind.TP, Side.BUY, False, bid, bid, fired, budget)
        if short_tp and -short_tp[0][0] >= ask:
            self._drain(
                short_tp, _TP_SEQ, TriggerKind.TP, Side.SELL, True, ask, -ask, fired, budget
            )
        if not self._maybe_compact():
            self._refresh_tops()
        return fired

    @property
    def pending(self) -> int:
        """Crossed levels not fired yet (see :meth:`on_quote`'s ``max_fired``)."""
        if not self._pending:  # every quiet quote asks
            return 0
        return sum(len(segment[0]) - segment[1] for segment in self._pending)

    def fire_pending(self, max_fired: int | None = None) -> list[Trigger]:
        """Fire up to ``max_fired`` (None: all) of the levels the last quotes crossed and
        :meth:`on_quote` left pending, in the order that quote would have fired them."""
        fired: list[Trigger] = []
        budget = math.inf if max_fired is None else max_fired
        pending = self._pending
        while pending and len(fired) < budget:
            segment = pending[0]
            items, start, seq_slot, kind, side, negated, price = segment
            segment[1] = self._fire_items(
                items, start, seq_slot, kind, side, negated, price, fired, budget
            )
            if segment[1] == len(items):
                pending.popleft()
        # No compaction here: after a storm it rebuilds heaps the size of the book (~50 ms at
        # 100,000 levels) before the last step's closes could leave. The caller runs
        # :meth:`tidy` once they have; until then the stale items are only skipped.
        return fired

    def tidy(self) -> bool:
        """Rebuild the heaps without stale items if these outnumber the live ones, as every
        change of the book but :meth:`fire_pending` does by itself (True if it did)."""
        return self._maybe_compact()

    # -- internals ---------------------------------------------------------------------------

    def _arm(self, pid: str, entry: list[Any], sl: int | None, tp: int | None) -> list[Trigger]:
        """Arm the new levels ``sl``/``tp`` (None: none new), unless the last quote crosses one.

        The crossing check covers the position's levels as they will be, new or already armed.
        """
        is_sell = bool(entry[_IS_SELL])
        bid, ask = self.bid, self.ask
        current_sl = sl if sl is not None else entry[_SL]
        current_tp = tp if tp is not None else entry[_TP]
        if bid is not None and ask is not None:
            side = Side.SELL if is_sell else Side.BUY
            price = ask if is_sell else bid
            if current_sl is not None and (price >= current_sl if is_sell else price <= current_sl):
                self._fire(pid, entry)
                return [Trigger(pid, TriggerKind.SL, side, current_sl, price, entry[_OWNER])]
            if current_tp is not None and (price <= current_tp if is_sell else price >= current_tp):
                self._fire(pid, entry)
                return [Trigger(pid, TriggerKind.TP, side, current_tp, price, entry[_OWNER])]
        if sl is not None:
            self._seq += 1
            entry[_SL], entry[_SL_SEQ] = sl, self._seq
            if is_sell:
                heapq.heappush(self._heaps[1], (sl, self._seq, pid))
            else:
                heapq.heappush(self._heaps[0], (-sl, self._seq, pid))
        if tp is not None:
            self._seq += 1
            entry[_TP], entry[_TP_SEQ] = tp, self._seq
            if is_sell:
                heapq.heappush(self._heaps[3], (-tp, self._seq, pid))
            else:
                heapq.heappush(self._heaps[2], (tp, self._seq, pid))
        if sl is not None or tp is not None:
            self._refresh_tops()
        return []

    def _drain(
        self,
        heap: list[tuple[int, int, str]],
        seq_slot: int,
        kind: TriggerKind,
        side: Side,
        negated: bool,
        price: int,
        limit: int,
        fired: list[Trigger],
        budget: float,
    ) -> None:
        """Fire every live item of ``heap`` whose key is ``<= limit``, in heap order, until
        ``fired`` holds ``budget`` triggers; the crossed items left over go to the pending
        queue (all of them, if earlier heaps already left some there: order is kept).

        Items are popped one by one (the usual case: a quote crosses a handful of levels).
        If the heap is still crossed after ``max(32, n/32)`` pops, this is a storm (a gap
        through many levels): the crossed items are taken out in one linear pass and sorted,
        and the rest is heapified again, O(n + k log k) instead of k pops of O(log n) with a
        cache miss per level. A linear pass costs about as much as n/32 pops, so switching
        there is never worse than twice the better of the two strategies.
        """
        pop = heapq.heappop
        items: list[tuple[int, int, str]] = []
        bulk_after = max(_BULK_AFTER, len(heap) >> 5)
        while heap and heap[0][0] <= limit:
            if len(items) == bulk_after:
                crossed = [item for item in heap if item[0] <= limit]
                # (key, seq) order as two stable sorts on one int each: ints of one machine
                # word compare on CPython's fast path, tuples element by element (~3x slower
                # for a 100,000-level storm). Seqs are unique, so this is the tuples' order.
                crossed.sort(key=_SEQ)
                crossed.sort(key=_KEY)
                items.extend(crossed)
                heap[:] = [item for item in heap if item[0] > limit]
                heapq.heapify(heap)
                break
            items.append(pop(heap))
        start = 0
        if not self._pending:
            start = self._fire_items(items, 0, seq_slot, kind, side, negated, price, fired, budget)
        if start < len(items):
            self._pending.append([items, start, seq_slot, kind, side, negated, price])

    def _fire_items(
        self,
        items: list[tuple[int, int, str]],
        start: int,
        seq_slot: int,
        kind: TriggerKind,
        side: Side,
        negated: bool,
        price: int,
        fired: list[Trigger],
        budget: float,
    ) -> int:
        """Fire the live ones of crossed ``items[start:]`` until ``fired`` holds ``budget``
        triggers; returns the index of the first item not looked at."""
        entries = self._entries
        other_slot = _TP_SEQ if seq_slot == _SL_SEQ else _SL_SEQ
        make = tuple.__new__
        stale = 0
        end = len(items)
        if budget - len(fired) < end - start:
            end = start + int(budget - len(fired))
        for i in range(start, end):
            key, seq, pid = items[i]
            entry = entries.get(pid)
            if entry is None or entry[seq_slot] != seq:
                stale += 1  # cancelled or moved since it was armed (or while it was pending)
                continue
            del entries[pid]
            if entry[other_slot]:  # the position's other level is now stale in its heap
                entry[other_slot] = 0
                stale -= 1
            level = -key if negated else key
            fired.append(make(Trigger, (pid, kind, side, level, price, entry[_OWNER])))
        self._stale -= stale
        return end

    def _fire(self, pid: str, entry: list[Any]) -> None:
        """Take a position out of the book; its other level's heap item goes stale."""
        del self._entries[pid]
        self._forget(entry, _SL_SEQ)
        self._forget(entry, _TP_SEQ)

    def _forget(self, entry: list[Any], seq_slot: int) -> None:
        """Make the heap item of one level stale (it will be skipped when it surfaces)."""
        if entry[seq_slot]:
            entry[seq_slot] = 0
            self._stale += 1

    def _refresh_tops(self) -> None:
        """Copy each heap's nearest level out of its top item, after any change of the heaps.

        The quote that fires nothing then compares four numbers held by the book itself. Peeking
        at the heaps instead followed three pointers per heap to wherever the sift-downs of the
        last firing quote had left the top items: at a million positions those were cache
        misses, and a quiet quote cost 1.8-2x what it cost at a thousand (bench.triggers).
        """
        (
            self._top_long_sl,
            self._top_short_sl,
            self._top_long_tp,
            self._top_short_tp,
        ) = self._heap_tops()

    def _heap_tops(self) -> tuple[float, float, float, float]:
        """The nearest level of each heap (long SL, short SL, long TP, short TP); an empty heap
        gives the infinity no price can cross."""
        long_sl, short_sl, long_tp, short_tp = self._heaps
        return (
            -long_sl[0][0] if long_sl else -math.inf,
            short_sl[0][0] if short_sl else math.inf,
            long_tp[0][0] if long_tp else math.inf,
            -short_tp[0][0] if short_tp else -math.inf,
        )

    def check(self) -> None:
        """Raise ``AssertionError`` if the copied nearest levels differ from the heaps' tops
        (for tests: a stale copy is never wrong, only slow, so results alone cannot show it)."""
        copied = (self._top_long_sl, self._top_short_sl, self._top_long_tp, self._top_short_tp)
        actual = self._heap_tops()
        if copied != actual:
            raise AssertionError(f"nearest levels {copied} != heap tops {actual}")

    def _maybe_compact(self) -> bool:
        """Rebuild the heaps without stale items once these outnumber the live ones (True if
        it did)."""
        if self._stale < _COMPACT_MIN or self._stale < 2 * len(self._entries) or self._pending:
            return False  # (pending items are counted in _stale until they are fired)
        entries = self._entries
        for index, heap in enumerate(self._heaps):
            seq_slot = _SL_SEQ if index < 2 else _TP_SEQ
            live = [
                item
                for item in heap
                if (e := entries.get(item[2])) is not None and e[seq_slot] == item[1]
            ]
            heapq.heapify(live)
            heap[:] = live
        self._stale = 0
        self._refresh_tops()
        return True
