"""A user's trading core: approvals, positions, command outcomes, guards.

:class:`UserCore` is driven by a user actor. Every handler takes the time, changes the core's
own state and returns :class:`~engine.effects.Effects`; it never waits and never does I/O.

Commands and their ids: an open, a close or a partial close is sent with the id
``<position>.<action>.<attempt>``; a retryable rejection leads to the next attempt after a
backoff, an answer-less disconnect to UNKNOWN (resolved only by the terminal's snapshot, where a
resend re-uses the same id). Modifies (broker-side SL/TP following trailing and break-even moves)
are rate-limited per position and coalesced to the latest levels.

The handlers live in three modules, exposed here as methods: approvals, devices and the guard
in this one; closes and command outcomes in ``engine.user_commands``; terminal-side facts
(reconciliation, the terminal's own events), level moves and what comes due in time in
``engine.user_terminal``.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

import msgspec

from engine import user_commands, user_terminal
from engine.effects import Arm, Effects
from engine.guards import DrawdownGuard, GuardDecision
from engine.instruments import DEFAULT_INSTRUMENTS, Instrument
from engine.lifecycle import FINAL_STATES, PositionState
from engine.notices import notice_of
from engine.positions import Position
from engine.records import (
    AlertRaised,
    Approval,
    ApprovalSaved,
    CommandIssued,
    GuardSaved,
    PositionSaved,
    decision_key,
    signal_key,
)
from engine.sizing import UserSettings, check_entry, check_stops, protective_levels, size_volume
from engine.stoprules import break_even_rule, default_rules, trailing_rule
from engine.trailing import LevelMove
from engine.triggers import Trigger
from engine.views import net_pl
from protocol.common import Alert, AlertLevel, Origin
from protocol.device import (
    Ack,
    Command,
    Deal,
    OpenCommand,
    TerminalPosition,
)
from protocol.device import PositionEvent as TerminalEvent
from protocol.errors import Conflict, Forbidden, GuardBlocked, Refused
from protocol.ids import client_id, command_id
from protocol.signals import Signal

_OPEN = PositionState.OPEN  # read once: Enum.MEMBER is a slow lookup (see engine.positions)
_CLOSED = PositionState.CLOSED

__all__ = ["DeviceInfo", "InFlight", "Timing", "UserCore"]

Category = Literal["done", "retryable", "final", "already_closed", "unknown"]


class Timing(NamedTuple):
    """Deadlines, backoffs and rates (milliseconds)."""

    open_deadline: int = 15_000
    close_deadline: int = 10_000
    modify_deadline: int = 10_000
    retry_base: int = 200
    retry_cap: int = 5_000
    max_close_attempts: int = 5
    max_open_attempts: int = 3
    modify_interval: int = 1_000
    """At most one modify per position per interval (trailing stops move often)."""
    guard_save_interval: int = 10_000


class DeviceInfo(NamedTuple):
    """What the user core knows of one of the user's devices."""

    device_id: str
    instruments: Mapping[str, Instrument]
    """Canonical symbol -> the broker's specs for it (volume limits, stops level)."""
    connected: bool = True
    stale: bool = False
    symbols: frozenset[str] | None = None
    """Canonical symbols it can open (its hello's symbols through its symbol map); None:
    every symbol (a device that names none)."""


class InFlight(msgspec.Struct, frozen=True, gc=False):
    """A command sent and not yet resolved (untracked by the cyclic collector: it holds no
    container, and a storm makes 100,000 at once)."""

    command: Command
    device_id: str
    position_id: str
    lost: bool = False
    """The link dropped before its answer (the position is UNKNOWN until reconnect)."""


def _position_id_for(approval_id: str) -> str:
    """Derived from the approval, so a retried approval names the same position."""
    return "P" + hashlib.blake2b(approval_id.encode(), digest_size=8).hexdigest()


