"""TriggerBook against brute force: random operations (hypothesis) and the real XAUUSD day."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import DEFAULT_INSTRUMENTS, triggers
from engine.triggers import KEEP, Trigger, TriggerBook, TriggerKind
from protocol.common import Side
from protocol.errors import UsageError
from sim.market_data import load_ticks
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


@pytest.fixture(scope="module", params=[4096, 1], ids=["compact-4096", "compact-1"], autouse=True)
def _compact_min(request: pytest.FixtureRequest) -> object:
    """Every test twice: with the book's real compaction threshold (a small book's levels stay
    in its ladders' overflow) and with one of 1, so that small books compact often: their
    levels move to the ladders' sorted runs, and quotes cross runs and overflows together."""
    saved = triggers._COMPACT_MIN
    triggers._COMPACT_MIN = request.param
    yield request.param
    triggers._COMPACT_MIN = saved


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


@given(
    st.lists(st.tuples(st.sampled_from(Side), level, level), min_size=1, max_size=200),
    st.lists(st.integers(1, 60), min_size=1, max_size=4),
    st.one_of(st.none(), st.tuples(price, st.integers(0, 3))),
    st.lists(st.tuples(price, st.integers(0, 3)), min_size=1, max_size=40),
)
def test_register_many_matches_registering_one_by_one(
    positions: list, chunks: list, first_quote: tuple | None, quotes: list
) -> None:
    """Bulk arming (recovery's): before any quote (the bulk path) or after one (what the last
    quote crossed fires at once), in chunks; then every quote compared with the oracle."""
    book, oracle = TriggerBook("T"), OracleBook()
    if first_quote is not None:
        bid, spread = first_quote
        assert book.on_quote(bid, bid + spread) == oracle.on_quote(bid, bid + spread)
    start = k = 0
    while start < len(positions):
        chunk = positions[start : start + chunks[k % len(chunks)]]
        levels = [(f"p{start + j}", side, sl, tp) for j, (side, sl, tp) in enumerate(chunk)]
        expected = [t for args in levels for t in oracle.register(*args)]
        assert book.register_many(levels) == expected
        book.check()
        start, k = start + len(chunk), k + 1
    for pid, armed in oracle.armed.items():
        assert book.levels(pid) == (armed.sl, armed.tp)
    for bid, spread in quotes:
        assert book.on_quote(bid, bid + spread) == oracle.on_quote(bid, bid + spread)
        book.check()
    assert set(book.position_ids()) == set(oracle.armed)


def test_register_many_refuses_a_position_twice_and_arms_nothing() -> None:
    book = TriggerBook("T")
    book.register("a", Side.BUY, 90, 110)
    for levels in (
        [("b", Side.BUY, 90, 110), ("a", Side.SELL, 110, 90)],
        [("b", Side.BUY, 90, 110), ("b", Side.SELL, 110, 90)],
    ):
        with pytest.raises(UsageError):
            book.register_many(levels)
        assert book.position_ids() == ["a"]
    assert book.register_many([]) == []


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


@given(operations, st.integers(1, 3))
def test_stepped_firing_matches_oracle(ops: list[tuple], step: int) -> None:
    """A quote allowed to fire only ``step`` levels at a time, the rest through fire_pending()
    until none is left (as the symbol actor does before its next input): together the same
    triggers in the same order as firing all at once."""
    book, oracle = TriggerBook("T"), OracleBook()
    for op in ops:
        kind = op[0]
        if kind == "register":
            _, i, side, sl, tp = op
            if f"p{i}" not in oracle.armed:
                assert book.register(f"p{i}", side, sl, tp) == oracle.register(
                    f"p{i}", side, sl, tp
                )
        elif kind == "modify":
            _, i, sl, tp = op
            if f"p{i}" in oracle.armed:
                assert book.modify(f"p{i}", sl=sl, tp=tp) == oracle.modify(f"p{i}", sl, tp, KEEP)
        elif kind == "cancel":
            assert book.cancel(f"p{op[1]}") == oracle.cancel(f"p{op[1]}")
        else:
            _, bid, spread = op
            fired = book.on_quote(bid, bid + spread, max_fired=step)
            assert len(fired) <= step
            while book.pending:
                more = book.fire_pending(step)
                assert 0 < len(more) <= step or not book.pending
                fired += more
            assert fired == oracle.on_quote(bid, bid + spread)
        assert set(book.position_ids()) == set(oracle.armed)
        book.check()


