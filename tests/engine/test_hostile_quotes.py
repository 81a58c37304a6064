"""Hostile quotes never poison the genuine ones: whatever is interleaved with a genuine,
increasing sequence of quotes (stamps from the future by any amount, microseconds sent as
milliseconds, stamps from the past, replays of earlier quotes), every genuine quote is accepted
and fires and moves exactly what it fires and moves on its own.

The oracle is a second :class:`SymbolCore` that sees the genuine quotes only. The node's clock
runs with the genuine quotes (each arrives at its own stamp), and a hostile quote arrives at
some time between two genuine ones: it can then count for no more than a quote of its arrival.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.instruments import DEFAULT_INSTRUMENTS
from engine.positions import TrailingRule
from engine.quotes import QuoteLimits
from engine.symbol import QuoteOutcome, SymbolCore
from protocol.common import Side
from tests.engine.position_helpers import make_position

GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]
LIMITS = QuoteLimits()  # the defaults: 5 s of age, 5 s ahead, 2 % jumps
T0 = 1_767_225_600_000
MAX_TIME = 2**53  # the wire's largest time (protocol.types.TimeMs)

points = st.integers(199_000, 201_000)  # 199.000 .. 201.000 (points of 0.001): never a 2 % jump
level = st.one_of(st.none(), points)
positions = st.lists(
    st.tuples(st.sampled_from(Side), level, level, st.booleans()), min_size=1, max_size=30
)
genuine = st.lists(
    st.tuples(st.integers(1, 2_000), points, st.integers(0, 50)), min_size=1, max_size=40
)
wild_price = st.floats(min_value=0.01, max_value=1e8, allow_nan=False, allow_infinity=False)
hostile = st.lists(
    st.tuples(
        st.integers(0, 40),  # how many genuine quotes came before it (capped at their number)
        st.floats(0, 1),  # where it arrives between those and the next genuine quote
        st.sampled_from(["future", "micro", "past", "replay"]),
        st.integers(1, MAX_TIME),  # how far ahead (future), behind (past), or which (replay)
        wild_price,
        wild_price,
    ),
    max_size=40,
)


def _arm(core: SymbolCore, specs: list[tuple[Side, int | None, int | None, bool]]) -> None:
    for i, (side, sl, tp, trail) in enumerate(specs):
        p = make_position(
            i,
            side=side,
            open_price=200_000,
            sl=sl,
            tp=tp,
            trailing=TrailingRule(distance=30) if trail else None,
        )
        assert p.open_price is not None
        assert not core.arm(p.id, p.user_id, p.side, p.open_price, p.sl, p.tp, p.trailing)


Attack = tuple[int, float, str, int, float, float]


def _hostile(
    attack: Attack, quotes: list[tuple[float, float, int]]
) -> tuple[int, tuple[int, float, float, int]]:
    """``(genuine quotes before it, (clock at arrival, bid, ask, stamp))`` of one attack."""
    wanted, where, kind, amount, bid, ask = attack
    after = min(wanted, len(quotes))
    if after == 0:
        clock = T0
    else:
        last = quotes[after - 1][2]
        following = quotes[after][2] if after < len(quotes) else last + 1_000
        clock = last + int(where * (following - last))
    if kind == "replay" and after > 0:
        return after, (clock, *quotes[amount % after])
    if kind == "micro":
        return after, (clock, bid, ask, clock * 1000)
    if kind == "past":
        return after, (clock, bid, ask, max(0, clock - LIMITS.max_age_ms - amount))
    # From the future (also a replay with nothing genuine to replay yet).
    ahead = min(amount, MAX_TIME - clock)
    if ahead <= LIMITS.max_ahead_ms:
        if after == 0:
            ahead = LIMITS.max_ahead_ms + 1
        else:
            # Within the tolerated skew a quote is acted on like any other: a hostile one
            # there is a restamped copy of the latest genuine price.
            bid, ask = quotes[after - 1][:2]
    return after, (clock, bid, ask, clock + ahead)


def _acted(outcome: QuoteOutcome) -> tuple[object, object]:
    return outcome.fired, outcome.moved


@given(positions, genuine, hostile)
def test_hostile_quotes_never_hold_back_or_replace_genuine_ones(specs, steps, attacks) -> None:
    quotes: list[tuple[float, float, int]] = []  # genuine: bid, ask, stamp (= arrival)
    ts = T0
    for gap, bid, spread in steps:
        ts += gap
        quotes.append((bid / GOLD.scale, (bid + spread) / GOLD.scale, ts))

    oracle = SymbolCore(GOLD, LIMITS)
    _arm(oracle, specs)
    expected = [_acted(oracle.on_quote(b, a, t, t)) for b, a, t in quotes]

    # The hostile quotes in arrival order, each with the node's clock when it arrives.
    arrivals: dict[int, list[tuple[int, float, float, int]]] = {}
    for attack in sorted(attacks, key=lambda a: (a[0], a[1])):
        after, arrival = _hostile(attack, quotes)
        arrivals.setdefault(after, []).append(arrival)

    core = SymbolCore(GOLD, LIMITS)
    _arm(core, specs)
    for i in range(len(quotes) + 1):
        for clock, bid, ask, stamp in arrivals.get(i, []):
            outcome = core.on_quote(bid, ask, stamp, clock)
            assert not outcome.fired and not outcome.moved, (clock, bid, ask, stamp)
        if i < len(quotes):
            bid, ask, t = quotes[i]
            outcome = core.on_quote(bid, ask, t, t)
            assert outcome.rejected is None, (i, quotes[i])
            assert _acted(outcome) == expected[i], i
    assert (core.bid, core.ask) == (oracle.bid, oracle.ask)
    assert len(core) == len(oracle)