class UserCore:
    """One user's positions and decisions."""

    RECENT_CLOSED = 200

    def __init__(
        self,
        user_id: str,
        settings: UserSettings | None = None,
        instruments: Mapping[str, Instrument] | None = None,
        timing: Timing | None = None,
    ) -> None:
        self.user_id = user_id
        self.settings = settings or UserSettings()
        self.instruments: dict[str, Instrument] = dict(instruments or DEFAULT_INSTRUMENTS)
        self.timing = timing or Timing()
        self.positions: dict[str, Position] = {}
        self.recent_closed: OrderedDict[str, Position] = OrderedDict()
        self.inflight: dict[str, InFlight] = {}
        self.approvals: dict[str, Approval] = {}
        self.devices: dict[str, DeviceInfo] = {}
        self.guard = DrawdownGuard(self.settings.drawdown, user_id)
        self.balance: float | None = None
        self.equity: float | None = None
        self.currency = ""
        self.unreported: dict[str, float] = {}
        """Realised P&L of the positions closed since the last account report, by id: the
        terminal books a close at once but reports its balance later (with its next account
        frame), so ``balance`` plus these is the balance the closes left. The equity curve
        anchors there, so its opening balance does not jump by a close for a heartbeat."""
        self._retries: dict[str, tuple[int, Command]] = {}  # position -> (due, last command)
        self._modifies: dict[str, int] = {}  # position id -> due time of its pending modify
        self._last_modify: dict[str, int] = {}
        self._guard_saved_ms = 0
        self._expiries: list[tuple[int, str]] = []  # heap of (expires_at_ms, position id)

    # -- restoring -----------------------------------------------------------------------------

    def restore(
        self,
        positions: Iterable[Position],
        commands: Iterable[CommandIssued],
        approvals: Iterable[Approval],
        guard: GuardSaved | None,
        arm: bool = True,
    ) -> Effects:
        """Rebuild from recovered state; returns the arms for every watched position (none
        with ``arm=False``: at a node's start the symbol actors arm the whole state at once)."""
        effects = Effects()
        arms, own, is_open = effects.arms, self.positions, PositionState.OPEN
        for p in positions:
            if p.state in FINAL_STATES:  # closed, its fill pending: a deal may still bring it
                self.recent_closed[p.id] = p
                continue
            own[p.id] = p
            if p.state is is_open:
                if arm:
                    arms.append(Arm(p))
                if p.expires_at_ms is not None:
                    heapq.heappush(self._expiries, (p.expires_at_ms, p.id))
        for c in commands:
            if c.position_id in self.positions:
                lost = self.positions[c.position_id].state is PositionState.UNKNOWN
                self.inflight[c.command.command_id] = InFlight(
                    c.command, c.device_id, c.position_id, lost
                )
        for a in approvals:
            self.approvals[decision_key(a.signal)] = a
        if guard is not None:
            self.guard.restore(guard.peak, guard.level, guard.opens_blocked)
            self.balance, self.equity = guard.balance, guard.equity
        return effects

    # -- devices -------------------------------------------------------------------------------

    def on_device(self, info: DeviceInfo, now_ms: int) -> Effects:
        """A device connected, disconnected or changed health; flags follow staleness."""
        self.devices[info.device_id] = info
        for symbol, instrument in info.instruments.items():
            self.instruments.setdefault(symbol, instrument)
        effects = Effects()
        for p in list(self.positions.values()):
            if p.device_id != info.device_id:
                continue
            flagged = "stale_device" in p.flags
            if info.stale and not flagged:
                self._save(p.with_changes(now_ms, flags=(*p.flags, "stale_device")), effects)
            elif not info.stale and flagged:
                self._save(
                    p.with_changes(now_ms, flags=tuple(f for f in p.flags if f != "stale_device")),
                    effects,
                )
        return effects

    def _trading_device(self, symbol: str) -> DeviceInfo:
        """The first connected, fresh device that can trade ``symbol``.

        Raises:
            Refused: no device is connected, or none of those connected offers ``symbol``
                (the open would reach no terminal: refused now, nothing recorded).
        """
        live = [d for d in self.devices.values() if d.connected and not d.stale]
        if not live:
            raise Refused("no connected device to trade on", user_id=self.user_id)
        for d in live:
            if d.symbols is None or symbol in d.symbols:
                return d
        raise Refused(
            f"no connected device can trade {symbol} (connected, without it: "
            f"{', '.join(d.device_id for d in live)})",
            symbol=symbol,
            devices=len(live),
        )

    def instrument_for(self, symbol: str, device_id: str | None = None) -> Instrument:
        if device_id is not None and device_id in self.devices:
            inst = self.devices[device_id].instruments.get(symbol)
            if inst is not None:
                return inst
        try:
            return self.instruments[symbol]
        except KeyError:
            raise Refused(f"{symbol} is not a symbol the engine trades", symbol=symbol) from None

    # -- approvals -----------------------------------------------------------------------------

    def decide(
        self,
        *,
        approval_id: str,
        signal: Signal,
        decision: Literal["approve", "reject"],
        bid: float | None,
        ask: float | None,
        now_ms: int,
        ip: str = "",
        user_agent: str = "",
        volume: float | None = None,
    ) -> tuple[Approval, Effects]:
        """Record a user's decision on a signal; an approval opens a position.

        ``volume`` overrides the sizing rule with a lot size the user chose; it is checked
        against the instrument's min, max and step as typed (never rounded).

        Raises:
            Forbidden: the signal is not for this user.
            Conflict: the user already decided on this signal (any version of it).
            Refused: (and subclasses) the open cannot be placed: guard, device, late, moved,
                sizing, stops. Nothing is recorded then, so the user may decide again.
        """
        if self.user_id not in signal.audience:
            raise Forbidden("this signal is not for you")
        key = signal_key(signal.strategy_id, signal.signal_id, signal.version)
        decided = decision_key(key)
        if decided in self.approvals:
            earlier = self.approvals[decided]
            raise Conflict(
                f"already decided: {earlier.decision}",
                decision=earlier.decision,
                approval_id=earlier.id,
            )
        effects = Effects()
        expires = signal.expires_at_ms if self.settings.auto_close_on_expiry else None
        if decision == "reject":
            approval = Approval(
                id=approval_id,
                user_id=self.user_id,
                signal=key,
                decision="reject",
                decided_ms=now_ms,
                ip=ip,
                user_agent=user_agent,
            )
            self.approvals[decided] = approval
            effects.records.append(ApprovalSaved(approval=approval))
            return approval, effects

        if self.guard.opens_blocked:
            raise GuardBlocked(
                "drawdown is critical: new positions are blocked",
                drawdown=round(self.guard.drawdown, 4),
            )
        device = self._trading_device(signal.symbol)
        instrument = self.instrument_for(signal.symbol, device.device_id)
        if bid is None or ask is None:
            raise Refused(f"no price for {signal.symbol} yet", symbol=signal.symbol)
        to_points = instrument.to_points
        entry = to_points(signal.entry)
        sl = None if signal.sl is None else to_points(signal.sl)
        tp = None if signal.tp is None else to_points(signal.tp)
        plan = check_entry(
            instrument,
            signal.side,
            entry,
            signal.created_at_ms,
            signal.expires_at_ms,
            to_points(bid),
            to_points(ask),
            now_ms,
            self.settings,
        )
        if volume is not None:
            volume = instrument.check_volume(volume)
        else:
            volume = size_volume(
                instrument,
                self.settings,
                signal.volume,
                signal.risk_percent,
                self.equity,
                plan.price,
                sl,
            )
        check_stops(instrument, signal.side, plan.price, sl, tp)
        broker_sl, broker_tp = protective_levels(
            instrument, signal.side, plan.price, sl, tp, self.settings
        )
        # Each rule the signal carries wins over the user's default for it.
        trailing, break_even = default_rules(
            instrument,
            None if signal.trailing is not None else self.settings.trailing,
            None if signal.break_even is not None else self.settings.break_even,
        )
        trailing = trailing_rule(instrument, signal.trailing) or trailing
        break_even = break_even_rule(instrument, signal.break_even) or break_even

        position_id = _position_id_for(approval_id)
        cid = command_id(position_id, "open", 1)
        position = Position(
            id=position_id,
            user_id=self.user_id,
            device_id=device.device_id,
            account=device.device_id,
            symbol=signal.symbol,
            side=signal.side,
            volume=volume,
            origin=Origin.SIGNAL,
            open_price=plan.price,
            sl=sl,
            tp=tp,
            trailing=trailing,
            break_even=break_even,
            client_id=client_id(position_id),
            signal_id=key,
            approval_id=approval_id,
            expires_at_ms=expires,
            attempt=1,
            command_id=cid,
            updated_ms=now_ms,
        )
        command = OpenCommand(
            command_id=cid,
            client_id=position.client_id,
            symbol=signal.symbol,
            side=signal.side,
            order_type=plan.order_type,
            volume=volume,
            price=instrument.to_price(plan.price),
            sl=None if broker_sl is None else instrument.to_price(broker_sl),
            tp=None if broker_tp is None else instrument.to_price(broker_tp),
            deviation_points=self.settings.deviation_points,
            expires_ms=plan.expires_ms,
            deadline_ms=now_ms + self.timing.open_deadline,
        )
        approval = Approval(
            id=approval_id,
            user_id=self.user_id,
            signal=key,
            decision="approve",
            decided_ms=now_ms,
            expires_at_ms=expires,
            ip=ip,
            user_agent=user_agent,
            position_id=position_id,
        )
        self.approvals[decided] = approval
        effects.records.append(ApprovalSaved(approval=approval))
        self._save(position, effects)
        self._issue(command, device.device_id, position_id, now_ms, effects)
        return approval, effects

    # -- triggers and closes -------------------------------------------------------------------

    # -- command outcomes ----------------------------------------------------------------------

    # -- commands (engine.user_commands) ----------------------------------------------------

    def on_triggers(self, triggers: Iterable[Trigger], now_ms: int) -> Effects:
        """SL/TP fired: close each position that is still OPEN (the hot path)."""
        return user_commands.on_triggers(self, triggers, now_ms)

    def close_position(self, position_id: str, reason: str, now_ms: int) -> Effects:
        """Close a position by hand, by expiry or by a guard (see ``user_commands``)."""
        return user_commands.close_position(self, position_id, reason, now_ms)

    def partial_close(self, position_id: str, volume: float, now_ms: int) -> Effects:
        return user_commands.partial_close(self, position_id, volume, now_ms)

    def modify_position(
        self,
        position_id: str,
        changes: user_commands.LevelChanges,
        bid: float | None,
        ask: float | None,
        now_ms: int,
    ) -> Effects:
        """A user changes an OPEN position's SL/TP or its rules (see ``user_commands``)."""
        return user_commands.modify_position(self, position_id, changes, bid, ask, now_ms)

    def on_result(
        self, command_id_: str, category: Category, ack: Ack | None, now_ms: int
    ) -> Effects:
        """The device's answer to one of our commands (or its classified absence)."""
        return user_commands.on_result(self, command_id_, category, ack, now_ms)

    def on_link_lost(self, command_ids: Iterable[str], now_ms: int) -> Effects:
        """The device went away with these commands unanswered: opens and closes -> UNKNOWN."""
        return user_commands.on_link_lost(self, command_ids, now_ms)

    def _close(
        self,
        p: Position,
        reason: str,
        now_ms: int,
        effects: Effects,
        trigger_price: int | None = None,
        armed: bool = True,
    ) -> None:
        user_commands.close(self, p, reason, now_ms, effects, trigger_price, armed)

    # -- helpers -------------------------------------------------------------------------------

    def _issue(
        self, command: Command, device_id: str, position_id: str, now_ms: int, effects: Effects
    ) -> None:
        self.inflight[command.command_id] = InFlight(command, device_id, position_id)
        effects.commands.append((device_id, command))
        effects.records.append(
            CommandIssued(
                command=command,
                position_id=position_id,
                user_id=self.user_id,
                device_id=device_id,
                issued_ms=now_ms,
            )
        )

    def _save(self, p: Position, effects: Effects) -> None:
        """Keep ``p`` as the current value of its position and journal it (and note a fill or
        a close for the user's notifications: only here is the state before known)."""
        state = p.state
        if state is _OPEN or state is _CLOSED:
            notice = notice_of(self.positions.get(p.id), p)
            if notice is not None:
                effects.notices.append(notice)
        if state in FINAL_STATES:
            was_live = self.positions.pop(p.id, None) is not None
            net = net_pl(p.realized_pl, p.commission, p.swap)
            if was_live and state is _CLOSED and net is not None:
                # What the close did to the balance: commission and swap included.
                self.unreported[p.id] = net
            self.recent_closed[p.id] = p
            self.recent_closed.move_to_end(p.id)
            while len(self.recent_closed) > self.RECENT_CLOSED:
                self.recent_closed.popitem(last=False)
            self._retries.pop(p.id, None)
            self._modifies.pop(p.id, None)
            self._last_modify.pop(p.id, None)
        else:
            self.positions[p.id] = p
            if p.expires_at_ms is not None and p.state is PositionState.OPEN:
                heapq.heappush(self._expiries, (p.expires_at_ms, p.id))
        effects.records.append(PositionSaved(position=p))
        effects.changed.append(p)

    def _alert(
        self,
        effects: Effects,
        kind: str,
        level: AlertLevel,
        now_ms: int,
        message: str,
        p: Position | None = None,
    ) -> None:
        alert = Alert(
            kind=kind,
            level=level,
            message=message,
            time_ms=now_ms,
            user_id=self.user_id,
            device_id=p.device_id if p else None,
            symbol=p.symbol if p else None,
            position_id=p.id if p else None,
        )
        effects.alerts.append(alert)
        effects.records.append(AlertRaised(alert=alert))

    def _backoff(self, attempt: int) -> int:
        return int(min(self.timing.retry_cap, self.timing.retry_base * 2 ** max(0, attempt - 1)))

    def _realized(self, p: Position, close_points: int | None) -> float | None:
        if close_points is None or p.open_price is None:
            return None
        instrument = self.instrument_for(p.symbol, p.device_id)
        diff = (close_points - p.open_price) * p.side.sign / instrument.scale
        return round(diff * p.volume * instrument.contract_size, 2)

    # -- terminal facts and time (engine.user_terminal) ---------------------------------------

    def on_snapshot(
        self, device_id: str, terminal: Iterable[TerminalPosition], now_ms: int
    ) -> Effects:
        """A device's positions snapshot (canonical symbols): reconcile."""
        return user_terminal.on_snapshot(self, device_id, terminal, now_ms)

    def on_event(self, device_id: str, event: TerminalEvent, now_ms: int) -> Effects:
        """The terminal closed or opened a position on its own (canonical symbol)."""
        return user_terminal.on_event(self, device_id, event, now_ms)

    def on_deals(self, device_id: str, deals: Iterable[Deal], now_ms: int) -> Effects:
        """A device's closing deals: fill-pending positions take their fill (once)."""
        return user_terminal.on_deals(self, device_id, deals, now_ms)

    def on_level_moves(self, moves: Iterable[LevelMove], now_ms: int) -> Effects:
        return user_terminal.on_level_moves(self, moves, now_ms)

    def tick(self, now_ms: int) -> Effects:
        """Issue the retries, modifies and expiry closes that have come due."""
        return user_terminal.tick(self, now_ms)

    def next_due_ms(self) -> int | None:
        """When :meth:`tick` next has something to do (None: nothing is scheduled)."""
        if not (self._retries or self._modifies or self._expiries):
            return None  # the usual case, asked twice for every fire
        due = [d for d, _ in self._retries.values()]
        due += self._modifies.values()
        expiry = self._next_expiry()
        if expiry is not None:
            due.append(expiry)
        return min(due) if due else None

    def _next_expiry(self) -> int | None:
        """The earliest expiry of an OPEN position (stale heap entries are dropped here)."""
        heap = self._expiries
        while heap:
            at, pid = heap[0]
            p = self.positions.get(pid)
            if p is not None and p.state is PositionState.OPEN and p.expires_at_ms == at:
                return at
            heapq.heappop(heap)
        return None

    def pop_expired(self, now_ms: int) -> list[str]:
        """Ids of OPEN positions whose expiry has come (removed from the schedule)."""
        expired: list[str] = []
        while (at := self._next_expiry()) is not None and at <= now_ms:
            pid = heapq.heappop(self._expiries)[1]
            # Every save of an OPEN position pushes its expiry again (a modify, a partial close,
            # new costs): the copies are all current, and the position closes once.
            if pid not in expired:
                expired.append(pid)
        return expired

    # -- account and guard ---------------------------------------------------------------------

    def on_account(self, balance: float, equity: float, currency: str, now_ms: int) -> Effects:
        """An account report: the drawdown guard may block opens or close everything."""
        self.balance, self.equity, self.currency = balance, equity, currency or self.currency
        # A report read after a close includes it: a terminal sends its frames in order, and
        # books a close before it acks or reports it.
        self.unreported.clear()
        effects = Effects()
        alerts, decisions = self.guard.update(equity, now_ms)
        for alert in alerts:
            effects.alerts.append(alert)
            effects.records.append(AlertRaised(alert=alert))
        if GuardDecision.CLOSE_ALL in decisions:
            for p in list(self.positions.values()):
                if p.state in (PositionState.OPEN, PositionState.CLOSE_FAILED):
                    self._close(p, "guard", now_ms, effects, armed=p.state is PositionState.OPEN)
        if alerts or decisions or now_ms - self._guard_saved_ms >= self.timing.guard_save_interval:
            self._guard_saved_ms = now_ms
            effects.records.append(
                GuardSaved(
                    user_id=self.user_id,
                    peak=self.guard.peak,
                    level=int(self.guard.level),
                    opens_blocked=self.guard.opens_blocked,
                    balance=balance,
                    equity=equity,
                    time_ms=now_ms,
                )
            )
        return effects
