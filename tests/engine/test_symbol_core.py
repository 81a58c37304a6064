"""SymbolCore.arm_many (a restart arms every position at once) against arming one by one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.instruments import DEFAULT_INSTRUMENTS
from engine.positions import TrailingRule
from engine.quotes import QuoteLimits
from engine.symbol import SymbolCore
from protocol.common import Side
from tests.engine.position_helpers import make_position

GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]
LIMITS = QuoteLimits(max_age_ms=10**9, max_jump=0.5)
price = st.integers(199_900, 200_100)  # points: 1999.00 .. 2001.00
level = st.one_of(st.none(), price)


def position(i: int, side: Side, sl: int | None, tp: int | None, opened: bool, trail: bool):
    return make_position(
        i,
        side=side,
        open_price=200_000 if opened else None,
        sl=sl,
        tp=tp,
        trailing=TrailingRule(distance=30) if trail else None,
    )


positions = st.lists(
    st.tuples(st.sampled_from(Side), level, level, st.booleans(), st.booleans()),
    max_size=60,
)


def _quote(core: SymbolCore, bid: int, spread: int, now: int):
    return core.on_quote(bid / GOLD.scale, (bid + spread) / GOLD.scale, now, now)


@given(
    positions,
    st.integers(0, 10),
    st.one_of(st.none(), st.tuples(price, st.integers(0, 5))),
    st.lists(st.tuples(price, st.integers(0, 5)), max_size=30),
)
def test_arm_many_equals_arming_one_by_one(specs, already, first_quote, quotes) -> None:
    bulk, single = SymbolCore(GOLD, LIMITS), SymbolCore(GOLD, LIMITS)
    given_positions = [position(i, *spec) for i, spec in enumerate(specs)]
    # Some are armed already (with other levels): arm_many re-arms those one by one.
    for p in given_positions[:already]:
        if p.open_price is not None:
            for core in (bulk, single):
                core.arm(p.id, p.user_id, p.side, p.open_price, None, None)
    now = 1
    if first_quote is not None:
        bid, spread = first_quote
        assert _quote(bulk, bid, spread, now) == _quote(single, bid, spread, now)
    fired = bulk.arm_many(given_positions)
    expected = []
    for p in given_positions:
        if p.open_price is not None:
            expected += single.arm(
                p.id, p.user_id, p.side, p.open_price, p.sl, p.tp, p.trailing, p.break_even
            )
    assert sorted(fired) == sorted(expected)  # re-arms go first in arm_many
    assert len(bulk) == len(single)
    for p in given_positions:
        assert bulk.owner(p.id) == single.owner(p.id)
        if p.id in bulk.book:
            assert bulk.book.levels(p.id) == single.book.levels(p.id)
        assert (p.id in bulk.trailing) == (p.id in single.trailing)
    for bid, spread in quotes:
        now += 1
        assert _quote(bulk, bid, spread, now) == _quote(single, bid, spread, now)
        bulk.book.check()


def test_a_trailing_stop_is_judged_against_the_quote_that_moves_it() -> None:
    """A BUY trailing 30 points: the quote that lifts its SL is the price the new SL is judged
    by, and the levels in force are judged before any move (a regression: moved first, the
    new SL was judged by the previous quote, fired unreported, and the next move raised)."""
    core = SymbolCore(GOLD)
    p = position(3, Side.BUY, None, None, opened=True, trail=True)
    core.arm_many([p])
    for bid in (199_900, 200_000, 200_001):
        out = _quote(core, bid, 3, 0)
        assert out.rejected is None and not out.fired
    assert core.book.levels("p3")[0] == 200_001 - 30
    out = _quote(core, 199_960, 3, 0)  # back under the trailed SL: it fires, at that level
    assert [(u, t.position_id, t.level) for u, t in out.fired] == [("u0", "p3", 199_971)]
    assert "p3" not in core.book and "p3" not in core.trailing
