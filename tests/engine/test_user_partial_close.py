"""A partial close whose answer a lost link took: the reconnect snapshot settles it.

Still held, the position has it sent again with the same id (the EA answers an id it executed
with its stored ack, ``repeat``); the snapshot's volume already counts an execution from before
the reconnect, so a repeat answer changes no volume and a fresh one takes its fill. Gone, or
being closed, nothing is sent: the partial close is over."""

from __future__ import annotations

from engine.lifecycle import PositionState
from engine.records import CommandIssued, CommandResolved
from engine.user import UserCore
from protocol.common import Side
from protocol.device import Ack, CloseCommand, Deal, PartialCloseCommand, TerminalPosition
from tests.engine.user_helpers import T0, core, signal

DONE = 10009


def _opened(c: UserCore) -> str:
    """A position of 0.1 lots (ticket 555), open."""
    _, fx = c.decide(
        approval_id="a1",
        signal=signal(),
        decision="approve",
        bid=1950.0,
        ask=1950.3,
        now_ms=T0 + 1000,
        volume=0.1,
    )
    [(_, open_)] = fx.commands
    ack = Ack(command_id=open_.command_id, retcode=DONE, ticket=555, fill_price=1950.3)
    [p] = c.on_result(open_.command_id, "done", ack, T0 + 1100).changed
    assert p.state is PositionState.OPEN and p.volume == 0.1
    return p.id


def _held(pid: str, volume: float) -> TerminalPosition:
    return TerminalPosition(
        ticket=555,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=volume,
        open_price=1950.3,
        open_time_ms=T0,
        comment=f"tw:{pid}",
    )


def _lost_partial(volume: float = 0.03) -> tuple[UserCore, str, float, PartialCloseCommand]:
    c = core()
    pid = _opened(c)
    before = c.positions[pid].volume
    [(_, partial)] = c.partial_close(pid, volume, T0 + 2000).commands
    assert isinstance(partial, PartialCloseCommand)
    c.on_link_lost([partial.command_id], T0 + 3000)
    assert c.positions[pid].state is PositionState.OPEN  # a partial close leaves it watched
    return c, pid, before, partial


def _done(partial: PartialCloseCommand, repeat: bool) -> Ack:
    return Ack(
        command_id=partial.command_id,
        retcode=DONE,
        ticket=555,
        fill_price=1951.0,
        fill_volume=partial.volume,
        fill_time_ms=T0 + 2500,
        repeat=repeat,
    )


def test_executed_before_the_reconnect_it_is_resent_and_its_repeat_changes_no_volume() -> None:
    c, pid, before, partial = _lost_partial()
    left = round(before - partial.volume, 8)
    fx = c.on_snapshot("d1", [_held(pid, left)], T0 + 5000)
    [(_, resent)] = fx.commands
    assert resent.command_id == partial.command_id and resent.volume == partial.volume
    assert resent.deadline_ms > partial.deadline_ms
    assert c.positions[pid].volume == left  # the terminal's word
    assert not c.inflight[partial.command_id].lost
    fx = c.on_result(partial.command_id, "done", _done(partial, repeat=True), T0 + 5100)
    assert c.positions[pid].volume == left  # the snapshot counted it already
    assert c.positions[pid].state is PositionState.OPEN
    assert [r.outcome for r in fx.records if isinstance(r, CommandResolved)] == ["done"]
    assert not c.inflight


def test_not_executed_it_is_resent_with_the_same_id_and_then_takes_its_fill() -> None:
    c, pid, before, partial = _lost_partial()
    fx = c.on_snapshot("d1", [_held(pid, before)], T0 + 5000)
    [(_, resent)] = fx.commands
    assert resent.command_id == partial.command_id
    assert [r.command.command_id for r in fx.records if isinstance(r, CommandIssued)] == [
        partial.command_id
    ]
    c.on_result(partial.command_id, "done", _done(partial, repeat=False), T0 + 5100)
    assert c.positions[pid].volume == round(before - partial.volume, 8)
    assert not c.inflight


def test_a_position_closed_while_away_ends_its_partial_close_and_the_deal_gives_the_fill() -> None:
    c, pid, _, partial = _lost_partial()
    fx = c.on_snapshot("d1", [], T0 + 5000)
    assert not fx.commands
    resolved = {r.command_id: r.outcome for r in fx.records if isinstance(r, CommandResolved)}
    assert resolved == {partial.command_id: "position_closed"}
    assert not c.inflight
    assert c.recent_closed[pid].fill_pending
    deal = Deal(ticket=9, position=555, price=1952.0, time_ms=T0 + 4000, volume=0.07, profit=11.9)
    c.on_deals("d1", [deal], T0 + 5001)
    closed = c.recent_closed[pid]
    assert not closed.fill_pending and closed.realized_pl == 11.9


def test_beside_a_lost_close_it_is_not_resent_the_close_is() -> None:
    c = core()
    pid = _opened(c)
    before = c.positions[pid].volume
    [(_, partial)] = c.partial_close(pid, 0.03, T0 + 2000).commands
    [(_, close)] = c.close_position(pid, "manual", T0 + 2000).commands
    c.on_link_lost([partial.command_id, close.command_id], T0 + 3000)
    fx = c.on_snapshot("d1", [_held(pid, before)], T0 + 5000)
    [(_, resent)] = fx.commands
    assert isinstance(resent, CloseCommand) and resent.command_id == close.command_id
    resolved = {r.command_id: r.outcome for r in fx.records if isinstance(r, CommandResolved)}
    assert resolved == {partial.command_id: "superseded_by_close"}
    assert set(c.inflight) == {close.command_id}


def test_a_periodic_snapshot_leaves_a_partial_close_whose_link_holds_alone() -> None:
    c = core()
    pid = _opened(c)
    before = c.positions[pid].volume
    [(_, partial)] = c.partial_close(pid, 0.03, T0 + 2000).commands
    assert not c.on_snapshot("d1", [_held(pid, before)], T0 + 2500).commands
    assert not c.inflight[partial.command_id].lost


def test_a_periodic_snapshot_between_the_execution_and_its_ack_counts_the_partial_once() -> None:
    """The link holds; the terminal executed the partial close and reports its positions (the
    daily snapshot) before the ack arrives: the ack, not the snapshot, takes the volume off."""
    c = core()
    pid = _opened(c)
    before = c.positions[pid].volume
    [(_, partial)] = c.partial_close(pid, 0.03, T0 + 2000).commands
    assert isinstance(partial, PartialCloseCommand)
    left = round(before - partial.volume, 8)
    c.on_snapshot("d1", [_held(pid, left)], T0 + 2400)
    c.on_result(partial.command_id, "done", _done(partial, repeat=False), T0 + 2600)
    assert c.positions[pid].volume == left
    assert partial.command_id not in c.inflight
