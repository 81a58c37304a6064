"""The user core: one user's state and the decisions taken on it.

:class:`UserCore` is driven by a user actor. Every handler takes the time, changes the core's
own state and returns :class:`~engine.effects.Effects`; it never waits and never does I/O.

It decides here (approvals, closes, partial closes, a user's level changes, lost links, the
drawdown guard, what comes due) and keeps its decisions through the parts it is made of, each
the owner of its state (none touches another's):

* the opening of a position for an approved signal (``engine.user.opening``, pure);
* the position book (``engine.user.book``): live positions and the latest closes;
* the command tracker (``engine.user.commands``): commands in flight, retries, modifies;
* the command outcomes (``engine.user.outcomes``): what a device's answer does to a position;
* the schedule (``engine.user.schedule``): expiries, retries and modifies issued in time,
  trailing moves;
* the terminal reconciler (``engine.user.terminal``): what a terminal reports on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

from msgspec import UNSET

from engine.effects import Arm, Disarm, Effects
from engine.guards import DrawdownGuard, GuardDecision
from engine.instruments import DEFAULT_INSTRUMENTS, Instrument
from engine.lifecycle import PositionEvent, PositionState
from engine.positions import Position
from engine.records import (
    AlertRaised,
    Approval,
    ApprovalSaved,
    CommandIssued,
    GuardSaved,
    decision_key,
    signal_key,
)
from engine.sizing import (
    ProtectiveStops,
    UserSettings,
    check_stops,
)
from engine.stoprules import (
    LevelChanges,
    break_even_rule,
    trailing_rule,
)
from engine.trailing import LevelMove
from engine.triggers import Trigger, TriggerKind
from engine.user.book import PositionBook
from engine.user.commands import Category, CommandTracker, InFlight
from engine.user.opening import open_for_signal
from engine.user.outcomes import CommandOutcomes
from engine.user.schedule import Schedule
from engine.user.terminal import TerminalReconciler
from engine.user.timing import Timing
from protocol.device import (
    Ack,
    CloseCommand,
    Deal,
    ModifyCommand,
    PartialCloseCommand,
    TerminalPosition,
)
from protocol.device import PositionEvent as TerminalEvent
from protocol.errors import (
    Conflict,
    Forbidden,
    GuardBlocked,
    LateSignal,
    NotFound,
    Refused,
    SizingRefused,
)
from protocol.ids import command_id
from protocol.signals import Signal

__all__ = ["DeviceInfo", "UserCore"]

# The hot path's enum members, read once: on CPython 3.11 ``Enum.MEMBER`` goes through the
# slow attribute hook that ``EnumType.__getattr__`` installs (~150-250 ns a lookup).
_OPEN = PositionState.OPEN
_SL = TriggerKind.SL


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


class UserCore:
    """One user's positions and decisions."""

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
        self.approvals: dict[str, Approval] = {}
        self.devices: dict[str, DeviceInfo] = {}
        self.guard = DrawdownGuard(self.settings.drawdown, user_id)
        self.balance: float | None = None
        self.equity: float | None = None
        self.currency = ""
        self._guard_saved_ms = 0
        self._commands = CommandTracker(user_id)
        self._schedule = Schedule(self._commands)
        self._book = PositionBook(ended=self._commands.forget, expiring=self._schedule.watch)
        # The close path's two calls, bound once: a breach storm closes 100,000 positions.
        self._issue_close = self._commands.issue_close
        self._save = self._book.save
        self._terminal = TerminalReconciler(
            user_id, self._book, self._commands, self.instrument_for
        )
        self._outcomes = CommandOutcomes(user_id, self._book, self._commands, self.instrument_for)

    # -- what the book and the tracker hold (read-only) ----------------------------------------

    @property
    def positions(self) -> Mapping[str, Position]:
        """Id -> each live (not final) position."""
        return self._book.positions

    @property
    def recent_closed(self) -> Mapping[str, Position]:
        """Id -> the latest final positions, oldest first (a fill-pending close among them
        may still take its fill)."""
        return self._book.recent_closed

    @property
    def unreported(self) -> Mapping[str, float]:
        """Net P&L of the closes since the last account report, by position id: ``balance``
        plus these is the balance the closes left."""
        return self._book.unreported

    @property
    def inflight(self) -> Mapping[str, InFlight]:
        """Command id -> each command sent and not yet resolved."""
        return self._commands.in_flight

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
        arms, book = effects.arms, self._book
        for p in positions:
            book.restore(p)
            if arm and p.watched:
                arms.append(Arm(p))
        live = book.positions
        for c in commands:
            owner = live.get(c.position_id)
            if owner is not None:
                lost = owner.state is PositionState.UNKNOWN
                self._commands.track(InFlight(c.command, c.device_id, c.position_id, lost))
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
        save = self._book.save
        for p in list(self._book.positions.values()):
            if p.device_id != info.device_id:
                continue
            flagged = "stale_device" in p.flags
            if info.stale and not flagged:
                save(p.with_changes(now_ms, flags=(*p.flags, "stale_device")), effects)
            elif not info.stale and flagged:
                save(
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

    def apply_settings(self, settings: UserSettings) -> None:
        """The next decision and equity report use ``settings``; the drawdown guard judges the
        next report by its new limits."""
        self.settings = settings
        self.guard.limits = settings.drawdown

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
            LateSignal: the signal has expired (whatever the decision).
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
        if signal.expires_at_ms is not None and now_ms >= signal.expires_at_ms:
            # After the two refusals above, so those keep their answer once it has expired.
            raise LateSignal(
                "the signal has expired", expires_at_ms=signal.expires_at_ms, now_ms=now_ms
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
        position, command = open_for_signal(
            user_id=self.user_id,
            approval_id=approval_id,
            signal=signal,
            signal_key=key,
            device_id=device.device_id,
            instrument=instrument,
            bid=bid,
            ask=ask,
            volume=volume,
            equity=self.equity,
            settings=self.settings,
            timing=self.timing,
            expires_at_ms=expires,
            now_ms=now_ms,
        )
        position_id = position.id
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
        self._book.save(position, effects)
        self._commands.issue(command, device.device_id, position_id, now_ms, effects)
        return approval, effects

    # -- triggers and closes -------------------------------------------------------------------

    def on_triggers(self, triggers: Iterable[Trigger], now_ms: int) -> Effects:
        """SL/TP fired: close each position that is still OPEN (the hot path)."""
        effects = Effects()
        positions, close = self._book.positions, self._close
        for t in triggers:
            p = positions.get(t.position_id)
            if p is None or p.state is not _OPEN:
                continue  # closing or closed by other means meanwhile
            close(p, "sl" if t.kind is _SL else "tp", now_ms, effects, t.price, False)
        return effects

    def close_position(self, position_id: str, reason: str, now_ms: int) -> Effects:
        """Close a position by hand (owner or admin), by expiry, or by a guard.

        Raises:
            NotFound: no such live position for this user.
            Conflict: it is not OPEN or CLOSE_FAILED (already closing, unknown, pending), or
                it is external and not adopted.
        """
        p = self._commandable(position_id)
        if p.state not in (PositionState.OPEN, PositionState.CLOSE_FAILED):
            raise Conflict(f"position is {p.state.value}", state=p.state.value)
        effects = Effects()
        self._close(p, reason, now_ms, effects, armed=p.state is PositionState.OPEN)
        return effects

    def _commandable(self, position_id: str) -> Position:
        """The live position ``position_id``, which the engine may send commands for.

        Raises:
            NotFound: no such live position for this user.
            Conflict: an external position its user has not adopted (the terminal's, not the
                engine's, until then).
        """
        p = self._book.positions.get(position_id)
        if p is None:
            raise NotFound("no such open position", position_id=position_id)
        if not p.adopted:
            raise Conflict(
                "position is external and not adopted: adopt it first",
                state=p.state.value,
                adopted=False,
            )
        return p

    def adopt(self, position_id: str, now_ms: int) -> tuple[Position, Effects]:
        """The user adopts an external position: from now on its SL/TP are watched (armed)
        and it takes commands like any other. Adopting one adopted already (or the engine's
        own) changes nothing.

        Raises:
            NotFound: no such position of this user's, live or recently closed.
            Conflict: it is closed (or otherwise not open).
        """
        p = self._book.positions.get(position_id)
        if p is None:
            ended = self._book.recent_closed.get(position_id)
            if ended is None:
                raise NotFound("no such open position", position_id=position_id)
            raise Conflict(f"position is {ended.state.value}", state=ended.state.value)
        if p.adopted:
            return p, Effects()
        if p.state is not PositionState.OPEN:
            raise Conflict(f"position is {p.state.value}", state=p.state.value)
        return self._terminal.adopt(p, now_ms)

    def _close(
        self,
        p: Position,
        reason: str,
        now_ms: int,
        effects: Effects,
        trigger_price: int | None = None,
        armed: bool = True,
    ) -> None:
        # A close after an earlier one (a retry, or a new try after CLOSE_FAILED) must not reuse
        # an id: the EA would answer it with the earlier result instead of closing.
        attempt = p.attempt + 1 if p.close_reason is not None else 1
        cid = command_id(p.id, "close", attempt)
        assert p.ticket is not None  # an OPEN position always has its ticket
        command = CloseCommand(
            command_id=cid,
            ticket=p.ticket,
            symbol=p.symbol,
            volume=p.volume,
            deviation_points=self.settings.deviation_points,
            reason=reason,
            deadline_ms=now_ms + self.timing.close_deadline,
        )
        closing = p.closing(now_ms, attempt, cid, reason, trigger_price)
        # The command goes out first; its record follows (docs/architecture.md: ids make a
        # resend harmless).
        self._issue_close(command, p.device_id, p.id, now_ms, effects)
        self._save(closing, effects)
        if armed:
            effects.arms.append(Disarm(p.symbol, p.id))

    def partial_close(self, position_id: str, volume: float, now_ms: int) -> Effects:
        """Close ``volume`` lots of an OPEN position (the rest stays watched).

        Raises:
            NotFound: no such live position.
            Conflict: it is not OPEN, or external and not adopted.
            SizingRefused: the volume does not fit the broker's step, or leaves nothing.
        """
        p = self._commandable(position_id)
        if p.state is not PositionState.OPEN or p.ticket is None:
            raise Conflict(f"position is {p.state.value}", state=p.state.value)
        volume = self.instrument_for(p.symbol, p.device_id).normalize_volume(volume)
        if volume >= p.volume:
            raise SizingRefused(
                "a partial close must leave some volume; close it instead",
                volume=volume,
                position_volume=p.volume,
            )
        effects = Effects()
        updated = p.with_changes(now_ms, modify_count=p.modify_count + 1)
        command = PartialCloseCommand(
            command_id=command_id(p.id, "pclose", updated.modify_count),
            ticket=p.ticket,
            symbol=p.symbol,
            volume=volume,
            deviation_points=self.settings.deviation_points,
            deadline_ms=now_ms + self.timing.close_deadline,
        )
        self._book.save(updated, effects)
        self._commands.issue(command, p.device_id, p.id, now_ms, effects)
        return effects

    def modify_position(
        self,
        position_id: str,
        changes: LevelChanges,
        bid: float | None,
        ask: float | None,
        now_ms: int,
    ) -> Effects:
        """A user changes an OPEN position's SL/TP, trailing stop or break-even move.

        Nothing changes unless everything is valid. The position is saved (journaled) with its
        new levels and rules and re-armed with them; a changed SL or TP is sent to the broker
        as a ``modify`` (rate-limited like the trailing stop's, with ``protective_stops``
        ``same``; with ``disaster`` the broker keeps its wide backstop).

        Raises:
            NotFound: no such live position for this user.
            Conflict: it is not OPEN, or external and not adopted.
            Refused: a new SL/TP and no price for the symbol yet.
            SizingRefused: a new SL/TP on the wrong side of the price or within the stops
                level, or a rule closer than the broker allows (``engine.stoprules``).
        """
        p = self._commandable(position_id)
        if p.state is not PositionState.OPEN or p.ticket is None or p.open_price is None:
            raise Conflict(f"position is {p.state.value}", state=p.state.value)
        instrument = self.instrument_for(p.symbol, p.device_id)
        to_points = instrument.to_points
        sl, tp = p.sl, p.tp
        if changes.sl is not UNSET:
            sl = None if changes.sl is None else to_points(changes.sl)
        if changes.tp is not UNSET:
            tp = None if changes.tp is None else to_points(changes.tp)
        levels_changed = (sl, tp) != (p.sl, p.tp)
        if levels_changed:
            if bid is None or ask is None:
                raise Refused(f"no price for {p.symbol} yet", symbol=p.symbol)
            # Judged against the price the position would close at now; only the levels that
            # change (an unchanged SL the price has come close to is not the caller's to fix).
            market = to_points(bid) if p.side.sign > 0 else to_points(ask)
            check_stops(
                instrument,
                p.side,
                market,
                sl if sl != p.sl else None,
                tp if tp != p.tp else None,
            )
        trailing = p.trailing
        if changes.trailing is not UNSET:
            trailing = trailing_rule(instrument, changes.trailing)
        break_even = p.break_even
        if changes.break_even is not UNSET:
            break_even = break_even_rule(instrument, changes.break_even)
        effects = Effects()
        if not levels_changed and (trailing, break_even) == (p.trailing, p.break_even):
            return effects  # nothing to change: nothing journaled, nothing sent
        updated = p.with_changes(now_ms, sl=sl, tp=tp, trailing=trailing, break_even=break_even)
        self._book.save(updated, effects)
        # Re-armed whole: the trigger book takes the levels, the trailing book the rules.
        effects.arms.append(Arm(updated))
        if levels_changed and self.settings.protective_stops is ProtectiveStops.SAME:
            self._commands.request_modify(p.id, now_ms, self.timing.modify_interval)
        return effects

    # -- command outcomes (engine.user.outcomes) ----------------------------------------------

    def on_result(
        self, command_id_: str, category: Category, ack: Ack | None, now_ms: int
    ) -> Effects:
        """The device's answer to one of our commands (or its classified absence): see
        :meth:`engine.user.outcomes.CommandOutcomes.on_result`."""
        return self._outcomes.on_result(command_id_, category, ack, self.timing, now_ms)

    def on_link_lost(self, command_ids: Iterable[str], now_ms: int) -> Effects:
        """The device went away with these commands unanswered: opens and closes -> UNKNOWN."""
        effects = Effects()
        commands, positions = self._commands, self._book.positions
        for cid in command_ids:
            flight = commands.get(cid)
            if flight is None:
                continue
            if isinstance(flight.command, ModifyCommand):
                commands.resolve(cid, "link_lost", now_ms, effects)
                continue
            p = positions.get(flight.position_id)
            commands.mark_lost(cid)
            if (
                p is not None
                and p.command_id == cid
                and p.state in (PositionState.PENDING_OPEN, PositionState.CLOSING)
            ):
                self._book.save(p.transition(PositionEvent.LINK_LOST, now_ms), effects)
        return effects

    # -- terminal facts (engine.user.terminal) -------------------------------------------------

    def on_snapshot(
        self, device_id: str, terminal: Iterable[TerminalPosition], now_ms: int
    ) -> Effects:
        """A device's positions snapshot (canonical symbols): reconcile."""
        return self._terminal.on_snapshot(device_id, terminal, self.settings, self.timing, now_ms)

    def on_event(self, device_id: str, event: TerminalEvent, now_ms: int) -> Effects:
        """The terminal closed or opened a position on its own (canonical symbol)."""
        return self._terminal.on_event(device_id, event, now_ms)

    def on_deals(self, device_id: str, deals: Iterable[Deal], now_ms: int) -> Effects:
        """A device's closing deals: fill-pending positions take their fill (once)."""
        return self._terminal.on_deals(device_id, deals, now_ms)

    # -- time and level moves (engine.user.schedule) -------------------------------------------

    def on_level_moves(self, moves: Iterable[LevelMove], now_ms: int) -> Effects:
        """Trailing/break-even moved SLs: keep them, and have the broker's stops follow."""
        return self._schedule.on_level_moves(
            self._book, moves, self.settings.protective_stops, self.timing, now_ms
        )

    def tick(self, now_ms: int) -> Effects:
        """Issue the retries, modifies and expiry closes that have come due."""
        effects = self._schedule.issue_due(self._book, self.instrument_for, self.timing, now_ms)
        for pid in self.pop_expired(now_ms):
            effects.extend(self.close_position(pid, "expiry", now_ms))
        return effects

    def next_due_ms(self) -> int | None:
        """When :meth:`tick` next has something to do (None: nothing is scheduled)."""
        return self._schedule.next_due_ms(self._book.positions)

    def pop_expired(self, now_ms: int) -> list[str]:
        """Ids of OPEN positions whose expiry has come (removed from the schedule)."""
        return self._schedule.pop_expired(self._book.positions, now_ms)

    # -- account and guard ---------------------------------------------------------------------

    def on_account(self, balance: float, equity: float, currency: str, now_ms: int) -> Effects:
        """An account report: the drawdown guard may block opens or close everything."""
        self.balance, self.equity, self.currency = balance, equity, currency or self.currency
        # A report read after a close includes it: a terminal sends its frames in order, and
        # books a close before it acks or reports it.
        self._book.balance_reported()
        effects = Effects()
        alerts, decisions = self.guard.update(equity, now_ms)
        for alert in alerts:
            effects.alerts.append(alert)
            effects.records.append(AlertRaised(alert=alert))
        if GuardDecision.CLOSE_ALL in decisions:
            for p in list(self._book.positions.values()):
                # An external position not adopted is the trader's: the engine sends it nothing.
                if p.adopted and p.state in (PositionState.OPEN, PositionState.CLOSE_FAILED):
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
