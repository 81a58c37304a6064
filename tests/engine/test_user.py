"""The user core's flows, as plain function calls (no trio, no sockets)."""

from __future__ import annotations

import pytest

from engine.effects import Arm, Disarm
from engine.guards import DrawdownLimits
from engine.lifecycle import PositionState
from engine.records import ApprovalSaved, CommandIssued, PositionSaved, ReconciliationRecorded
from engine.sizing import UserSettings
from engine.stoprules import LevelChanges
from engine.trailing import LevelMove
from engine.user import DeviceInfo, UserCore
from protocol.common import AlertLevel, Side
from protocol.device import (
    Ack,
    CloseCommand,
    EventKind,
    ModifyCommand,
    OpenCommand,
    PositionEvent,
    TerminalPosition,
)
from protocol.errors import Conflict, Forbidden, GuardBlocked, LateSignal, NotFound, Refused
from tests.engine.user_helpers import GOLD, T0, P, approved, core, fire, opened, signal


def test_approval_opens_with_broker_stops_and_journals_in_order() -> None:
    c = core()
    approval, fx = c.decide(
        approval_id="a1",
        signal=signal(),
        decision="approve",
        bid=1950.0,
        ask=1950.3,
        now_ms=T0 + 1000,
        ip="10.0.0.1",
        user_agent="ua",
    )
    [(device, cmd)] = fx.commands
    assert device == "d1" and isinstance(cmd, OpenCommand)
    pid = approval.position_id
    assert cmd.command_id == f"{pid}.open.1" and cmd.client_id == f"tw:{pid}"
    assert (cmd.sl, cmd.tp, cmd.volume, cmd.price) == (1945.0, 1960.0, 0.01, 1950.3)
    assert [type(r) for r in fx.records] == [ApprovalSaved, PositionSaved, CommandIssued]
    assert c.positions[pid].state is PositionState.PENDING_OPEN
    assert approval.ip == "10.0.0.1" and approval.user_agent == "ua"


def test_decisions_are_owned_and_made_once() -> None:
    c = core()
    with pytest.raises(Forbidden):
        c.decide(
            approval_id="a0",
            signal=signal(audience=["u2"]),
            decision="approve",
            bid=1950.0,
            ask=1950.3,
            now_ms=T0,
        )
    c.decide(approval_id="a1", signal=signal(), decision="reject", bid=None, ask=None, now_ms=T0)
    with pytest.raises(Conflict) as again:
        c.decide(
            approval_id="a2", signal=signal(), decision="approve", bid=1950.0, ask=1950.3, now_ms=T0
        )
    assert again.value.details["decision"] == "reject"
    # One decision per signal whatever its version: a new version does not reopen it.
    with pytest.raises(Conflict):
        c.decide(
            approval_id="a3",
            signal=signal(version=2),
            decision="reject",
            bid=None,
            ask=None,
            now_ms=T0,
        )


def test_refusals_record_nothing() -> None:
    c = UserCore("u1")
    with pytest.raises(Refused, match="no connected device"):
        c.decide(
            approval_id="a1", signal=signal(), decision="approve", bid=1950.0, ask=1950.3, now_ms=T0
        )
    assert not c.approvals
    c.on_device(DeviceInfo("d1", {"XAUUSD": GOLD}), T0)
    with pytest.raises(Refused, match="no price"):
        c.decide(
            approval_id="a1", signal=signal(), decision="approve", bid=None, ask=None, now_ms=T0
        )
    assert not c.approvals and not c.positions


def test_breach_close_ack_closed_with_fill_and_pl() -> None:
    c = core()
    pid = opened(c)
    assert c.positions[pid].state is PositionState.OPEN
    fx = fire(c, pid)
    [(_, close)] = fx.commands
    assert isinstance(close, CloseCommand) and close.command_id == f"{pid}.close.1"
    assert close.ticket == 555 and close.reason == "sl" and close.volume == 0.01
    p = c.positions[pid]
    assert p.state is PositionState.CLOSING and p.trigger_price == P(1944.5)
    fx = c.on_result(
        close.command_id,
        "done",
        Ack(command_id=close.command_id, retcode=10009, fill_price=1944.4),
        T0 + 2100,
    )
    closed = c.recent_closed[pid]
    assert closed.state is PositionState.CLOSED and closed.close_price == P(1944.4)
    assert closed.realized_pl == pytest.approx((1944.4 - 1950.3) * 0.01 * 100)
    assert pid not in c.positions


