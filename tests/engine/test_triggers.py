"""TriggerBook semantics, one rule a test (the oracle tests cover the combinations)."""

from __future__ import annotations

import pytest

from engine.triggers import KEEP, Trigger, TriggerBook, TriggerKind
from protocol.common import Side
from protocol.errors import UsageError

BUY, SELL, SL, TP = Side.BUY, Side.SELL, TriggerKind.SL, TriggerKind.TP


def book_at(bid: int, ask: int) -> TriggerBook:
    b = TriggerBook("XAUUSD")
    b.on_quote(bid, ask)
    return b


def test_long_is_watched_on_the_bid_short_on_the_ask() -> None:
    b = book_at(1000, 1004)
    b.register("long", BUY, sl=990, tp=1010)
    b.register("short", SELL, sl=1014, tp=994)
    assert b.on_quote(1009, 1013) == []  # long TP 1010 not reached by the bid
    assert b.on_quote(1010, 1014) == [
        Trigger("short", SL, SELL, 1014, 1014),  # ask touched the short's SL exactly
        Trigger("long", TP, BUY, 1010, 1010),  # bid touched the long's TP exactly
    ]


def test_exactly_at_the_level_fires() -> None:
    b = book_at(1000, 1002)
    b.register("a", BUY, sl=995, tp=None)
    assert b.on_quote(996, 998) == []
    assert b.on_quote(995, 997) == [Trigger("a", SL, BUY, 995, 995)]


def test_gap_fires_at_the_first_tick_past_with_the_tick_price() -> None:
    b = book_at(1000, 1002)
    b.register("a", BUY, sl=990, tp=None)
    assert b.on_quote(950, 952) == [Trigger("a", SL, BUY, 990, 950)]
    assert b.on_quote(940, 942) == []  # fired once only


def test_level_already_crossed_fires_on_register_and_is_not_armed() -> None:
    b = book_at(1000, 1002)
    assert b.register("a", BUY, sl=1001, tp=1100) == [Trigger("a", SL, BUY, 1001, 1000)]
    assert b.register("b", SELL, sl=1100, tp=1003) == [Trigger("b", TP, SELL, 1003, 1002)]
    assert "a" not in b and "b" not in b


def test_register_before_any_quote_arms_and_the_first_quote_fires() -> None:
    b = TriggerBook("X")
    assert b.register("a", BUY, sl=990, tp=None) == []
    assert b.on_quote(980, 982) == [Trigger("a", SL, BUY, 990, 980)]


def test_modify_moves_a_level_and_modify_past_the_market_fires() -> None:
    b = book_at(1000, 1002)
    b.register("a", BUY, sl=990, tp=1010)
    assert b.modify("a", sl=995) == []
    assert b.on_quote(992, 994) == [Trigger("a", SL, BUY, 995, 992)]
    b.register("c", BUY, sl=900, tp=None)
    assert b.modify("c", sl=993) == [Trigger("c", SL, BUY, 993, 992)]


def test_modify_none_removes_a_level_and_keep_keeps_it() -> None:
    b = book_at(1000, 1002)
    b.register("a", BUY, sl=990, tp=1010)
    b.modify("a", sl=None, tp=KEEP)
    assert b.levels("a") == (None, 1010)
    assert b.on_quote(900, 902) == []
    assert b.on_quote(1011, 1013) == [Trigger("a", TP, BUY, 1010, 1011)]


def test_cancel_disarms() -> None:
    b = book_at(1000, 1002)
    b.register("a", BUY, sl=990, tp=None)
    assert b.cancel("a") is True and b.cancel("a") is False
    assert b.on_quote(900, 902) == []


def test_order_is_sl_first_then_crossing_order_then_time() -> None:
    b = book_at(1000, 1002)
    b.register("late", BUY, sl=995, tp=None)
    b.register("high", BUY, sl=998, tp=None)
    b.register("early", BUY, sl=995, tp=None)
    b.modify("late", sl=996)
    b.modify("late", sl=995)  # re-armed: now behind "early" at the same price
    assert [t.position_id for t in b.on_quote(990, 992)] == ["high", "early", "late"]


