"""The trigger book: every armed SL/TP level of one symbol, and which ones a quote crosses.

Semantics (docs/architecture.md, "Trigger semantics")
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
Four ladders per symbol (long SL, short SL, long TP, short TP; :mod:`engine.ladder`) hold
``(key, seq, position_id)`` in crossing order, with lazy deletion: a modification or cancellation
only forgets the entry's sequence number, and an item whose sequence number is no longer current
is skipped when it is crossed. A quote that crosses nothing costs four comparisons with the
ladders' nearest levels (copied out whenever a ladder changes), whatever the number of
positions; a quote that crosses levels costs a binary search and a slice per ladder, then the
firing of each live item. Stale items are compacted away when they outnumber the live ones.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from engine.ladder import Crossed, Ladder
from protocol.common import Side
from protocol.errors import UsageError

__all__ = ["KEEP", "Keep", "Trigger", "TriggerBook", "TriggerKind"]


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


class Keep:
    """The type of :data:`KEEP`: "leave this level as it is" (``None`` means "remove it")."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = Keep()

# Entry layout, a small list per position (cheaper in memory than an object with slots). The
# owner rides along so that a fired trigger names it: the symbol core keeps no second table
# of owners in step with this one.
_IS_SELL, _SL, _TP, _SL_SEQ, _TP_SEQ, _OWNER = range(6)
_COMPACT_MIN = 4096