@given(
    st.lists(st.tuples(st.sampled_from(Side), level, level), min_size=1, max_size=60),
    st.tuples(price, st.integers(0, 3)),
    st.lists(st.tuples(st.sampled_from(["cancel", "modify", "register"]), pid_index, level)),
    st.tuples(price, st.integers(0, 3)),
)
def test_changes_between_steps(
    positions: list, gap: tuple[int, int], changes: list, after: tuple[int, int]
) -> None:
    """While a storm's fires are pending, the book still holds those positions: a cancel
    removes one for good, a modify re-arms it (firing at once if the gap crossed the new
    level too), a register is judged against the gap quote; the next quote fires whatever
    is still pending first. Whatever the interleaving: nothing fires twice, nothing stays
    pending, what fired has left the book and the ladders stay consistent."""
    book = TriggerBook("T")
    for i, (side, sl, tp) in enumerate(positions):
        book.register(f"p{i}", side, sl, tp)
    bid, spread = gap
    first = book.on_quote(bid, bid + spread, max_fired=1)
    later: list[Trigger] = list(first)
    gone: set[str] = {t.position_id for t in first}
    for action, i, lvl in changes:
        pid = f"p{i}"
        if action == "cancel":
            if book.cancel(pid):
                gone.add(pid)
        elif action == "modify":
            if pid in book:
                fired = book.modify(pid, sl=lvl)
                later += fired
                gone |= {t.position_id for t in fired}
        elif pid not in book and pid not in gone:
            fired = book.register(pid, Side.BUY, lvl, None)
            later += fired
            gone |= {t.position_id for t in fired}
        book.check()
    later += book.on_quote(after[0], after[0] + after[1])
    assert book.pending == 0
    ids = [t.position_id for t in later]
    assert len(ids) == len(set(ids))  # nothing fires twice
    assert not set(ids) & set(book.position_ids())  # what fired has left the book
    book.check()


def test_a_pending_fire_cancelled_never_fires() -> None:
    book = TriggerBook("T")
    for i in range(5):
        book.register(f"p{i}", Side.BUY, 100 - i, None)
    assert [t.position_id for t in book.on_quote(90, 91, max_fired=2)] == ["p0", "p1"]
    assert book.pending == 3 and "p3" in book and book.levels("p3") == (97, None)
    assert book.cancel("p3")
    assert [t.position_id for t in book.on_quote(110, 111)] == ["p2", "p4"]  # pending first
    assert book.pending == 0 and len(book) == 0


def test_steps_keep_the_order_across_ladders() -> None:
    """A wide quote crossing long SLs, short SLs and TPs at once, fired one level a step."""
    book, oracle = TriggerBook("T"), OracleBook()
    arms = [("a", Side.BUY, 100, 120), ("b", Side.BUY, 99, None), ("c", Side.SELL, 101, 80)]
    arms += [("d", Side.SELL, 102, None), ("e", Side.BUY, None, 90), ("f", Side.SELL, None, 110)]
    for pid, side, sl, tp in arms:
        book.register(pid, side, sl, tp)
        oracle.register(pid, side, sl, tp)
    fired = book.on_quote(95, 105, max_fired=1)
    while book.pending:
        fired += book.fire_pending(1)
    assert fired == oracle.on_quote(95, 105)
    assert len({t.kind for t in fired}) == 2 and len({t.side for t in fired}) == 2