def test_a_trigger_for_a_position_not_open_does_nothing() -> None:
    c = core()
    pid = opened(c)
    fire(c, pid)
    assert not fire(c, pid).commands  # already closing


def test_retryable_close_retries_with_backoff_and_new_ids_then_fails() -> None:
    c = core()
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    now = T0 + 2000
    for attempt in range(2, 6):
        fx = c.on_result(cid, "retryable", Ack(command_id=cid, retcode=10004), now)
        assert c.positions[pid].state is PositionState.CLOSING and not fx.commands
        assert not c.tick(now + 1).commands  # not before its backoff
        now += 10_000
        [(_, retry)] = c.tick(now).commands
        assert retry.command_id == f"{pid}.close.{attempt}"
        cid = retry.command_id
    fx = c.on_result(cid, "retryable", Ack(command_id=cid, retcode=10004), now)
    assert c.positions[pid].state is PositionState.CLOSE_FAILED
    assert [a.level for a in fx.alerts] == [AlertLevel.CRITICAL]


def test_final_rejection_fails_and_a_new_close_never_reuses_an_id() -> None:
    c = core()
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    fx = c.on_result(
        cid, "final", Ack(command_id=cid, retcode=10018, result_text="closed"), T0 + 3000
    )
    assert c.positions[pid].state is PositionState.CLOSE_FAILED
    assert fx.alerts[0].kind == "close_failed"
    [(_, again)] = c.close_position(pid, "manual", T0 + 4000).commands
    assert again.command_id == f"{pid}.close.2"


def test_link_lost_then_snapshot_says_closed_no_resend() -> None:
    c = core()
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    c.on_link_lost([cid], T0 + 3000)
    assert c.positions[pid].state is PositionState.UNKNOWN
    fx = c.on_snapshot("d1", [], T0 + 5000)
    assert not fx.commands
    assert c.recent_closed[pid].state is PositionState.CLOSED
    assert c.recent_closed[pid].close_reason == "sl"


def test_link_lost_then_snapshot_says_open_resends_the_same_id() -> None:
    c = core()
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    c.on_link_lost([cid], T0 + 3000)
    still = TerminalPosition(
        ticket=555,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.01,
        open_price=1950.3,
        open_time_ms=T0,
        comment=f"tw:{pid}",
    )
    fx = c.on_snapshot("d1", [still], T0 + 5000)
    [(_, resent)] = fx.commands
    assert resent.command_id == cid
    assert c.positions[pid].state is PositionState.CLOSING


def test_duplicate_late_and_unknown_results_are_ignored() -> None:
    c = core()
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    ack = Ack(command_id=cid, retcode=10009, fill_price=1944.4)
    assert c.on_result(cid, "done", ack, T0 + 3000)
    assert not c.on_result(cid, "done", ack, T0 + 3001)  # a duplicate
    assert not c.on_result("nope.close.1", "done", ack, T0 + 3002)


def test_broker_stop_hits_first_then_our_close_is_already_closed() -> None:
    c = core()
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    fx = c.on_result(cid, "already_closed", Ack(command_id=cid, retcode=10036), T0 + 3000)
    assert c.recent_closed[pid].state is PositionState.CLOSED
    assert c.recent_closed[pid].close_price is None  # the terminal's fill comes with its event
    event = PositionEvent(
        kind=EventKind.CLOSED_SL,
        ticket=555,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.01,
        price=1945.0,
        time_ms=T0 + 2500,
        profit=-5.3,
    )
    fx = c.on_event("d1", event, T0 + 3100)
    closed = c.recent_closed[pid]
    assert closed.close_price == P(1945.0) and closed.realized_pl == -5.3
    assert fx.records


def test_terminal_event_before_our_ack_wins_and_the_ack_is_ignored() -> None:
    c = core()
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    event = PositionEvent(
        kind=EventKind.CLOSED_SL,
        ticket=555,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.01,
        price=1945.0,
        time_ms=T0 + 2500,
    )
    c.on_event("d1", event, T0 + 2600)
    assert c.recent_closed[pid].close_reason == "sl"
    assert c.recent_closed[pid].close_price == P(1945.0)
    assert not c.on_result(
        cid, "already_closed", Ack(command_id=cid, retcode=10036), T0 + 2700
    ).changed


