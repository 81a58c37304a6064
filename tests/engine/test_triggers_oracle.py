"""TriggerBook against brute force: random operations (hypothesis) and the real XAUUSD day."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.marketdata import load_ticks
from engine import DEFAULT_INSTRUMENTS
from engine.triggers import KEEP, Trigger, TriggerBook, TriggerKind
from protocol.common import Side
from tests.engine.oracle import OracleBook

# Prices in a narrow band, so that quotes land exactly on levels, repeat, and gap past many.
price = st.integers(90, 110)
level = st.one_of(st.none(), price)
pid_index = st.integers(0, 11)

register = st.tuples(st.just("register"), pid_index, st.sampled_from(Side), level, level)
modify = st.tuples(
    st.just("modify"), pid_index, st.one_of(st.just(KEEP), level), st.one_of(st.just(KEEP), level)
)
cancel = st.tuples(st.just("cancel"), pid_index)
quote = st.tuples(st.just("quote"), price, st.integers(0, 4))  # bid, spread
operations = st.lists(st.one_of(register, modify, cancel, quote, quote, quote), max_size=80)


@given(operations)
def test_book_matches_oracle(ops: list[tuple]) -> None:
    book, oracle = TriggerBook("T"), OracleBook()
    for op in ops:
        kind = op[0]
        if kind == "register":
            _, i, side, sl, tp = op
            pid = f"p{i}"
            if pid in oracle.armed:
                continue
            assert book.register(pid, side, sl, tp) == oracle.register(pid, side, sl, tp)
        elif kind == "modify":
            _, i, sl, tp = op
            pid = f"p{i}"
            if pid not in oracle.armed:
                with pytest.raises(KeyError):
                    book.modify(pid, sl=sl, tp=tp)
                continue
            assert book.modify(pid, sl=sl, tp=tp) == oracle.modify(pid, sl, tp, KEEP)
        elif kind == "cancel":
            pid = f"p{op[1]}"
            assert book.cancel(pid) == oracle.cancel(pid)
        else:
            _, bid, spread = op
            assert book.on_quote(bid, bid + spread) == oracle.on_quote(bid, bid + spread)
        assert set(book.position_ids()) == set(oracle.armed)
        book.check()
        for pid, armed in oracle.armed.items():
            assert book.levels(pid) == (armed.sl, armed.tp)


@given(
    st.lists(st.tuples(st.sampled_from(Side), level, level), min_size=1, max_size=300),
    st.lists(st.tuples(price, st.integers(0, 3)), min_size=1, max_size=60),
)
def test_many_positions_and_compaction(positions: list, quotes: list) -> None:
    """Many positions, with every quote compared; exercises lazy deletion at scale."""
    book, oracle = TriggerBook("T"), OracleBook()
    for i, (side, sl, tp) in enumerate(positions):
        assert book.register(f"p{i}", side, sl, tp) == oracle.register(f"p{i}", side, sl, tp)
    for bid, spread in quotes:
        assert book.on_quote(bid, bid + spread) == oracle.on_quote(bid, bid + spread)
        book.check()
    assert len(book) == len(oracle.armed)


def _first_fire(
    side: Side, sl: int, tp: int, start: int, bids: np.ndarray, asks: np.ndarray
) -> tuple[int, TriggerKind] | None:
    """Brute force over ticks: index of the first tick >= start crossing sl or tp (SL wins)."""
    prices = bids[start:] if side is Side.BUY else asks[start:]
    if side is Side.BUY:
        hit_sl, hit_tp = prices <= sl, prices >= tp
    else:
        hit_sl, hit_tp = prices >= sl, prices <= tp
    hits = np.flatnonzero(hit_sl | hit_tp)
    if hits.size == 0:
        return None
    i = int(hits[0])
    return start + i, TriggerKind.SL if hit_sl[i] else TriggerKind.TP


@pytest.mark.slow
def test_replay_real_xauusd_day_against_brute_force() -> None:
    """4,000 random positions armed through the real day (gap included), against brute force."""
    instrument = DEFAULT_INSTRUMENTS["XAUUSD"]
    bids, asks = load_ticks("XAUUSD").points(instrument.digits)
    rng = np.random.default_rng(20140502)
    n_ticks, n_positions = bids.size, 4000
    # Positions arm at random ticks; levels a few dollars to tens of dollars from the market,
    # some within the spread or already crossed (fire-on-register).
    arm_at = np.sort(rng.integers(0, n_ticks - 1, size=n_positions))
    sides = rng.integers(0, 2, size=n_positions)
    sl_dist = rng.integers(-300, 25_000, size=n_positions)
    tp_dist = rng.integers(-300, 25_000, size=n_positions)

    expected: dict[int, list[tuple[tuple, Trigger]]] = {}
    registered_fire: dict[str, Trigger] = {}
    plan: dict[int, list[tuple[str, Side, int, int]]] = {}
    for k in range(n_positions):
        side = Side.BUY if sides[k] == 0 else Side.SELL
        at = int(arm_at[k])
        ref = int(bids[at - 1]) if side is Side.BUY else int(asks[at - 1])
        if at == 0:
            ref = int(bids[0]) if side is Side.BUY else int(asks[0])
        sl = ref - side.sign * int(sl_dist[k])
        tp = ref + side.sign * int(tp_dist[k])
        pid = f"p{k:05d}"
        plan.setdefault(at, []).append((pid, side, sl, tp))
        # Registered just before tick `at`: the last quote is tick at-1 (fire on register).
        if at > 0:
            immediate = _first_fire(side, sl, tp, at - 1, bids[:at], asks[:at])
            if immediate is not None:
                kind = immediate[1]
                lvl = sl if kind is TriggerKind.SL else tp
                price_ = int(bids[at - 1]) if side is Side.BUY else int(asks[at - 1])
                registered_fire[pid] = Trigger(pid, kind, side, lvl, price_)
                continue
        hit = _first_fire(side, sl, tp, at, bids, asks)
        if hit is None:
            continue
        tick, kind = hit
        lvl = sl if kind is TriggerKind.SL else tp
        price_ = int(bids[tick]) if side is Side.BUY else int(asks[tick])
        if kind is TriggerKind.SL:
            key = -lvl if side is Side.BUY else lvl
        else:
            key = lvl if side is Side.BUY else -lvl
        # Same-level ties: armed order is registration order (sl before tp), i.e. k.
        order = (int(kind), 0 if side is Side.BUY else 1, key, k)
        expected.setdefault(tick, []).append((order, Trigger(pid, kind, side, lvl, price_)))

    book = TriggerBook("XAUUSD")
    got_register: dict[str, Trigger] = {}
    fired_total = 0
    bid_list, ask_list = bids.tolist(), asks.tolist()
    for tick in range(n_ticks):
        for pid, side, sl, tp in plan.get(tick, ()):
            for t in book.register(pid, side, sl, tp):
                got_register[pid] = t
        got = book.on_quote(bid_list[tick], ask_list[tick])
        want = [t for _, t in sorted(expected.get(tick, []), key=lambda x: x[0])]
        assert got == want, f"tick {tick}"
        fired_total += len(got)
    assert got_register == registered_fire
    assert fired_total > 1000, "the workload should fire plenty of triggers"
    # The real gap (bid -5.568 in one tick) must have fired several positions at once.
    gap_tick = int(np.argmax(-np.diff(bids))) + 1
    assert len(expected.get(gap_tick, [])) >= 1
