"""Stop rules reach positions (signals, user defaults, a user's change), and the close-retry
backoff follows its settings. Plain synchronous tests of the cores."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.effects import Arm
from engine.lifecycle import PositionState
from engine.positions import BreakEvenRule, TrailingRule
from engine.records import PositionSaved
from engine.stoprules import (
    BreakEvenDefault,
    LevelChanges,
    TrailingDefault,
    break_even_rule,
    trailing_rule,
    trailing_spec,
)
from engine.symbol import SymbolCore
from engine.user import Timing, UserCore
from gateway.composition import timing_of
from gateway.config import load_settings
from protocol.device import Ack, CloseCommand, ModifyCommand
from protocol.errors import ConfigError, Conflict, NotFound, Refused, SizingRefused
from protocol.signals import BreakEvenSpec, TrailingSpec
from tests.engine.user_helpers import GOLD, T0, P, core, fire, opened, signal


def _approve(c: UserCore, **over: object) -> UserCore:
    c.decide(
        approval_id="a1",
        signal=signal(**over),
        decision="approve",
        bid=1950.0,
        ask=1950.3,
        now_ms=T0 + 1000,
    )
    return c


def _position(c: UserCore):
    (p,) = c.positions.values()
    return p


def test_a_signals_rules_reach_the_position_in_points() -> None:
    c = _approve(
        core(),
        trailing=TrailingSpec(distance=2.0, step=0.5),
        break_even=BreakEvenSpec(trigger=3.0, offset=0.25),
    )
    p = _position(c)
    assert p.trailing == TrailingRule(distance=P(2.0), step=P(0.5), activation=0)
    assert p.break_even == BreakEvenRule(trigger=P(3.0), offset=P(0.25))


def test_user_defaults_in_pips_fill_in_what_the_signal_leaves_out() -> None:
    c = core(
        trailing=TrailingDefault(distance_pips=30, step_pips=5),
        break_even=BreakEvenDefault(trigger_pips=20, offset_pips=2),
    )
    _approve(c, trailing=TrailingSpec(distance=1.5))
    p = _position(c)
    assert p.trailing == TrailingRule(distance=P(1.5), step=0, activation=0)  # the signal's
    assert p.break_even == BreakEvenRule(trigger=P(2.0), offset=P(0.2))  # gold's pip: 0.1


def test_no_rule_anywhere_leaves_the_position_without_one() -> None:
    p = _position(_approve(core()))
    assert p.trailing is None and p.break_even is None


def test_rules_closer_than_the_stops_level_are_refused_and_nothing_is_recorded() -> None:
    strict = msgspec.structs.replace(GOLD, stops_level=P(1.0))
    with pytest.raises(SizingRefused) as refused:
        trailing_rule(strict, TrailingSpec(distance=0.5))
    assert refused.value.details["reason"] == "trailing_distance"
    with pytest.raises(SizingRefused) as refused:
        break_even_rule(strict, BreakEvenSpec(trigger=2.0, offset=1.5))
    assert refused.value.details["reason"] == "break_even"
    c = core()
    with pytest.raises(SizingRefused):
        _approve(c, break_even=BreakEvenSpec(trigger=1.0, offset=1.0))
    assert c.positions == {} and c.approvals == {}


@given(
    distance=st.integers(1, 10**6),
    step=st.integers(0, 10**6),
    activation=st.integers(0, 10**6),
)
def test_a_rule_shown_to_a_client_converts_back_to_the_same_points(
    distance: int, step: int, activation: int
) -> None:
    rule = TrailingRule(distance=distance, step=step, activation=activation)
    assert trailing_rule(GOLD, trailing_spec(GOLD, rule)) == rule


# -- a user's change of one position ----------------------------------------------------------


def _modify(c: UserCore, pid: str, now: int = T0 + 5000, **changes: object):
    return c.modify_position(pid, LevelChanges(**changes), 1950.0, 1950.3, now)


def test_a_new_sl_is_journaled_rearmed_and_sent_as_a_modify() -> None:
    c = core()
    pid = opened(c)
    fx = _modify(c, pid, sl=1948.0, tp=1958.0)
    (saved,) = [r for r in fx.records if isinstance(r, PositionSaved)]
    assert (saved.position.sl, saved.position.tp) == (P(1948.0), P(1958.0))
    assert fx.arms == [Arm(saved.position)]
    assert fx.changed == [saved.position]
    [(_, modify)] = c.tick(T0 + 5000).commands
    assert isinstance(modify, ModifyCommand)
    assert (modify.sl, modify.tp, modify.command_id) == (1948.0, 1958.0, f"{pid}.modify.1")


def test_a_rule_change_alone_sends_no_modify_and_a_null_removes() -> None:
    c = core()
    pid = opened(c)
    fx = _modify(c, pid, trailing=TrailingSpec(distance=2.0))
    assert c.positions[pid].trailing == TrailingRule(distance=P(2.0), step=0)
    assert c.positions[pid].sl == P(1945.0)  # a field left out keeps its value
    assert [type(a) for a in fx.arms] == [Arm]
    assert not c.tick(T0 + 5000).commands
    _modify(c, pid, trailing=None, tp=None)
    assert c.positions[pid].trailing is None and c.positions[pid].tp is None
    assert not _modify(c, pid)  # nothing asked, nothing done (no record)


def test_bad_changes_refuse_and_change_nothing() -> None:
    c = core()
    pid = opened(c)
    before = c.positions[pid]
    for changes in (
        {"sl": 1951.0},  # above a buy's bid
        {"tp": 1949.0},
        {"break_even": BreakEvenSpec(trigger=1.0, offset=2.0)},
    ):
        with pytest.raises(SizingRefused):
            _modify(c, pid, **changes)
    with pytest.raises(Refused):  # no quote yet
        c.modify_position(pid, LevelChanges(sl=1940.0), None, None, T0 + 5000)
    with pytest.raises(NotFound):
        _modify(c, "P-none", sl=1940.0)
    assert c.positions[pid] == before and not c.tick(T0 + 5000).commands
    fire(c, pid)  # closing now
    with pytest.raises(Conflict):
        _modify(c, pid, sl=1940.0)


def test_a_rule_set_by_hand_moves_the_stop_in_the_symbol_core() -> None:
    c = core()
    pid = opened(c)  # filled at 1950.3
    fx = _modify(c, pid, break_even=BreakEvenSpec(trigger=2.0, offset=0.5))
    symbol = SymbolCore(GOLD)
    (arm,) = fx.arms
    p = arm.position
    assert p.open_price is not None
    symbol.arm(p.id, p.user_id, p.side, p.open_price, p.sl, p.tp, p.trailing, p.break_even)
    outcome = symbol.on_quote(1952.4, 1952.7, T0 + 6000, T0 + 6000)
    [(_, move)] = outcome.moved
    assert move.sl == P(1950.8)


# -- the close-retry backoff ------------------------------------------------------------------


def _close_attempts(c: UserCore) -> tuple[list[int], PositionState]:
    """Refuse every close attempt as retryable; the pauses between attempts and the end."""
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    now, gaps = T0 + 2000, []
    for _ in range(50):  # bounded: far more than any setting allows
        c.on_result(cid, "retryable", Ack(command_id=cid, retcode=10004), now)
        due = c.next_due_ms()
        if due is None:
            break
        assert not c.tick(due - 1).commands  # not a millisecond before its backoff
        [(_, retry)] = c.tick(due).commands
        assert isinstance(retry, CloseCommand)
        gaps.append(due - now)
        now, cid = due, retry.command_id
    return gaps, c.recent_closed.get(pid, c.positions.get(pid)).state


def test_the_default_close_backoff_is_five_attempts_doubling_from_200_ms() -> None:
    gaps, state = _close_attempts(core())
    assert gaps == [200, 400, 800, 1600] and state is PositionState.CLOSE_FAILED


def test_changed_settings_change_the_close_attempts() -> None:
    settings = load_settings(
        {}, close_max_attempts=3, retry_backoff_ms=50, retry_backoff_max_ms=80, feed="none"
    )
    c = core()
    c.timing = timing_of(settings)
    assert c.timing == Timing(max_close_attempts=3, retry_base=50, retry_cap=80)
    gaps, state = _close_attempts(c)
    assert gaps == [50, 80] and state is PositionState.CLOSE_FAILED


@pytest.mark.parametrize(
    "bad",
    [
        {"close_max_attempts": 0},
        {"close_max_attempts": 21},
        {"retry_backoff_ms": 5},
        {"retry_backoff_ms": 500, "retry_backoff_max_ms": 400},
        {"retry_backoff_max_ms": 600_001},
    ],
)
def test_retry_settings_out_of_range_stop_the_start(bad: dict) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({}, **bad)
    assert next(iter(bad)).upper() in str(error.value) or "RETRY" in str(error.value)