def test_manual_terminal_close_of_an_open_position_disarms() -> None:
    c = core()
    pid = opened(c)
    event = PositionEvent(
        kind=EventKind.CLOSED_MANUAL,
        ticket=555,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.01,
        price=1951.0,
        time_ms=T0 + 2500,
    )
    fx = c.on_event("d1", event, T0 + 2600)
    assert fx.arms == [Disarm("XAUUSD", pid)]
    assert c.recent_closed[pid].close_reason == "manual_terminal"


def test_expiry_closes_what_the_approval_opened() -> None:
    c = core()
    pid = opened(c)
    assert not c.tick(T0 + 3_599_000).commands
    [(_, close)] = c.tick(T0 + 3_600_000).commands
    assert close.reason == "expiry" and close.command_id == f"{pid}.close.1"


def test_drawdown_critical_blocks_opens_or_closes_all() -> None:
    c = core()
    c.on_account(10_000, 10_000, "USD", T0)
    c.on_account(10_000, 8_400, "USD", T0 + 1)
    with pytest.raises(GuardBlocked):
        approved(c)
    c2 = core(drawdown=DrawdownLimits(on_critical="close_all"))
    pid = opened(c2)
    c2.on_account(10_000, 10_000, "USD", T0)
    fx = c2.on_account(10_000, 8_000, "USD", T0 + 2)
    [(_, close)] = fx.commands
    assert close.reason == "guard" and c2.positions[pid].state is PositionState.CLOSING


def test_trailing_moves_become_rate_limited_modifies() -> None:
    c = core()
    pid = opened(c)
    c.on_level_moves([LevelMove(pid, P(1947), "trailing")], T0 + 2000)
    [(_, first)] = c.tick(T0 + 2000).commands
    assert isinstance(first, ModifyCommand) and first.sl == 1947.0
    assert first.command_id == f"{pid}.modify.1"
    c.on_level_moves([LevelMove(pid, P(1948), "trailing")], T0 + 2100)
    c.on_level_moves([LevelMove(pid, P(1949), "trailing")], T0 + 2200)
    assert not c.tick(T0 + 2500).commands  # within the interval
    [(_, second)] = c.tick(T0 + 3000).commands  # coalesced to the latest level
    assert second.sl == 1949.0 and second.command_id == f"{pid}.modify.2"


def test_unknown_open_is_resolved_by_the_snapshot() -> None:
    c = core()
    cid = approved(c)
    pid = cid.split(".")[0]
    c.on_link_lost([cid], T0 + 2000)
    assert c.positions[pid].state is PositionState.UNKNOWN
    found = TerminalPosition(
        ticket=777,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.01,
        open_price=1950.4,
        open_time_ms=T0 + 1500,
        comment=f"tw:{pid}",
    )
    fx = c.on_snapshot("d1", [found], T0 + 5000)
    assert c.positions[pid].state is PositionState.OPEN and c.positions[pid].ticket == 777
    assert isinstance(fx.arms[0], Arm)

    c2 = core()
    cid2 = approved(c2)
    c2.on_link_lost([cid2], T0 + 2000)
    c2.on_snapshot("d1", [], T0 + 5000)
    assert c2.recent_closed[cid2.split(".")[0]].state is PositionState.REJECTED


def _theirs(**over) -> TerminalPosition:
    fields = dict(
        ticket=999,
        symbol="XAUUSD",
        side=Side.SELL,
        volume=0.5,
        open_price=1955.0,
        open_time_ms=T0,
        sl=1965.0,
    )
    fields.update(over)
    return TerminalPosition(**fields)


def _kinds(fx) -> list[str]:
    return [r.entry.kind for r in fx.records if isinstance(r, ReconciliationRecorded)]


