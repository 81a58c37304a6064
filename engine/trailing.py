"""Trailing stops and break-even moves, vectorised per symbol with numpy.

These are the only rules that move levels on their own. Doing them per position task would make
every quote cost O(positions) in Python; instead each symbol keeps one set of arrays (one row per
position with a rule) and a quote costs:

* O(1) when no row can move: ``_next_long`` / ``_next_short`` hold the nearest price at which any
  row would move, so most quotes are a single comparison;
* one numpy pass over the rows otherwise.

Rules (long; a short mirrors them on the ask)
---------------------------------------------
* Trailing: once ``bid >= open + activation``, the SL follows at ``bid - distance``, moving only
  up and only by at least ``step`` points.
* Break-even: once ``bid >= open + trigger``, the SL moves to ``open + offset`` (once; never
  down).
A row reports a :class:`LevelMove` with the new SL; the caller re-arms the trigger book and
sends the broker a (rate-limited) modify. The row forgets nothing else: the SL it starts from is
the one it was given at :meth:`TrailingBook.add` and the ones it produced since.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from engine.positions import BreakEvenRule, TrailingRule
from protocol.common import Side
from protocol.errors import UsageError

__all__ = ["LevelMove", "TrailingBook"]

# Rows are stored "long-oriented": a short's prices are negated, so that for both sides a
# higher oriented price is more profit and a higher oriented SL is a tighter stop. One formula
# then serves both sides, with no branches per row.
_NO_SL = -(2**62)  # oriented "no SL yet": any real level is higher
_NEVER = 2**62  # oriented price at which a row that cannot move would move


class LevelMove(NamedTuple):
    position_id: str
    sl: int
    reason: str  # "trailing" or "break_even"


class TrailingBook:
    """The positions of one symbol that have a trailing or break-even rule."""

    def __init__(self, symbol: str, capacity: int = 64) -> None:
        self.symbol = symbol
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._n = 0
        self._alloc(capacity)
        self._next_long = _NEVER
        self._next_short = -_NEVER

    def __len__(self) -> int:
        return self._n

    def __contains__(self, position_id: object) -> bool:
        return position_id in self._index

    # -- rows --------------------------------------------------------------------------------

    def add(
        self,
        position_id: str,
        side: Side,
        open_price: int,
        sl: int | None,
        trailing: TrailingRule | None = None,
        break_even: BreakEvenRule | None = None,
    ) -> None:
        """Watch a position's rule(s). Raises ``UsageError`` if it has none or is already here."""
        if trailing is None and break_even is None:
            raise UsageError("a trailing book row needs a trailing or break-even rule")
        if position_id in self._index:
            raise UsageError("position already in the trailing book", position_id=position_id)
        if trailing is not None and trailing.distance <= 0:
            raise UsageError("trailing distance must be positive", position_id=position_id)
        if self._n == len(self._sign):
            self._alloc(2 * len(self._sign))
        i = self._n
        sign = side.sign
        oriented_open = sign * open_price
        self._sign[i] = sign
        self._sl[i] = _NO_SL if sl is None else sign * sl
        self._trail_on[i] = trailing is not None
        if trailing is not None:
            self._distance[i] = trailing.distance
            self._step[i] = max(1, trailing.step)
            self._activate_at[i] = oriented_open + trailing.activation
        self._be_on[i] = break_even is not None
        if break_even is not None:
            self._be_at[i] = oriented_open + break_even.trigger
            self._be_level[i] = oriented_open + break_even.offset
        self._ids.append(position_id)
        self._index[position_id] = i
        self._n += 1
        self._refresh_thresholds()

    def remove(self, position_id: str) -> bool:
        """Stop watching a position (it closed). Returns False if it was not here."""
        if not self._drop(position_id):
            return False
        self._refresh_thresholds()
        return True

    def remove_many(self, position_ids: Iterable[str]) -> int:
        """:meth:`remove` several positions, refreshing the thresholds once; how many were here."""
        removed = sum(1 for pid in position_ids if self._drop(pid))
        if removed:
            self._refresh_thresholds()
        return removed

    def _drop(self, position_id: str) -> bool:
        i = self._index.pop(position_id, None)
        if i is None:
            return False
        last = self._n - 1
        if i != last:  # swap the last row into the hole
            for array in self._arrays():
                array[i] = array[last]
            moved = self._ids[last]
            self._ids[i] = moved
            self._index[moved] = i
        self._ids.pop()
        self._n = last
        return True

    def set_sl(self, position_id: str, sl: int | None) -> None:
        """Tell the book about an SL changed by other means (a user's modify)."""
        i = self._index[position_id]
        self._sl[i] = _NO_SL if sl is None else int(self._sign[i]) * sl
        self._refresh_thresholds()

    def sl(self, position_id: str) -> int | None:
        """The SL the book currently holds for a position."""
        i = self._index[position_id]
        oriented = int(self._sl[i])
        return None if oriented == _NO_SL else int(self._sign[i]) * oriented

    # -- quotes ------------------------------------------------------------------------------

    def on_quote(self, bid: int, ask: int) -> list[LevelMove]:
        """The SL moves this quote causes (usually none, in O(1))."""
        if bid < self._next_long and ask > self._next_short:
            return []
        n = self._n
        sign = self._sign[:n]
        price = np.where(sign > 0, bid, -ask)
        old_sl = self._sl[:n]

        be_move = self._be_on[:n] & (price >= self._be_at[:n]) & (self._be_level[:n] > old_sl)
        new_sl = np.where(be_move, self._be_level[:n], old_sl)

        candidate = price - self._distance[:n]
        trail_move = (
            self._trail_on[:n]
            & (price >= self._activate_at[:n])
            & (candidate >= old_sl + self._step[:n])
            & (candidate > new_sl)
        )
        new_sl = np.where(trail_move, candidate, new_sl)

        changed = np.flatnonzero(new_sl != old_sl)
        moves: list[LevelMove] = []
        if changed.size:
            self._sl[changed] = new_sl[changed]
            levels = (sign[changed] * new_sl[changed]).tolist()
            trailed = trail_move[changed].tolist()
            ids = self._ids
            for i, level, by_trail in zip(changed.tolist(), levels, trailed, strict=True):
                moves.append(LevelMove(ids[i], level, "trailing" if by_trail else "break_even"))
            self._refresh_thresholds()
        return moves

    # -- internals ---------------------------------------------------------------------------

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self._sign,
            self._sl,
            self._trail_on,
            self._distance,
            self._step,
            self._activate_at,
            self._be_on,
            self._be_at,
            self._be_level,
        )

    def _alloc(self, capacity: int) -> None:
        old = self._arrays() if hasattr(self, "_sign") else None
        self._sign = np.ones(capacity, dtype=np.int64)
        self._sl = np.full(capacity, _NO_SL, dtype=np.int64)
        self._trail_on = np.zeros(capacity, dtype=bool)
        self._distance = np.zeros(capacity, dtype=np.int64)
        self._step = np.ones(capacity, dtype=np.int64)
        self._activate_at = np.zeros(capacity, dtype=np.int64)
        self._be_on = np.zeros(capacity, dtype=bool)
        self._be_at = np.zeros(capacity, dtype=np.int64)
        self._be_level = np.zeros(capacity, dtype=np.int64)
        if old is not None:
            for new, previous in zip(self._arrays(), old, strict=True):
                new[: self._n] = previous[: self._n]

    def _refresh_thresholds(self) -> None:
        """Recompute the nearest prices at which any long or short row would move."""
        n = self._n
        sign = self._sign[:n]
        sl = self._sl[:n]
        be = np.where(self._be_on[:n] & (self._be_level[:n] > sl), self._be_at[:n], _NEVER)
        trail = np.where(
            self._trail_on[:n],
            np.maximum(self._activate_at[:n], sl + self._step[:n] + self._distance[:n]),
            _NEVER,
        )
        at = np.minimum(be, trail)  # oriented price at which each row next moves
        longs, shorts = at[sign > 0], at[sign < 0]
        self._next_long = int(longs.min()) if longs.size else _NEVER
        # A short moves when -ask >= at, that is when ask <= -at.
        self._next_short = -int(shorts.min()) if shorts.size else -_NEVER