class TriggerBook:
    """The armed SL/TP levels of one symbol, in integer points."""

    __slots__ = (
        "_entries",
        "_ladders",
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
        # 0: long SL (key -level), 1: short SL (key level), 2: long TP (level), 3: short TP
        # (-level). Keys are negated where the crossing order is descending.
        self._ladders = (Ladder(), Ladder(), Ladder(), Ladder())
        self._seq = 0
        self._stale = 0
        # Crossed levels taken out of their ladders but not fired yet (a storm fired in steps,
        # see on_quote): [crossed, next index, seq slot, kind, side, negated, price] per ladder.
        self._pending: deque[list[Any]] = deque()
        # The nearest level of each ladder, copied out of it (see _refresh_tops).
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
        """Arm many positions at once (recovery): the ladders are built in bulk, not pushed to.

        Positions whose levels the last quote already crossed fire at once, as with
        :meth:`register`. Before any quote (a restart) nothing can fire: the levels are
        numbered as one :meth:`register` after another would number them and each ladder
        takes them in one sorted insertion, O(n log n) in numpy.

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
        # Per ladder: keys, seqs, ids (long SL, short SL, long TP, short TP).
        columns: tuple[tuple[list[int], list[int], list[str]], ...] = tuple(
            ([], [], []) for _ in range(4)
        )
        long_sl, short_sl, long_tp, short_tp = columns
        seq = self._seq
        for (pid, side, sl, tp), owner in zip(batch, owned, strict=True):
            is_sell = side is sell
            sl_seq = tp_seq = 0
            if sl is not None:
                seq += 1
                sl_seq = seq
                keys, seqs, ids = short_sl if is_sell else long_sl
                keys.append(sl if is_sell else -sl)
                seqs.append(seq)
                ids.append(pid)
            if tp is not None:
                seq += 1
                tp_seq = seq
                keys, seqs, ids = short_tp if is_sell else long_tp
                keys.append(-tp if is_sell else tp)
                seqs.append(seq)
                ids.append(pid)
            fresh[pid] = [is_sell, sl, tp, sl_seq, tp_seq, owner]
        if len(fresh) != len(batch) or (entries and not entries.keys().isdisjoint(fresh)):
            raise UsageError("register_many got a position already in the book")
        entries.update(fresh)  # into an empty book (a restart): a copy of the table
        self._seq = seq
        for ladder, (keys, seqs, ids) in zip(self._ladders, columns, strict=True):
            ladder.extend(keys, seqs, ids)
        self._refresh_tops()
        return []

    def modify(
        self,
        position_id: str,
        sl: int | Keep | None = KEEP,
        tp: int | Keep | None = KEEP,
    ) -> list[Trigger]:
        """Move or remove (``None``) a position's levels; ``KEEP`` leaves one as it is.

        A level moved past the last quote fires at once, as at registration.

        Raises:
            KeyError: the position is not in the book (it fired, or was never registered).
        """
        entry = self._entries[position_id]
        arm_sl = arm_tp = None
        if not isinstance(sl, Keep) and sl != entry[_SL]:
            self._forget(entry, _SL_SEQ)
            entry[_SL], arm_sl = None, sl
        if not isinstance(tp, Keep) and tp != entry[_TP]:
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

    def cancel_many(self, position_ids: Iterable[str]) -> int:
        """Disarm several positions (their user moved to another node); how many were here.

        O(len(position_ids)) plus at most one compaction: each removal is the lazy deletion of
        :meth:`cancel`, and a level still pending from a storm is skipped when its turn comes.
        """
        entries, forget = self._entries, self._forget
        removed = 0
        for pid in position_ids:
            entry = entries.pop(pid, None)
            if entry is not None:
                forget(entry, _SL_SEQ)
                forget(entry, _TP_SEQ)
                removed += 1
        if removed and not self._maybe_compact():
            self._refresh_tops()
        return removed

    # -- quotes ------------------------------------------------------------------------------

    def on_quote(self, bid: int, ask: int, max_fired: int | None = None) -> list[Trigger]:
        """Record the quote and return the triggers it crossed, in the documented order.

        The fired positions leave the book. With ``max_fired``, a quote that crosses more
        levels (a gap through a crowded book) fires only that many now: the rest are taken out
        of the ladders, in order, and fired by :meth:`fire_pending`, so that the caller can let
        other work run between steps (a 100,000-level storm is ~0.2 s of firing). Until then
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
        long_sl, short_sl, long_tp, short_tp = self._ladders
        # Each ladder is keyed so that "crossed" reads "key <= limit" (see engine.ladder); the
        # copied tops are current here (every change of a ladder refreshes them).
        if self._top_long_sl >= bid:
            self._drain(long_sl, _SL_SEQ, TriggerKind.SL, Side.BUY, True, bid, -bid, fired, budget)
        if self._top_short_sl <= ask:
            self._drain(
                short_sl, _SL_SEQ, TriggerKind.SL, Side.SELL, False, ask, ask, fired, budget
            )
        if self._top_long_tp <= bid:
            self._drain(long_tp, _TP_SEQ, TriggerKind.TP, Side.BUY, False, bid, bid, fired, budget)
        if self._top_short_tp >= ask:
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
        return sum(len(segment[0][0]) - segment[1] for segment in self._pending)

    def fire_pending(self, max_fired: int | None = None) -> list[Trigger]:
        """Fire up to ``max_fired`` (None: all) of the levels the last quotes crossed and
        :meth:`on_quote` left pending, in the order that quote would have fired them."""
        fired: list[Trigger] = []
        budget = math.inf if max_fired is None else max_fired
        pending = self._pending
        while pending and len(fired) < budget:
            segment = pending[0]
            crossed, start, seq_slot, kind, side, negated, price = segment
            segment[1] = self._fire_items(
                crossed, start, seq_slot, kind, side, negated, price, fired, budget
            )
            if segment[1] == len(crossed[0]):
                pending.popleft()
        # No compaction here: after a storm it rebuilds ladders the size of the book (tens of
        # ms at 100,000 levels) before the last step's closes could leave. The caller runs
        # :meth:`tidy` once they have; until then the stale items are only skipped.
        return fired

    def tidy(self) -> bool:
        """Rebuild the ladders without stale items if these outnumber the live ones, as every
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
                self._ladders[1].push(sl, self._seq, pid)
            else:
                self._ladders[0].push(-sl, self._seq, pid)
        if tp is not None:
            self._seq += 1
            entry[_TP], entry[_TP_SEQ] = tp, self._seq
            if is_sell:
                self._ladders[3].push(-tp, self._seq, pid)
            else:
                self._ladders[2].push(tp, self._seq, pid)
        if sl is not None or tp is not None:
            self._refresh_tops()
        return []

    def _drain(
        self,
        ladder: Ladder,
        seq_slot: int,
        kind: TriggerKind,
        side: Side,
        negated: bool,
        price: int,
        limit: int,
        fired: list[Trigger],
        budget: float,
    ) -> None:
        """Fire every live item of ``ladder`` whose key is ``<= limit``, in crossing order,
        until ``fired`` holds ``budget`` triggers; the crossed items left over go to the
        pending queue (all of them, if earlier ladders already left some there: order is kept).
        """
        crossed = ladder.take(limit)
        start = 0
        if not self._pending:
            start = self._fire_items(
                crossed, 0, seq_slot, kind, side, negated, price, fired, budget
            )
        if start < len(crossed[0]):
            self._pending.append([crossed, start, seq_slot, kind, side, negated, price])

    def _fire_items(
        self,
        crossed: Crossed,
        start: int,
        seq_slot: int,
        kind: TriggerKind,
        side: Side,
        negated: bool,
        price: int,
        fired: list[Trigger],
        budget: float,
    ) -> int:
        """Fire the live ones of ``crossed`` from index ``start`` until ``fired`` holds
        ``budget`` triggers; returns the index of the first item not looked at."""
        keys, seqs, ids = crossed
        entries = self._entries
        other_slot = _TP_SEQ if seq_slot == _SL_SEQ else _SL_SEQ
        make = tuple.__new__
        stale = 0
        end = len(keys)
        if budget - len(fired) < end - start:
            end = start + int(budget - len(fired))
        for i in range(start, end):
            pid = ids[i]
            entry = entries.get(pid)
            if entry is None or entry[seq_slot] != seqs[i]:
                stale += 1  # cancelled or moved since it was armed (or while it was pending)
                continue
            del entries[pid]
            if entry[other_slot]:  # the position's other level is now stale in its ladder
                entry[other_slot] = 0
                stale -= 1
            level = -keys[i] if negated else keys[i]
            fired.append(make(Trigger, (pid, kind, side, level, price, entry[_OWNER])))
        self._stale -= stale
        return end

    def _fire(self, pid: str, entry: list[Any]) -> None:
        """Take a position out of the book; its levels' items go stale."""
        del self._entries[pid]
        self._forget(entry, _SL_SEQ)
        self._forget(entry, _TP_SEQ)

    def _forget(self, entry: list[Any], seq_slot: int) -> None:
        """Make the item of one level stale (it will be skipped when it is crossed)."""
        if entry[seq_slot]:
            entry[seq_slot] = 0
            self._stale += 1

    def _refresh_tops(self) -> None:
        """Copy each ladder's nearest level, after any change of the ladders.

        The quote that fires nothing then compares four numbers held by the book itself,
        without following pointers into the ladders (at a million positions, peeking into the
        old heaps' top items made a quiet quote cost 1.8-2x what it cost at a thousand).
        """
        (
            self._top_long_sl,
            self._top_short_sl,
            self._top_long_tp,
            self._top_short_tp,
        ) = self._ladder_tops()

    def _ladder_tops(self) -> tuple[float, float, float, float]:
        """The nearest level of each ladder (long SL, short SL, long TP, short TP); an empty
        ladder gives the infinity no price can cross."""
        long_sl, short_sl, long_tp, short_tp = self._ladders
        return (-long_sl.top(), short_sl.top(), long_tp.top(), -short_tp.top())

    def check(self) -> None:
        """Raise ``AssertionError`` if the copied nearest levels differ from the ladders' or a
        ladder is out of order (for tests: a stale copy is never wrong, only slow, so results
        alone cannot show it)."""
        copied = (self._top_long_sl, self._top_short_sl, self._top_long_tp, self._top_short_tp)
        actual = self._ladder_tops()
        if copied != actual:
            raise AssertionError(f"nearest levels {copied} != ladder tops {actual}")
        for ladder in self._ladders:
            ladder.check()

    def _maybe_compact(self) -> bool:
        """Rebuild the ladders without stale items once these outnumber the live ones (True if
        it did)."""
        if self._stale < _COMPACT_MIN or self._stale < 2 * len(self._entries) or self._pending:
            return False  # (pending items are counted in _stale until they are fired)
        # The seqs of every armed level (a missing level's slot holds 0, which no item has).
        live = np.fromiter(
            itertools.chain.from_iterable(
                (entry[_SL_SEQ], entry[_TP_SEQ]) for entry in self._entries.values()
            ),
            np.int64,
            2 * len(self._entries),
        )
        for ladder in self._ladders:
            ladder.rebuild(live)
        self._stale = 0
        self._refresh_tops()
        return True
