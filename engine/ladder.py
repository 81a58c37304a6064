"""A ladder: one side of a trigger book, its levels in the order a moving price crosses them.

Items are ``(key, seq, position_id)``. A key is a level, negated where the crossing order is
descending, so that "crossed" always reads ``key <= limit`` and the crossing order is ascending
``(key, seq)``. ``seq`` numbers the arming, so levels at one price keep price-time priority.

Most items sit in a sorted *run*: three parallel lists (keys, seqs, ids) and a head index. A
quote's crossed items are the run's prefix up to ``bisect_right(limit)``: one binary search and
three slices, however many it crossed, in contiguous memory. Why not a binary heap: it pays a
``heappop`` per crossed level, with a cache miss at most of its ~17 levels at 100,000 positions.
Why plain lists, not numpy arrays: a quote crosses a handful of levels, and numpy's per-call cost
(~1 us per search or slice) is more than the slices save (``bench.triggers`` measures both).

Levels armed since the run was built (recovery's bulk arming, or the last compaction) go to
the *overflow*, a ``sortedcontainers.SortedList`` of ``(key, seq, id)``: an insertion is
O(log n) with no pause, whatever the size, and its crossed items are a prefix as well. A quote
takes the prefixes of both and interleaves them only when both crossed. The overflow joins
the run only when the run is rebuilt anyway (a compaction, a bulk arming): merging it whenever it
reached a fraction of the run would pause a quote (~75 ms at 500,000 levels).

Items are never removed from the middle: a cancelled or moved level stays as a stale item and
the book skips it when it is crossed (the book knows which are stale; the ladder does not).
:meth:`Ladder.rebuild` drops them.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np
from sortedcontainers import SortedList

__all__ = ["Crossed", "Ladder"]

_TRIM_MIN = 4096
"""A run's crossed head is cut off once it is this long and half of the lists."""
_POP_MAX = 4
"""Crossed overflow items popped one by one before the rest are taken as one slice."""

Crossed = tuple[list[int], list[int], list[str]]
"""Crossed items as three parallel lists: keys, seqs, position ids (crossing order)."""


