"""engine.gap_replay against a brute-force path scan: every claimed position fires at the first
quote of the gap that touched its SL or TP, none fires twice, and trailing stops move along the
path (a claimed position closes where the live book would have closed it)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.gap_replay import replay_gap
from engine.instruments import DEFAULT_INSTRUMENTS
from engine.lifecycle import PositionState
from engine.positions import TrailingRule
from engine.triggers import TriggerKind
from protocol.common import Side
from protocol.feed import Quote
from tests.engine.position_helpers import make_position

GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]
SCALE = GOLD.scale
START = 1950.0


def _path(steps: list[int]) -> list[tuple[Quote, int]]:
    """Quotes a few points apart (well inside the validator's jump limit), 100 ms apart."""
    quotes, mid = [], round(START * SCALE)
    for i, step in enumerate(steps):
        mid += step
        quote = Quote(
            symbol="XAUUSD", bid=(mid - 5) / SCALE, ask=(mid + 5) / SCALE, time_ms=1000 + i * 100
        )
        quotes.append((quote, quote.time_ms))  # stamped on arrival, at its own time here
    return quotes


def _first_touch(
    side: Side, sl: int | None, tp: int | None, quotes: list[tuple[Quote, int]], since: int = 0
) -> tuple[int, TriggerKind] | None:
    """The brute force: armed at quote ``since`` against the last price (the quote before),
    then judged by every later quote; never armed if the gap ends first (the live book arms it
    after the replay, against the same last price)."""
    if since >= len(quotes):
        return None
    for i, (q, _) in enumerate(quotes):
        if i < since - 1:
            continue
        price = round((q.bid if side is Side.BUY else q.ask) * SCALE)
        if sl is not None and (price <= sl if side is Side.BUY else price >= sl):
            return i, TriggerKind.SL
        if tp is not None and (price >= tp if side is Side.BUY else price <= tp):
            return i, TriggerKind.TP
    return None


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.integers(-40, 40), min_size=1, max_size=60),
    levels=st.lists(
        st.tuples(
            st.sampled_from([Side.BUY, Side.SELL]),
            st.integers(1, 400),
            st.integers(1, 400),
            st.integers(0, 20),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_each_position_fires_at_its_first_touch_after_its_last_change(
    steps: list[int], levels: list[tuple[Side, int, int, int]]
) -> None:
    """A position changed (opened, moved) at some point of the gap is judged from there on:
    armed against the last price, then every later quote."""
    quotes = _path(steps)
    mid = round(START * SCALE)
    positions = []
    since: dict[str, int] = {}
    for i, (side, sl_off, tp_off, k) in enumerate(levels):
        sign = 1 if side is Side.BUY else -1
        # Changed just before quote k was stamped (quotes are stamped 1000 + 100 i).
        positions.append(
            make_position(
                i,
                side=side,
                open_price=mid,
                sl=mid - sign * sl_off,
                tp=mid + sign * tp_off,
                updated_ms=1000 + k * 100 - 50,
            )
        )
        since[f"p{i}"] = k
    outcome = replay_gap(GOLD, positions, quotes)
    got = {f.trigger.position_id: (f.quote_index, f.trigger.kind) for f in outcome.fired}
    assert len(got) == len(outcome.fired), "a position fired twice"
    for p in positions:
        assert got.get(p.id) == _first_touch(p.side, p.sl, p.tp, quotes, since[p.id]), p
    assert [f.quote_index for f in outcome.fired] == sorted(f.quote_index for f in outcome.fired)
    assert outcome.rejected == 0


def test_only_open_positions_of_the_symbol_are_judged() -> None:
    mid = round(START * SCALE)
    closing = make_position(1, open_price=mid, sl=mid - 10, state=PositionState.CLOSING)
    other = make_position(2, open_price=mid, sl=mid - 10, symbol="EURUSD")
    pending = make_position(3, sl=mid - 10, state=PositionState.PENDING_OPEN)
    outcome = replay_gap(GOLD, [closing, other, pending], _path([-50, -50]))
    assert outcome.fired == []


def test_a_trailing_stop_moves_along_the_path_and_fires_where_the_path_turns() -> None:
    """Up 300 points then down: the SL trails 100 behind the best bid and fires on the way down,
    well above where it started. Judged at the extremes alone it would not move first."""
    mid = round(START * SCALE)
    p = make_position(1, open_price=mid, sl=mid - 100, trailing=TrailingRule(distance=100, step=10))
    outcome = replay_gap(GOLD, [p], _path([30] * 10 + [-30] * 10))
    [fire] = outcome.fired
    assert fire.trigger.kind is TriggerKind.SL
    assert fire.trigger.level > mid + 100  # trailed up, not the original level
    assert 10 < fire.quote_index < 20


def test_a_trailing_move_that_did_not_fire_is_returned_for_the_live_book() -> None:
    mid = round(START * SCALE)
    p = make_position(1, open_price=mid, sl=mid - 100, trailing=TrailingRule(distance=100, step=10))
    outcome = replay_gap(GOLD, [p], _path([30] * 5))
    assert outcome.fired == []
    user, move = outcome.moved[p.id]
    assert user == p.user_id and move.sl > mid - 100
