"""The vectorised trailing book against a per-position scalar reference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.positions import BreakEvenRule, TrailingRule
from engine.trailing import LevelMove, TrailingBook
from protocol.common import Side
from protocol.errors import UsageError


class Scalar:
    """One position's rules, applied the obvious way (oriented: a short negates prices)."""

    def __init__(self, side, open_price, sl, trailing, break_even):
        self.s = side.sign
        self.sl = None if sl is None else self.s * sl
        self.open = self.s * open_price
        self.trailing, self.break_even = trailing, break_even

    def quote(self, bid, ask):
        price = bid if self.s > 0 else -ask
        new, by_trail = self.sl, False
        be = self.break_even
        if be and price >= self.open + be.trigger:
            level = self.open + be.offset
            if new is None or level > new:
                new = level
        tr = self.trailing
        if tr and price >= self.open + tr.activation:
            candidate = price - tr.distance
            if (self.sl is None or candidate >= self.sl + max(1, tr.step)) and (
                new is None or candidate > new
            ):
                new, by_trail = candidate, True
        if new != self.sl:
            self.sl = new
            return self.s * new, "trailing" if by_trail else "break_even"
        return None


rules = st.tuples(
    st.sampled_from(Side),
    st.integers(900, 1100),  # open
    st.one_of(st.none(), st.integers(-80, 80)),  # sl offset from open (oriented, may be odd)
    st.one_of(
        st.none(),
        st.builds(
            TrailingRule,
            distance=st.integers(1, 40),
            activation=st.integers(0, 40),
            step=st.integers(1, 10),
        ),
    ),
    st.one_of(
        st.none(), st.builds(BreakEvenRule, trigger=st.integers(0, 40), offset=st.integers(-5, 10))
    ),
).filter(lambda r: r[3] is not None or r[4] is not None)


@given(
    st.lists(rules, min_size=1, max_size=25),
    st.lists(st.tuples(st.integers(850, 1150), st.integers(0, 6)), max_size=60),
    st.sets(st.integers(0, 24), max_size=5),
)
def test_vectorised_book_matches_scalar_reference(positions, quotes, removed) -> None:
    book = TrailingBook("X", capacity=4)  # small: exercises growth
    refs = {}
    for i, (side, open_, sl_off, tr, be) in enumerate(positions):
        sl = None if sl_off is None else open_ - side.sign * sl_off
        book.add(f"p{i}", side, open_, sl, tr, be)
        refs[f"p{i}"] = Scalar(side, open_, sl, tr, be)
    for i in removed:
        assert book.remove(f"p{i}") == (f"p{i}" in refs)
        refs.pop(f"p{i}", None)
    for bid, spread in quotes:
        got = {m.position_id: (m.sl, m.reason) for m in book.on_quote(bid, bid + spread)}
        want = {}
        for pid, ref in refs.items():
            moved = ref.quote(bid, bid + spread)
            if moved:
                want[pid] = moved
        assert got == want
        for pid, ref in refs.items():
            assert book.sl(pid) == (None if ref.sl is None else ref.s * ref.sl)


def test_quiet_quotes_are_skipped_by_threshold() -> None:
    book = TrailingBook("X")
    book.add("a", Side.BUY, 1000, 950, TrailingRule(distance=50, activation=30))
    assert book._next_long == 1030
    assert book.on_quote(1029, 1031) == []
    assert book.on_quote(1030, 1032) == [LevelMove("a", 980, "trailing")]


def test_set_sl_from_outside_is_respected() -> None:
    book = TrailingBook("X")
    book.add("a", Side.BUY, 1000, 950, TrailingRule(distance=50))
    book.set_sl("a", 990)
    assert book.on_quote(1030, 1031) == []  # 980 would loosen the stop
    assert book.on_quote(1041, 1042) == [LevelMove("a", 991, "trailing")]


def test_rows_need_a_rule_and_unique_ids() -> None:
    book = TrailingBook("X")
    with pytest.raises(UsageError):
        book.add("a", Side.BUY, 1000, 950)
    book.add("a", Side.BUY, 1000, 950, break_even=BreakEvenRule(trigger=10))
    with pytest.raises(UsageError):
        book.add("a", Side.BUY, 1000, 950, break_even=BreakEvenRule(trigger=10))
    with pytest.raises(UsageError):
        book.add("b", Side.BUY, 1000, 950, TrailingRule(distance=0))