def test_unknown_terminal_positions_are_listed_as_external_and_not_armed() -> None:
    c = core()
    fx = c.on_snapshot("d1", [_theirs()], T0 + 1000)
    [p] = c.positions.values()
    assert p.origin.value == "external" and p.state is PositionState.OPEN
    assert p.sl == P(1965.0) and p.adopted is False and not p.watched
    assert fx.arms == [] and fx.commands == []
    assert _kinds(fx) == ["external_found"]
    # The same ticket seen again is not listed twice; its levels and volume follow the
    # broker's (the terminal's to change), with no divergence recorded.
    fx = c.on_snapshot("d1", [_theirs(sl=1970.0, tp=1940.0, volume=0.3)], T0 + 2000)
    [p] = c.positions.values()
    assert (p.sl, p.tp, p.volume) == (P(1970.0), P(1940.0), 0.3)
    assert fx.arms == [] and fx.commands == [] and "levels_mismatch" not in _kinds(fx)
    # A position opened by hand at the terminal: listed the same way.
    manual = PositionEvent(
        kind=EventKind.OPENED_MANUAL,
        ticket=1001,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.1,
        price=1950.0,
        time_ms=T0 + 3000,
        tp=1990.0,
    )
    fx = c.on_event("d1", manual, T0 + 3000)
    assert fx.arms == [] and _kinds(fx) == ["external_found"]
    assert {p.ticket: p.adopted for p in c.positions.values()} == {999: False, 1001: False}


def test_a_found_position_with_the_engines_tag_is_watched_at_once() -> None:
    """An open the engine gave up on (its answer lost, then not in a snapshot) that executed
    after all is the user's approved trade: adopted and armed, not left unwatched."""
    c = core()
    fx = c.on_snapshot("d1", [_theirs(comment="tw:Pgone")], T0 + 1000)
    [p] = c.positions.values()
    assert p.origin.value == "external" and p.flags == ("was_ours",)
    assert p.adopted and [a.position for a in fx.arms if isinstance(a, Arm)] == [p]


def test_an_external_position_takes_no_command_until_adopted() -> None:
    c = core()
    c.on_snapshot("d1", [_theirs()], T0 + 1000)
    [pid] = c.positions
    for refused in (
        lambda: c.close_position(pid, "manual", T0 + 2000),
        lambda: c.partial_close(pid, 0.1, T0 + 2000),
        lambda: c.modify_position(pid, LevelChanges(sl=1960.0), 1950.0, 1950.3, T0 + 2000),
    ):
        with pytest.raises(Conflict, match="adopt it first"):
            refused()
    # A critical drawdown closes what the engine holds, not the trader's own trades.
    c.on_account(10_000.0, 10_000.0, "USD", T0 + 2000)
    fx = c.on_account(10_000.0, 5_000.0, "USD", T0 + 3000)
    assert c.guard.opens_blocked and fx.commands == []
    assert c.positions[pid].state is PositionState.OPEN

    adopted, fx = c.adopt(pid, T0 + 4000)
    assert adopted.adopted and adopted.watched and c.positions[pid] == adopted
    [arm] = fx.arms
    assert isinstance(arm, Arm) and arm.position == adopted
    assert _kinds(fx) == ["adopt"]
    assert [r.position for r in fx.records if isinstance(r, PositionSaved)] == [adopted]
    # Idempotent: adopting it again changes nothing and journals nothing.
    again, fx = c.adopt(pid, T0 + 5000)
    assert again == adopted and not fx.records and not fx.arms
    # Now the engine's to act on: its broker levels differing are a divergence, and a
    # trigger closes it.
    fx = c.on_snapshot("d1", [_theirs(sl=1962.0)], T0 + 6000)
    assert _kinds(fx) == ["levels_mismatch"] and c.positions[pid].sl == P(1965.0)
    fx = fire(c, pid, price=1966.0)
    [(_, close)] = fx.commands
    assert isinstance(close, CloseCommand) and close.ticket == 999


def test_adopting_a_closed_or_unknown_position_is_refused() -> None:
    c = core()
    c.on_snapshot("d1", [_theirs()], T0 + 1000)
    [pid] = c.positions
    closed = PositionEvent(
        kind=EventKind.CLOSED_MANUAL,
        ticket=999,
        symbol="XAUUSD",
        side=Side.SELL,
        volume=0.5,
        price=1950.0,
        time_ms=T0 + 2000,
        profit=250.0,
    )
    fx = c.on_event("d1", closed, T0 + 2000)
    # The terminal's events are followed, adopted or not: closed, with its fill.
    assert fx.arms == []  # never armed: nothing to disarm
    done = c.recent_closed[pid]
    assert done.state is PositionState.CLOSED and done.realized_pl == 250.0
    with pytest.raises(Conflict, match="closed"):
        c.adopt(pid, T0 + 3000)
    with pytest.raises(NotFound):
        c.adopt("X-none", T0 + 3000)


