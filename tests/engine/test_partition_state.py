"""Taking a partition's users out of the state and the books, and putting them back."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.instruments import DEFAULT_INSTRUMENTS
from engine.records import CommandIssued, GuardSaved
from engine.state import EngineState
from engine.symbol import SymbolCore
from engine.triggers import TriggerBook
from protocol.common import Side
from protocol.device import CloseCommand
from tests.engine.position_helpers import make_position


def test_drop_users_then_merge_gives_the_state_back() -> None:
    state = EngineState()
    for i in range(9):
        state.positions[f"p{i}"] = make_position(i, open_price=1_950_000, sl=1_940_000)
    command = CloseCommand(
        command_id="p1.close.1", ticket=1, symbol="XAUUSD", volume=0.1, deadline_ms=1
    )
    state.commands["p1.close.1"] = CommandIssued(
        command=command, position_id="p1", user_id="u1", device_id="d", issued_ms=0
    )
    state.guards["u1"] = GuardSaved(
        user_id="u1", peak=1.0, level=0, opens_blocked=False, balance=1.0, equity=1.0, time_ms=0
    )
    before = state.snapshot()
    taken = state.drop_users({"u1"})
    assert set(taken.positions) == {"p1", "p4", "p7"} and set(taken.commands) == {"p1.close.1"}
    assert "u1" in taken.guards and "u1" not in state.guards
    assert all(p.user_id != "u1" for p in state.positions.values()) and not state.commands
    state.merge(taken)
    after = state.snapshot()
    assert sorted(p.id for p in after.positions) == sorted(p.id for p in before.positions)
    assert after.commands == before.commands and after.guards == before.guards


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 50), st.integers(1, 50), st.booleans()), max_size=40),
    st.sets(st.integers(0, 39)),
)
def test_cancel_many_leaves_exactly_the_others_armed(levels, gone) -> None:
    """Against brute force: after cancel_many, a quote through every level fires exactly the
    positions not cancelled."""
    book = TriggerBook("XAUUSD")
    for i, (sl, tp, sell) in enumerate(levels):
        side = Side.SELL if sell else Side.BUY
        sl_level, tp_level = (100 + sl, 100 - tp) if sell else (100 - sl, 100 + tp)
        book.register(f"p{i}", side, sl_level, tp_level, owner="u")
    removed = book.cancel_many(f"p{i}" for i in gone)
    assert removed == len([i for i in gone if i < len(levels)])
    book.check()
    fired = {t.position_id for t in book.on_quote(0, 0)} | {
        t.position_id for t in book.on_quote(1000, 1000)
    }
    assert fired == {f"p{i}" for i in range(len(levels)) if i not in gone}


def test_disarm_many_takes_trailing_rules_too() -> None:
    from engine.positions import TrailingRule

    core = SymbolCore(DEFAULT_INSTRUMENTS["XAUUSD"])
    rule = TrailingRule(distance=1_000)
    for i in range(4):
        core.arm(f"p{i}", "u1" if i % 2 else "u2", Side.BUY, 1_950_000, 1_940_000, None, rule)
    assert core.disarm_many(["p1", "p3", "nope"]) == 2
    assert len(core) == 2 and "p1" not in core.trailing and "p0" in core.trailing