class Ladder:
    """The levels of one side of one kind (say, long SLs) of a symbol."""

    __slots__ = ("_ids", "_keys", "_lo", "_overflow", "_seqs")

    def __init__(self) -> None:
        self._keys: list[int] = []
        self._seqs: list[int] = []
        self._ids: list[str] = []
        self._lo = 0
        """The run's head: items before it were crossed and handed out."""
        self._overflow: SortedList = SortedList()

    def __len__(self) -> int:
        """Items held, stale ones included."""
        return len(self._keys) - self._lo + len(self._overflow)

    def top(self) -> float:
        """The least key held (``inf`` if none): the next level a price can cross."""
        lo, keys, overflow = self._lo, self._keys, self._overflow
        best: float = keys[lo] if lo < len(keys) else math.inf
        if overflow:
            first: int = overflow[0][0]
            if first < best:
                return first
        return best

    def push(self, key: int, seq: int, position_id: str) -> None:
        """Add an item; ``seq`` must exceed every seq the ladder holds."""
        self._overflow.add((key, seq, position_id))

    def take(self, limit: int) -> Crossed:
        """Remove and return every item with ``key <= limit``, in ``(key, seq)`` order."""
        keys, lo = self._keys, self._lo
        if lo < len(keys) and keys[lo] <= limit:
            hi = bisect_right(keys, limit, lo)
            out_keys, out_seqs, out_ids = keys[lo:hi], self._seqs[lo:hi], self._ids[lo:hi]
            self._lo = hi
            if hi >= _TRIM_MIN and 2 * hi >= len(keys):  # let go of the crossed head
                self._set_run(keys[hi:], self._seqs[hi:], self._ids[hi:])
        else:
            out_keys, out_seqs, out_ids = [], [], []
        overflow = self._overflow
        if overflow and overflow[0][0] <= limit:
            # A quote crosses a level or two: popped one by one (one call each). Past a few,
            # one bisect, one slice and one deletion: (limit + 1,) sorts after every item
            # whose key is <= limit, before the others.
            pop = overflow.pop
            popped = [pop(0)]
            while overflow and overflow[0][0] <= limit:
                if len(popped) == _POP_MAX:
                    end = overflow.bisect_left((limit + 1,))
                    popped += overflow[:end]
                    del overflow[:end]
                    break
                popped.append(pop(0))
            if out_keys:  # both parts crossed: interleave them in crossing order
                popped.extend(zip(out_keys, out_seqs, out_ids, strict=True))
                popped.sort()
            out_keys = [item[0] for item in popped]
            out_seqs = [item[1] for item in popped]
            out_ids = [item[2] for item in popped]
        return out_keys, out_seqs, out_ids

    def extend(self, keys: list[int], seqs: list[int], ids: list[str]) -> None:
        """Add many items at once (a recovery's arming), seqs ascending and above the ladder's."""
        if not keys:
            return
        if self._lo == len(self._keys) and not self._overflow:  # an empty ladder (a restart)
            # Seqs ascend in the given order, so a stable sort by key is the (key, seq) order:
            # one sort key instead of _rebuild's two (10-40 ms less per 100,000 levels, which
            # recovery pays per ladder).
            order = np.argsort(np.array(keys, np.int64), kind="stable").tolist()
            self._set_run(
                [keys[i] for i in order], [seqs[i] for i in order], [ids[i] for i in order]
            )
            return
        self._rebuild((keys, seqs, ids), None)

    def rebuild(self, live: np.ndarray) -> None:
        """Keep only the items whose seq is in ``live`` (the book's compaction; the seqs of
        every armed level, in any order); the overflow joins the run."""
        self._rebuild(([], [], []), live)

    # -- internals ---------------------------------------------------------------------------

    def _rebuild(self, more: Crossed, live: np.ndarray | None) -> None:
        """A new run of the run, the overflow and ``more``, without the items whose seq is not
        in ``live`` (None: keep all).

        The filter and the (key, seq) sort run in numpy, and only the kept items' keys and ids
        are read: a compaction drops mostly stale items, and at this size reading an item is a
        cache miss. The same work on tuples (a Python predicate per item, ``list.sort``, three
        unzipping comprehensions) paused the book for 0.2-0.3 s per ladder of 150,000 items on
        the dev machine, and every change of the book waits for it.
        """
        lo, run_keys, run_ids = self._lo, self._keys, self._ids
        items = list(self._overflow)
        more_keys, more_seqs, more_ids = more
        in_run, in_overflow = len(run_keys) - lo, len(items)
        seqs = self._seqs[lo:]
        seqs += [item[1] for item in items]
        seqs += more_seqs
        seq_array = np.array(seqs, np.int64)
        kept = np.arange(len(seqs)) if live is None else np.flatnonzero(np.isin(seq_array, live))
        # The kept positions split by part: run, overflow, more (kept is ascending).
        cut_overflow, cut_more = np.searchsorted(kept, (in_run, in_run + in_overflow)).tolist()
        from_run = (kept[:cut_overflow] + lo).tolist()
        from_overflow = [items[i] for i in (kept[cut_overflow:cut_more] - in_run).tolist()]
        from_more = (kept[cut_more:] - (in_run + in_overflow)).tolist()
        keys = [run_keys[i] for i in from_run]
        keys += [item[0] for item in from_overflow]
        keys += [more_keys[i] for i in from_more]
        ids = [run_ids[i] for i in from_run]
        ids += [item[2] for item in from_overflow]
        ids += [more_ids[i] for i in from_more]
        seq_array = seq_array[kept]
        order = np.lexsort((seq_array, np.array(keys, np.int64))).tolist()  # by key, then seq
        self._overflow = SortedList()
        self._set_run([keys[i] for i in order], seq_array[order].tolist(), [ids[i] for i in order])

    def _set_run(self, keys: list[int], seqs: list[int], ids: list[str]) -> None:
        self._keys, self._seqs, self._ids, self._lo = keys, seqs, ids, 0

    def check(self) -> None:
        """Raise ``AssertionError`` unless the run is sorted by ``(key, seq)`` and every
        overflow item is younger than every run item (armed since the run was built). For
        tests."""
        lo = self._lo
        run = list(zip(self._keys[lo:], self._seqs[lo:], strict=True))
        if run != sorted(run):
            raise AssertionError("ladder run out of order")
        if run and self._overflow and min(s for _, s, _ in self._overflow) <= max(self._seqs[lo:]):
            raise AssertionError("an overflow item is older than the run")