def test_restore_keeps_an_unadopted_position_unarmed() -> None:
    live = core()
    live.on_snapshot("d1", [_theirs(), _theirs(ticket=1000)], T0 + 1000)
    first, second = live.positions
    live.adopt(first, T0 + 2000)
    restored = core()
    fx = restored.restore(list(live.positions.values()), [], [], None)
    assert [a.position.id for a in fx.arms if isinstance(a, Arm)] == [first]
    assert restored.positions[second].adopted is False


def test_manual_close_of_unknown_position() -> None:
    with pytest.raises(NotFound):
        core().close_position("nope", "manual", T0)


def test_restore_without_arms_rebuilds_the_same_core() -> None:
    """At a node's start the symbol actors arm everything at once: restore(arm=False) leaves
    the arms out and nothing else (positions, their expiry schedule)."""
    live = core()
    opened(live)
    positions = list(live.positions.values())
    assert [p.state for p in positions] == [PositionState.OPEN]
    with_arms, without = core(), core()
    armed = with_arms.restore(positions, [], [], None)
    plain = without.restore(positions, [], [], None, arm=False)
    assert [a.position.state for a in armed.arms] == [PositionState.OPEN]
    assert isinstance(armed.arms[0], Arm) and not plain.arms
    assert without.positions == with_arms.positions
    assert without.next_due_ms() == with_arms.next_due_ms()


def test_closes_count_as_unreported_until_the_next_account_report() -> None:
    """A terminal books a close at once and reports its balance later: the core keeps the
    closes' P&L until that report (the equity curve anchors on balance + these), once each."""
    c = core()
    c.on_account(10_000, 10_000, "USD", T0)
    pid = opened(c)
    assert c.unreported == {}
    close = fire(c, pid).commands[0][1]
    c.on_result(
        close.command_id,
        "done",
        Ack(command_id=close.command_id, retcode=10009, fill_price=1944.4),
        T0 + 2100,
    )
    pl = c.recent_closed[pid].realized_pl
    assert pl is not None and c.unreported == {pid: pl}
    # A late terminal event about the same, already closed position changes nothing.
    late = PositionEvent(
        kind=EventKind.CLOSED_SL,
        ticket=555,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.01,
        price=1944.4,
        time_ms=T0 + 2200,
    )
    c.on_event("d1", late, T0 + 2300)
    assert c.unreported == {pid: pl}
    c.on_account(10_000 + pl, 10_000 + pl, "USD", T0 + 3000)
    assert c.unreported == {} and c.balance == 10_000 + pl
    c.on_event("d1", late, T0 + 3100)
    assert c.unreported == {}


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_an_expired_signal_is_refused_whatever_the_decision(decision: str) -> None:
    c = core()
    late = signal().expires_at_ms
    with pytest.raises(LateSignal):
        c.decide(
            approval_id="a1",
            signal=signal(),
            decision=decision,
            bid=1950.0,
            ask=1950.3,
            now_ms=late,
        )
    assert not c.approvals and not c.positions  # nothing recorded: nothing to undo


def test_expiry_comes_after_the_audience_and_the_earlier_decision() -> None:
    c = core()
    late = signal().expires_at_ms
    with pytest.raises(Forbidden):
        c.decide(
            approval_id="a1",
            signal=signal(audience=["u2"]),
            decision="reject",
            bid=None,
            ask=None,
            now_ms=late,
        )
    c.decide(approval_id="a1", signal=signal(), decision="reject", bid=None, ask=None, now_ms=T0)
    with pytest.raises(Conflict):
        c.decide(
            approval_id="a2",
            signal=signal(),
            decision="approve",
            bid=1950.0,
            ask=1950.3,
            now_ms=late,
        )


def test_new_settings_reach_the_next_decision_and_the_drawdown_guard() -> None:
    c = core()
    limits = DrawdownLimits(warning=0.01, critical=0.02)
    c.apply_settings(UserSettings(drawdown=limits, deviation_points=7))
    assert c.settings.deviation_points == 7 and c.guard.limits is limits
