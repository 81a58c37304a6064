"""One user's positions against a model (hypothesis ``RuleBasedStateMachine``).

The machine drives a real :class:`~engine.user.UserCore` through its public handlers only, with
a real :class:`~engine.triggers.TriggerBook` that carries out its arm effects, and a small
terminal that plays the device: it executes each command id once (a repeat gets the earlier
answer), fills at the quote, runs broker-side closes, keeps the closing deals, and answers in
the order the commands were sent (one WebSocket). The link can drop with any command unanswered,
executed or not; the device then reconnects with its positions snapshot and its deals.

What must hold, whatever the interleaving:

* a position closes at most once, and a final state (CLOSED, REJECTED) is never left;
* the core never has a position CLOSED that the terminal still holds;
* a breach (a fired trigger of an OPEN position) issues exactly one close; a position never has
  two close commands unanswered, and a close is sent again only after its link was lost, with
  the same command id;
* every command is for a position the core still has live; a partial close is sent again only
  after its link was lost, with the same command id;
* the core keeps in flight only commands the device has yet to answer, and after a reconnect
  none whose link was lost (the snapshot settled or resent each);
* a closed position with a known fill has the realized P&L the terminal booked;
* an OPEN position the device has answered every partial close of has the terminal's volume;
* after a reconnect nothing is UNKNOWN or waiting for a fill, and the core and the terminal
  agree on which positions are open and on their volumes;
* the trigger book watches exactly the core's OPEN positions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.effects import Arm, Disarm, Effects, MoveLevels
from engine.instruments import DEFAULT_INSTRUMENTS
from engine.lifecycle import FINAL_STATES, PositionState
from engine.positions import Position
from engine.records import CommandIssued
from engine.stoprules import LevelChanges
from engine.triggers import Trigger, TriggerBook, TriggerKind
from engine.user import DeviceInfo, UserCore
from protocol.common import Side
from protocol.device import (
    Ack,
    CloseCommand,
    Command,
    Deal,
    EventKind,
    ModifyCommand,
    OpenCommand,
    PartialCloseCommand,
    PositionEvent,
    TerminalPosition,
)
from protocol.errors import Conflict, NotFound, Refused
from protocol.signals import Signal

GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]
DEVICE = "d1"
T0 = 1_700_000_000_000
SPREAD = 300  # points: 0.3 dollars
DONE, REQUOTE, INVALID_STOPS, POSITION_CLOSED = 10009, 10004, 10016, 10036

Outcome = st.sampled_from(["done", "done", "done", "retryable", "final"])


@dataclass
class Held:
    """A position the terminal holds."""

    ticket: int
    comment: str
    side: Side
    volume: float
    open_price: float
    open_time_ms: int
    sl: float | None
    tp: float | None


@dataclass
class Terminal:
    """The device's side: positions, the answers it gave by command id, its closing deals."""

    held: dict[int, Held] = field(default_factory=dict)
    answers: dict[str, tuple[str, Ack]] = field(default_factory=dict)
    deals: list[Deal] = field(default_factory=list)
    profit: dict[int, float] = field(default_factory=dict)
    """ticket -> the price P&L its full close booked."""
    next_ticket: int = 1000

    def _close(self, h: Held, price: float, now: int) -> float:
        del self.held[h.ticket]
        # The model's own arithmetic in price units (the core works in integer points).
        profit = round((price - h.open_price) * h.side.sign * h.volume * GOLD.contract_size, 2)
        self.profit[h.ticket] = profit
        self.deals.append(
            Deal(
                ticket=50_000 + h.ticket,
                position=h.ticket,
                price=price,
                time_ms=now,
                volume=h.volume,
                profit=profit,
            )
        )
        return profit

    def execute(
        self, cmd: Command, outcome: str, bid: float, ask: float, now: int
    ) -> tuple[str, Ack]:
        """Carry out ``cmd`` once; a repeated id is answered as the first time."""
        if cmd.command_id in self.answers:
            category, ack = self.answers[cmd.command_id]
            return category, msgspec.structs.replace(ack, repeat=True)
        category, ack = self._execute(cmd, outcome, bid, ask, now)
        self.answers[cmd.command_id] = (category, ack)
        return category, ack

    def _execute(
        self, cmd: Command, outcome: str, bid: float, ask: float, now: int
    ) -> tuple[str, Ack]:
        cid = cmd.command_id
        if outcome == "retryable":
            return "retryable", Ack(command_id=cid, retcode=REQUOTE, result_text="requote")
        if outcome == "final" and not isinstance(cmd, ModifyCommand):
            return "final", Ack(command_id=cid, retcode=INVALID_STOPS, result_text="refused")
        if isinstance(cmd, OpenCommand):
            self.next_ticket += 1
            price = ask if cmd.side is Side.BUY else bid
            self.held[self.next_ticket] = Held(
                self.next_ticket, cmd.client_id, cmd.side, cmd.volume, price, now, cmd.sl, cmd.tp
            )
            return "done", Ack(
                command_id=cid,
                retcode=DONE,
                ticket=self.next_ticket,
                fill_price=price,
                fill_volume=cmd.volume,
                fill_time_ms=now,
            )
        assert isinstance(cmd, CloseCommand | PartialCloseCommand | ModifyCommand)
        h = self.held.get(cmd.ticket)
        if h is None:
            return "already_closed", Ack(
                command_id=cid, retcode=POSITION_CLOSED, result_text="position closed"
            )
        price = bid if h.side is Side.BUY else ask
        if isinstance(cmd, CloseCommand):
            volume = h.volume
            self._close(h, price, now)
        elif isinstance(cmd, PartialCloseCommand):
            if cmd.volume >= h.volume - 1e-9:
                return "final", Ack(command_id=cid, retcode=10014, result_text="invalid volume")
            volume = cmd.volume
            h.volume = round(h.volume - cmd.volume, 8)
        else:
            h.sl, h.tp = cmd.sl, cmd.tp
            return "done", Ack(command_id=cid, retcode=DONE, ticket=h.ticket)
        return "done", Ack(
            command_id=cid,
            retcode=DONE,
            ticket=h.ticket,
            fill_price=price,
            fill_volume=volume,
            fill_time_ms=now,
        )

    def broker_close(self, ticket: int, bid: float, ask: float, now: int) -> PositionEvent:
        h = self.held[ticket]
        price = bid if h.side is Side.BUY else ask
        profit = self._close(h, price, now)
        return PositionEvent(
            kind=EventKind.CLOSED_SL,
            ticket=h.ticket,
            symbol=GOLD.symbol,
            side=h.side,
            volume=h.volume,
            price=price,
            time_ms=now,
            comment=h.comment,
            profit=profit,
        )

    def snapshot(self) -> list[TerminalPosition]:
        return [
            TerminalPosition(
                ticket=h.ticket,
                symbol=GOLD.symbol,
                side=h.side,
                volume=h.volume,
                open_price=h.open_price,
                open_time_ms=h.open_time_ms,
                sl=h.sl,
                tp=h.tp,
                comment=h.comment,
            )
            for h in self.held.values()
        ]