def test_a_position_fires_once_and_sl_wins_over_tp() -> None:
    b = TriggerBook("X")
    b.register("inverted", BUY, sl=1000, tp=990)
    assert b.on_quote(995, 997) == [Trigger("inverted", SL, BUY, 1000, 995)]


def test_duplicate_register_is_a_usage_error() -> None:
    b = TriggerBook("X")
    b.register("a", BUY, sl=1, tp=None)
    with pytest.raises(UsageError):
        b.register("a", BUY, sl=1, tp=None)


def test_modify_unknown_position_raises_key_error() -> None:
    with pytest.raises(KeyError):
        TriggerBook("X").modify("nope", sl=1)


def test_compaction_keeps_the_book_exact() -> None:
    b = book_at(10_000, 10_002)
    for i in range(20_000):
        b.register(f"p{i}", BUY, sl=5_000 + i % 1000, tp=20_000)
    for i in range(20_000):
        if i % 10:
            b.cancel(f"p{i}")
    assert len(b) == 2_000
    assert sum(len(h) for h in b._ladders) < 3 * 2 * 2_000 + 4096 * 2
    fired = b.on_quote(4_000, 4_002)
    assert len(fired) == 2_000


def test_compaction_keeps_the_nearest_levels_current() -> None:
    book = TriggerBook("XAUUSD")
    for i in range(6000):  # longs and shorts, SL and TP, all away from 150,000 (nearest: p0, p1)
        if i % 2:
            book.register(f"p{i}", Side.BUY, 100_000 - i, 200_000 + i)
        else:
            book.register(f"p{i}", Side.SELL, 200_000 + i, 100_000 - i)
    assert book.on_quote(150_000, 150_010) == []
    for i in range(3000):  # the nearest levels go first, so every ladder top goes stale
        assert book.cancel(f"p{i}")
    assert book._stale == 0  # the 3,000th cancel compacted the ladders
    book.check()
    assert book.on_quote(150_000, 150_010) == []


def test_a_storm_fired_in_steps_leaves_its_compaction_to_tidy() -> None:
    b = book_at(10_000, 10_002)
    for i in range(10_000):
        b.register(f"p{i}", BUY, sl=9_000 - i % 500, tp=20_000 + i)
    fired = b.on_quote(5_000, 5_002, max_fired=4_000)
    while b.pending:
        fired += b.fire_pending(4_000)
    assert sorted(t.position_id for t in fired) == sorted(f"p{i}" for i in range(10_000))
    assert len(b) == 0
    assert b._stale == 10_000  # the TP items, skipped if they ever surfaced
    b.check()
    assert b.tidy() is True
    assert b._stale == 0 and not any(b._ladders)
    assert b.tidy() is False  # nothing left to do
    b.register("late", BUY, sl=4_000, tp=20_001)
    assert b.on_quote(20_001, 20_003) == [Trigger("late", TP, BUY, 20_001, 20_001)]


def test_triggers_name_the_owner_their_position_was_registered_with() -> None:
    b = book_at(1000, 1004)
    b.register("a", BUY, sl=990, tp=None, owner="u1")
    assert b.register("now", BUY, sl=1001, tp=None, owner="u2") == [  # crossed: fires at once
        Trigger("now", SL, BUY, 1001, 1000, "u2")
    ]
    fresh = TriggerBook("X")  # before any quote: the bulk path
    fresh.register_many([("b", SELL, 1014, None), ("c", SELL, 1015, None)], ["u3", "u4"])
    assert b.owner("a") == "u1" and fresh.owner("c") == "u4" and b.owner("nope") is None
    assert b.on_quote(990, 994) == [Trigger("a", SL, BUY, 990, 990, "u1")]
    assert b.owner("a") is None  # fired: out of the book
    assert fresh.on_quote(1010, 1015) == [
        Trigger("b", SL, SELL, 1014, 1015, "u3"),
        Trigger("c", SL, SELL, 1015, 1015, "u4"),
    ]
    with pytest.raises(UsageError):
        TriggerBook("Y").register_many([("d", BUY, 1, None)], ["u5", "u6"])
