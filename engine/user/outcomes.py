"""Command outcomes: what a device's answer to one of a user's commands does to its position.

An open done opens the position (or waits for a pending order's fill), a close done or
"already closed" closes it with the fill the ack carries, a partial close done keeps the volume
left, a modify refused as retryable waits for its interval; a retryable refusal of an open or a
close is tried again after a backoff until its attempts run out, a final one ends the open or
fails the close with an alert, and "unknown" leaves the position UNKNOWN for the terminal's
snapshot. The user core hands every answer here; its book and its command tracker keep what
is decided.
"""

from __future__ import annotations

from engine.effects import Arm, Effects
from engine.lifecycle import PositionEvent, PositionState
from engine.positions import FILL_PENDING, Position
from engine.records import AlertRaised
from engine.user.book import InstrumentLookup, PositionBook, realized_pl
from engine.user.commands import Category, CommandTracker
from engine.user.timing import Timing
from protocol.common import Alert, AlertLevel
from protocol.device import Ack, CloseCommand, ModifyCommand, OpenCommand, PartialCloseCommand

__all__ = ["CommandOutcomes"]


class CommandOutcomes:
    """Turns one user's command answers into position changes, retries and alerts."""

    __slots__ = ("_book", "_commands", "_instrument_for", "_user_id")

    def __init__(
        self,
        user_id: str,
        book: PositionBook,
        commands: CommandTracker,
        instrument_for: InstrumentLookup,
    ) -> None:
        self._user_id = user_id
        self._book = book
        self._commands = commands
        self._instrument_for = instrument_for

    def on_result(
        self,
        command_id: str,
        category: Category,
        ack: Ack | None,
        timing: Timing,
        now_ms: int,
    ) -> Effects:
        """The device's answer to one of our commands (or its classified absence), under
        ``timing``'s attempts and intervals.

        An answer to a command that is not in flight (a duplicate, a late repeat, one resolved
        by reconciliation meanwhile) changes nothing.
        """
        effects = Effects()
        flight = self._commands.resolve(command_id, category, now_ms, effects, ack)
        if flight is None:
            return effects
        p = self._book.positions.get(flight.position_id)
        command = flight.command
        # Modifies and partial closes travel beside the position's own open/close command.
        beside = isinstance(command, ModifyCommand | PartialCloseCommand)
        if p is None or (p.command_id != command_id and not beside):
            return effects  # the position moved on (closed meanwhile): nothing left to do
        if isinstance(command, OpenCommand):
            self._open_result(p, command, category, ack, timing, now_ms, effects)
        elif isinstance(command, CloseCommand):
            self._close_result(p, command, category, ack, timing, now_ms, effects)
        elif isinstance(command, PartialCloseCommand):
            self._partial_result(p, command, category, ack, now_ms, effects)
        else:
            self._modify_result(p, category, ack, timing, now_ms, effects)
        return effects

    def _open_result(
        self,
        p: Position,
        command: OpenCommand,
        category: Category,
        ack: Ack | None,
        timing: Timing,
        now_ms: int,
        effects: Effects,
    ) -> None:
        save = self._book.save
        instrument = self._instrument_for(p.symbol, p.device_id)
        if category == "done" and ack is not None and ack.ticket is not None:
            if ack.fill_price is None:  # a pending order was placed: wait for its fill event
                save(p.with_changes(now_ms, ticket=ack.ticket), effects)
                return
            opened = p.transition(
                PositionEvent.OPEN_FILLED,
                now_ms,
                ticket=ack.ticket,
                open_price=instrument.to_points(ack.fill_price),
                open_time_ms=ack.fill_time_ms or now_ms,
                volume=ack.fill_volume or p.volume,
                command_id=None,
            ).with_costs(now_ms, ack.commission, ack.swap)
            save(opened, effects)
            effects.arms.append(Arm(opened))
        elif category == "retryable" and p.attempt < timing.max_open_attempts:
            save(p.transition(PositionEvent.RETRY, now_ms), effects)
            self._commands.retry_later(p.id, command, p.attempt, now_ms, timing)
        elif category == "unknown":
            save(p.transition(PositionEvent.LINK_LOST, now_ms), effects)
        else:
            reason = (
                "retries exhausted"
                if category == "retryable"
                else (ack.result_text if ack else category)
            )
            save(
                p.transition(
                    PositionEvent.OPEN_REJECTED,
                    now_ms,
                    command_id=None,
                    close_reason=f"open refused: {reason}",
                ),
                effects,
            )
            self._alert(
                effects,
                "open_rejected",
                AlertLevel.WARNING,
                now_ms,
                f"open of {p.symbol} refused by the broker: {reason}",
                p,
            )

    def _close_result(
        self,
        p: Position,
        command: CloseCommand,
        category: Category,
        ack: Ack | None,
        timing: Timing,
        now_ms: int,
        effects: Effects,
    ) -> None:
        save = self._book.save
        instrument = self._instrument_for(p.symbol, p.device_id)
        if category in ("done", "already_closed"):
            if ack is not None and ack.fill_volume and abs(ack.fill_volume - p.volume) > 1e-9:
                # The terminal closed less than we knew of: a partial close executed with its
                # ack lost, and the close resent after the reconnect names the volume from
                # before it. The P&L is the volume closed.
                p = p.with_changes(now_ms, volume=ack.fill_volume)
            fill = (
                None
                if ack is None or ack.fill_price is None
                else instrument.to_points(ack.fill_price)
            )
            event = (
                PositionEvent.CLOSE_FILLED if category == "done" else PositionEvent.BROKER_CLOSED
            )
            # "Already closed" proves the close, not its fill: the terminal's close event or
            # deal brings it (a done close always has one: engine.device refuses an ack
            # without).
            closed = p.transition(
                event,
                now_ms,
                close_price=fill,
                close_time_ms=(ack.fill_time_ms if ack else None) or now_ms,
                command_id=None,
                realized_pl=realized_pl(p, fill, self._instrument_for),
                flags=p.flags if fill is not None else (*p.flags, FILL_PENDING),
            )
            if ack is not None:  # the close's totals: entry and exit commission, all the swap
                closed = closed.with_costs(now_ms, ack.commission, ack.swap)
            save(closed, effects)
        elif category == "retryable" and p.attempt < timing.max_close_attempts:
            save(p.transition(PositionEvent.RETRY, now_ms), effects)
            self._commands.retry_later(p.id, command, p.attempt, now_ms, timing)
        elif category == "unknown":
            save(p.transition(PositionEvent.LINK_LOST, now_ms), effects)
        else:
            reason = (
                "retries exhausted"
                if category == "retryable"
                else (ack.result_text if ack else category)
            )
            save(p.transition(PositionEvent.CLOSE_FAILED, now_ms, command_id=None), effects)
            self._alert(
                effects,
                "close_failed",
                AlertLevel.CRITICAL,
                now_ms,
                f"close of {p.symbol} position {p.id} failed: {reason}",
                p,
            )

    def _partial_result(
        self,
        p: Position,
        command: PartialCloseCommand,
        category: Category,
        ack: Ack | None,
        now_ms: int,
        effects: Effects,
    ) -> None:
        if category == "done":
            closed = ack.fill_volume if ack and ack.fill_volume else command.volume
            remaining = round(p.volume - closed, 8)
            if ack is not None and ack.repeat:
                # It answers a resend after a lost link (engine.user.terminal): the command
                # executed before the reconnect, whose snapshot gave the position the volume
                # it left.
                kept = p.with_costs(now_ms, ack.commission, ack.swap)
                if kept is not p:
                    self._book.save(kept, effects)
            elif remaining > 0:
                kept = p.with_changes(now_ms, volume=remaining)
                if ack is not None:
                    kept = kept.with_costs(now_ms, ack.commission, ack.swap)
                self._book.save(kept, effects)
        elif category != "already_closed":
            self._alert(
                effects,
                "partial_close_failed",
                AlertLevel.WARNING,
                now_ms,
                f"partial close of {p.id} not done: {ack.result_text if ack else category}",
                p,
            )

    def _modify_result(
        self,
        p: Position,
        category: Category,
        ack: Ack | None,
        timing: Timing,
        now_ms: int,
        effects: Effects,
    ) -> None:
        if category == "retryable" and p.state is PositionState.OPEN:
            self._commands.retry_modify(p.id, now_ms, timing.modify_interval)
        elif category == "final":
            self._alert(
                effects,
                "modify_failed",
                AlertLevel.WARNING,
                now_ms,
                f"broker refused the stops of {p.id}: {ack.result_text if ack else 'no reason'}",
                p,
            )

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
            user_id=self._user_id,
            device_id=p.device_id if p else None,
            symbol=p.symbol if p else None,
            position_id=p.id if p else None,
        )
        effects.alerts.append(alert)
        effects.records.append(AlertRaised(alert=alert))