@dataclass
class CloseSent:
    command_id: str
    lost: bool = False


class UserPositions(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.bid = GOLD.to_points(1950.0)
        self.core = UserCore("u1")
        self.core.on_device(DeviceInfo(DEVICE, {GOLD.symbol: GOLD}), self.now)
        self.book = TriggerBook(GOLD.symbol)
        self.book.on_quote(self.bid, self.ask)
        self.terminal = Terminal()
        self.outbox: list[Command] = []
        self.answered: list[tuple[str, str, Ack]] = []
        self.seen: dict[str, Position] = {}
        self.closes: Counter[str] = Counter()
        self.close_sent: dict[str, CloseSent] = {}
        """position -> its close command not answered yet (lost: its link dropped)."""
        self.command_ids: set[str] = set()
        self.lost_partials: set[str] = set()
        """Partial closes whose link was lost: the snapshot may have them sent again."""
        self.position_of: dict[str, str] = {}
        self.signals = 0

    # -- the world -----------------------------------------------------------------------------

    @property
    def ask(self) -> int:
        return self.bid + SPREAD

    def prices(self) -> tuple[float, float]:
        return GOLD.to_price(self.bid), GOLD.to_price(self.ask)

    def positions_in(self, *states: PositionState) -> list[Position]:
        return sorted((p for p in self.seen.values() if p.state in states), key=lambda p: p.id)

    def apply(self, fx: Effects) -> None:
        """Take in what a handler returned: check it, and carry out its arms and commands."""
        for p in fx.changed:
            before = self.seen.get(p.id)
            if before is not None and before.state in FINAL_STATES:
                assert p.state is before.state, f"{p.id} left {before.state} for {p.state}"
            if p.state is PositionState.CLOSED and (before is None or before.state != p.state):
                self.closes[p.id] += 1
            self.seen[p.id] = p
        for pid in list(self.close_sent):
            if self.seen[pid].state in FINAL_STATES:
                del self.close_sent[pid]  # the terminal's close settled it; its ack is moot
        for record in fx.records:
            if isinstance(record, CommandIssued):
                self.position_of[record.command.command_id] = record.position_id
        for device, cmd in fx.commands:
            assert device == DEVICE
            self.check_command(cmd)
            self.outbox.append(cmd)
        fired: list[Trigger] = []
        for op in fx.arms:
            if isinstance(op, Disarm):
                self.book.cancel(op.position_id)
                continue
            assert isinstance(op, Arm | MoveLevels)
            p = op.position
            if p.id in self.book:
                fired += self.book.modify(p.id, sl=p.sl, tp=p.tp)
            else:
                fired += self.book.register(p.id, p.side, p.sl, p.tp)
        if fired:
            self.fire(fired)

    def check_command(self, cmd: Command) -> None:
        cid = cmd.command_id
        pid = self.position_of[cid]
        p = self.seen[pid]
        assert p.state not in FINAL_STATES, f"{cid} sent for a {p.state} position"
        if isinstance(cmd, CloseCommand):
            assert p.state is PositionState.CLOSING and p.command_id == cid
            earlier = self.close_sent.get(pid)
            if earlier is not None:
                # Only a resend after a lost link, and with the very same id.
                assert earlier.lost, f"{cid} sent while {earlier.command_id} is unanswered"
                assert earlier.command_id == cid, f"resent {earlier.command_id} as {cid}"
            else:
                assert cid not in self.command_ids, f"{cid} re-used"
            self.close_sent[pid] = CloseSent(cid)
        elif isinstance(cmd, PartialCloseCommand) and cid in self.lost_partials:
            self.lost_partials.discard(cid)  # its link was lost: sent again, with the same id
        else:
            assert cid not in self.command_ids, f"{cid} re-used"
        self.command_ids.add(cid)

    def fire(self, triggers: list[Trigger]) -> None:
        """Triggers reach the core: each OPEN position's breach issues exactly one close."""
        was_open = {
            t.position_id
            for t in triggers
            if (p := self.seen.get(t.position_id)) is not None and p.state is PositionState.OPEN
        }
        fx = self.core.on_triggers(triggers, self.now)
        closes = Counter(
            r.position_id
            for r in fx.records
            if isinstance(r, CommandIssued) and isinstance(r.command, CloseCommand)
        )
        assert closes == Counter(was_open), f"breaches {sorted(was_open)}, closes {closes}"
        self.apply(fx)

    # -- rules ---------------------------------------------------------------------------------

    @rule(
        side=st.sampled_from(Side),
        volume=st.sampled_from([0.01, 0.02, 0.05]),
        sl_points=st.integers(300, 4000),
        tp_points=st.integers(300, 4000),
        lifetime_s=st.integers(20, 600),
    )
    def approve(
        self, side: Side, volume: float, sl_points: int, tp_points: int, lifetime_s: int
    ) -> None:
        self.signals += 1
        market = self.ask if side is Side.BUY else self.bid
        sign = side.sign
        signal = Signal(
            strategy_id="s1",
            signal_id=f"g{self.signals}",
            version=1,
            audience=["u1"],
            symbol=GOLD.symbol,
            side=side,
            entry=GOLD.to_price(market),
            sl=GOLD.to_price(market - sign * sl_points),
            tp=GOLD.to_price(market + sign * tp_points),
            volume=volume,
            created_at_ms=self.now,
            expires_at_ms=self.now + lifetime_s * 1000,
        )
        bid, ask = self.prices()
        approval, fx = self.core.decide(
            approval_id=f"a{self.signals}",
            signal=signal,
            decision="approve",
            bid=bid,
            ask=ask,
            now_ms=self.now,
            volume=volume,
        )
        opens = [c for _, c in fx.commands if isinstance(c, OpenCommand)]
        assert len(opens) == 1 and len(fx.commands) == 1
        self.apply(fx)
        assert self.seen[approval.position_id].state is PositionState.PENDING_OPEN

    @rule(move=st.integers(-2500, 2500))
    def quote(self, move: int) -> None:
        self.bid = max(GOLD.to_points(1900.0), self.bid + move)
        fired = self.book.on_quote(self.bid, self.ask)
        if fired:
            self.fire(fired)

    @precondition(lambda self: self.outbox)
    @rule(outcome=Outcome)
    def answer(self, outcome: str) -> None:
        """The device executes its oldest command and answers it."""
        cmd = self.outbox.pop(0)
        pid = self.position_of[cmd.command_id]
        bid, ask = self.prices()
        category, ack = self.terminal.execute(cmd, outcome, bid, ask, self.now)
        sent = self.close_sent.get(pid)
        if sent is not None and sent.command_id == cmd.command_id:
            del self.close_sent[pid]
        self.answered.append((cmd.command_id, category, ack))
        self.apply(self.core.on_result(cmd.command_id, category, ack, self.now))

    @precondition(lambda self: self.answered)
    @rule(data=st.data())
    def repeat_answer(self, data: st.DataObject) -> None:
        """A duplicate of an earlier answer changes nothing."""
        cid, category, ack = data.draw(st.sampled_from(self.answered))
        fx = self.core.on_result(cid, category, ack, self.now)
        assert not fx.commands and not fx.changed and not fx.arms
        self.apply(fx)

    @precondition(lambda self: self.seen)
    @rule(data=st.data(), kind=st.sampled_from(TriggerKind))
    def stale_trigger(self, data: st.DataObject, kind: TriggerKind) -> None:
        """A fire that raced with a change of the position (closed, closing) meanwhile."""
        p = data.draw(st.sampled_from(sorted(self.seen.values(), key=lambda p: p.id)))
        price = self.bid if p.side is Side.BUY else self.ask
        self.book.cancel(p.id)  # it leaves the book as a fired level does
        self.fire([Trigger(p.id, kind, p.side, price, price)])

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def close_by_hand(self, data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(sorted(self.seen.values(), key=lambda p: p.id)))
        try:
            fx = self.core.close_position(p.id, "manual", self.now)
        except (NotFound, Conflict):
            assert p.state not in (PositionState.OPEN, PositionState.CLOSE_FAILED)
            return
        assert p.state in (PositionState.OPEN, PositionState.CLOSE_FAILED)
        assert [type(c) for _, c in fx.commands] == [CloseCommand]
        self.apply(fx)

    @precondition(lambda self: any(p.volume > 0.01 for p in self.positions_in(PositionState.OPEN)))
    @rule(data=st.data())
    def partial_close(self, data: st.DataObject) -> None:
        candidates = [p for p in self.positions_in(PositionState.OPEN) if p.volume > 0.01]
        p = data.draw(st.sampled_from(candidates))
        self.apply(self.core.partial_close(p.id, 0.01, self.now))

    @precondition(lambda self: self.positions_in(PositionState.OPEN))
    @rule(data=st.data(), distance=st.integers(100, 3000))
    def move_stop(self, data: st.DataObject, distance: int) -> None:
        p = data.draw(st.sampled_from(self.positions_in(PositionState.OPEN)))
        market = self.bid if p.side is Side.BUY else self.ask
        bid, ask = self.prices()
        try:
            fx = self.core.modify_position(
                p.id,
                LevelChanges(sl=GOLD.to_price(market - p.side.sign * distance)),
                bid,
                ask,
                self.now,
            )
        except Refused:
            return
        self.apply(fx)

    @precondition(lambda self: self.terminal.held)
    @rule(data=st.data())
    def broker_closes(self, data: st.DataObject) -> None:
        """The broker's own stop closes a position; the terminal says so at once."""
        ticket = data.draw(st.sampled_from(sorted(self.terminal.held)))
        bid, ask = self.prices()
        event = self.terminal.broker_close(ticket, bid, ask, self.now)
        self.apply(self.core.on_event(DEVICE, event, self.now))

    @rule(seconds=st.integers(1, 120))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds * 1000
        self.apply(self.core.tick(self.now))

    @rule(data=st.data())
    def link_bounces(self, data: st.DataObject) -> None:
        """The link drops with the outbox unanswered (each command executed or not), the broker
        may close positions meanwhile, and the device reconnects: snapshot, then deals."""
        bid, ask = self.prices()
        lost = self.outbox
        self.outbox = []
        for cmd in lost:
            if data.draw(st.booleans(), label=f"{cmd.command_id} executed"):
                self.terminal.execute(cmd, "done", bid, ask, self.now)
        for ticket in sorted(self.terminal.held):
            if data.draw(st.booleans(), label=f"broker closes {ticket} meanwhile"):
                self.terminal.broker_close(ticket, bid, ask, self.now)
        for sent in self.close_sent.values():
            sent.lost = True
        self.lost_partials = {c.command_id for c in lost if isinstance(c, PartialCloseCommand)}
        self.apply(self.core.on_link_lost([c.command_id for c in lost], self.now))
        for cmd in lost:
            p = self.seen[self.position_of[cmd.command_id]]
            if isinstance(cmd, OpenCommand | CloseCommand) and p.command_id == cmd.command_id:
                assert p.state is PositionState.UNKNOWN
        self.now += 1000
        self.apply(self.core.on_snapshot(DEVICE, self.terminal.snapshot(), self.now))
        self.apply(self.core.on_deals(DEVICE, list(self.terminal.deals), self.now))
        for pid, sent in list(self.close_sent.items()):
            if sent.lost:  # not resent: the snapshot settled it
                assert self.seen[pid].state in FINAL_STATES
                del self.close_sent[pid]
        self.lost_partials.clear()
        lost_still = sorted(cid for cid, f in self.core.inflight.items() if f.lost)
        assert not lost_still, f"in flight after the reconnect, its link lost: {lost_still}"
        self.check_agreement()

    def check_agreement(self) -> None:
        """Right after a reconnect the core holds what the terminal holds."""
        live = {
            p.ticket: p
            for p in self.seen.values()
            if p.state not in FINAL_STATES and p.ticket is not None
        }
        for p in self.seen.values():
            assert p.state is not PositionState.UNKNOWN, f"{p.id} still unknown"
            assert not p.fill_pending, f"{p.id} still waits for its fill after the deals"
        for ticket, h in self.terminal.held.items():
            assert ticket in live, f"terminal holds {ticket}, the core does not"
            if live[ticket].state is PositionState.OPEN:
                assert abs(live[ticket].volume - h.volume) < 1e-9
        for ticket, p in live.items():
            if p.state is PositionState.OPEN:
                assert ticket in self.terminal.held, f"{p.id} open, not on the terminal"

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def closes_at_most_once(self) -> None:
        assert all(n == 1 for n in self.closes.values()), self.closes

    @invariant()
    def nothing_closed_that_the_terminal_holds(self) -> None:
        for p in self.positions_in(PositionState.CLOSED):
            assert p.ticket not in self.terminal.held, f"{p.id} closed, its ticket still held"

    @invariant()
    def realized_pl_is_what_the_terminal_booked(self) -> None:
        closed = [p for p in self.positions_in(PositionState.CLOSED) if not p.fill_pending]
        for p in closed:
            assert p.ticket is not None and p.realized_pl is not None
            assert abs(p.realized_pl - self.terminal.profit[p.ticket]) < 0.011, p
        core_total = sum(p.realized_pl or 0.0 for p in closed)
        booked = sum(self.terminal.profit[p.ticket] for p in closed if p.ticket is not None)
        assert abs(core_total - booked) < 0.011 * max(1, len(closed))

    @invariant()
    def the_book_watches_the_open_positions(self) -> None:
        is_open = {p.id for p in self.positions_in(PositionState.OPEN)}
        assert set(self.book.position_ids()) == is_open

    @invariant()
    def in_flight_only_what_the_device_has_to_answer(self) -> None:
        waiting = {c.command_id for c in self.outbox}
        stuck = sorted(set(self.core.inflight) - waiting)
        assert not stuck, f"in flight, and the device will never answer: {stuck}"

    @invariant()
    def open_volumes_are_the_terminals(self) -> None:
        """Once the device has answered a position's partial closes, both sides hold the same
        volume of it (an answer counted twice, or never, would show here)."""
        waiting = {
            self.position_of[c.command_id]
            for c in self.outbox
            if isinstance(c, PartialCloseCommand)
        }
        for p in self.positions_in(PositionState.OPEN):
            h = self.terminal.held.get(p.ticket) if p.ticket is not None else None
            if h is not None and p.id not in waiting:
                assert abs(p.volume - h.volume) < 1e-9, f"{p.id}: {p.volume}, held {h.volume}"

    @invariant()
    def the_core_is_what_it_said(self) -> None:
        """The positions the core keeps are the last values its effects reported."""
        for pid, p in self.core.positions.items():
            assert self.seen[pid] == p
        live = {pid for pid, p in self.seen.items() if p.state not in FINAL_STATES}
        assert set(self.core.positions) == live


# ~10 s on a quiet machine; the two examples below needed a few hundred runs to turn up.
UserPositions.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_user_positions_against_a_model = UserPositions.TestCase


# -- what the machine found, as plain examples ---------------------------------------------------


def _open_position(volume: float) -> tuple[UserCore, Position]:
    core = UserCore("u1")
    core.on_device(DeviceInfo(DEVICE, {GOLD.symbol: GOLD}), T0)
    signal = Signal(
        strategy_id="s1",
        signal_id="g1",
        version=1,
        audience=["u1"],
        symbol=GOLD.symbol,
        side=Side.BUY,
        entry=1950.3,
        sl=1945.0,
        tp=1960.0,
        volume=volume,
        created_at_ms=T0,
        expires_at_ms=T0 + 60_000,
    )
    _, fx = core.decide(
        approval_id="a1",
        signal=signal,
        decision="approve",
        bid=1950.0,
        ask=1950.3,
        now_ms=T0,
        volume=volume,
    )
    [(_, open_)] = fx.commands
    fx = core.on_result(
        open_.command_id,
        "done",
        Ack(
            command_id=open_.command_id, retcode=DONE, ticket=7, fill_price=1950.3, fill_time_ms=T0
        ),
        T0,
    )
    [arm] = fx.arms
    assert isinstance(arm, Arm)
    return core, arm.position


def test_a_position_saved_again_while_open_expires_with_one_close() -> None:
    """Each save of an OPEN position scheduled its expiry again; at the expiry the second copy
    asked to close a position already closing, and the tick raised (its first close lost)."""
    core, p = _open_position(0.01)
    core.modify_position(p.id, LevelChanges(sl=1946.0), 1950.0, 1950.3, T0 + 1000)
    assert p.expires_at_ms is not None
    fx = core.tick(p.expires_at_ms)
    closes = [c for _, c in fx.commands if isinstance(c, CloseCommand)]
    assert [c.reason for c in closes] == ["expiry"]
    assert core.positions[p.id].state is PositionState.CLOSING


def test_a_close_books_the_volume_the_terminal_closed() -> None:
    """A partial close executed with its ack lost, then the close resent after the reconnect:
    the terminal closes what is left, and the P&L is of that volume, not the volume before."""
    core, p = _open_position(0.02)
    [(_, partial)] = core.partial_close(p.id, 0.01, T0 + 1000).commands
    [(_, close)] = core.close_position(p.id, "manual", T0 + 1000).commands
    core.on_link_lost([partial.command_id, close.command_id], T0 + 2000)
    held = TerminalPosition(
        ticket=7,
        symbol=GOLD.symbol,
        side=Side.BUY,
        volume=0.01,
        open_price=1950.3,
        open_time_ms=T0,
        comment=p.client_id,
    )
    [(_, resent)] = core.on_snapshot(DEVICE, [held], T0 + 3000).commands
    assert resent.command_id == close.command_id
    ack = Ack(
        command_id=close.command_id,
        retcode=DONE,
        ticket=7,
        fill_price=1951.3,
        fill_volume=0.01,
        fill_time_ms=T0 + 3000,
    )
    [closed] = core.on_result(close.command_id, "done", ack, T0 + 3000).changed
    assert closed.state is PositionState.CLOSED
    assert (closed.volume, closed.realized_pl) == (0.01, 1.0)  # 1.0 dollar x 0.01 lot x 100 oz
