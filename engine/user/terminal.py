"""Terminal reconciliation: what a user's terminals report that the engine did not decide.

* :meth:`TerminalReconciler.on_snapshot`: a reconnecting device's positions snapshot, through
  ``engine.reconcile``: opens confirmed or not found, closes resent or found done while away,
  volumes corrected, unknown positions listed (not armed: a user adopts them,
  :meth:`TerminalReconciler.adopt`); partial closes whose answer the link lost resent or ended;
  and the costs (commission, swap) it reports;
* :meth:`TerminalReconciler.on_event`: the terminal closed or opened something on its own
  (broker SL/TP hit first, a manual close, a pending order filled, a position opened by hand);
* :meth:`TerminalReconciler.on_deals`: the closing deals a reconnecting device reports, which
  give a position closed with its fill unknown (``fill_pending``) its close price, time, P&L
  and costs.

Symbols here are canonical already (the device core maps the broker's names).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

from engine.effects import Arm, Disarm, Effects
from engine.lifecycle import PositionEvent, PositionState
from engine.positions import FILL_PENDING, Position
from engine.reconcile import Finding, reconcile
from engine.records import ReconciliationEntry, ReconciliationRecorded
from engine.sizing import UserSettings
from engine.user.book import InstrumentLookup, PositionBook, realized_pl
from engine.user.commands import CommandTracker
from engine.user.timing import Timing
from protocol.common import Origin
from protocol.device import CloseCommand, Deal, EventKind, PartialCloseCommand, TerminalPosition
from protocol.device import PositionEvent as TerminalEvent
from protocol.ids import client_id, position_id_from_comment

__all__ = ["TerminalReconciler", "external_position_id"]

_CLOSE_REASONS = {
    EventKind.CLOSED_SL: "broker_sl",
    EventKind.CLOSED_TP: "broker_tp",
    EventKind.CLOSED_MANUAL: "manual_terminal",
    EventKind.CLOSED_STOPOUT: "stopout",
    EventKind.CLOSED_OTHER: "broker",
}


def external_position_id(device_id: str, ticket: int) -> str:
    """A stable id for a position found on a terminal (the same ticket: the same id)."""
    return "X" + hashlib.blake2b(f"{device_id}/{ticket}".encode(), digest_size=8).hexdigest()


class TerminalReconciler:
    """Brings one user's position book in line with what the user's terminals report."""

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

    # -- reconciliation ------------------------------------------------------------------------

    def on_snapshot(
        self,
        device_id: str,
        terminal: Iterable[TerminalPosition],
        settings: UserSettings,
        timing: Timing,
        now_ms: int,
    ) -> Effects:
        """Resolve what a device's positions snapshot proves (``settings`` and ``timing``: for
        a close resent after a lost answer)."""
        effects = Effects()
        held = list(terminal)
        mine = [p for p in self._book.positions.values() if p.device_id == device_id]
        instruments = {p.symbol: self._instrument_for(p.symbol, device_id) for p in mine}
        for finding in reconcile(mine, held, instruments):
            self._apply_finding(device_id, finding, settings, timing, now_ms, effects)
        self._settle_lost(device_id, timing, now_ms, effects)
        self._take_costs(device_id, held, now_ms, effects)
        return effects

    def _settle_lost(self, device_id: str, timing: Timing, now_ms: int, effects: Effects) -> None:
        """End or resend what the findings left of the commands this device's link lost.

        A partial close travels beside its position's own command, so no finding names it.
        Its position still open (the snapshot has it, and gave it the terminal's volume), it is
        sent again with the same id, like a close: the EA answers an id it executed with its
        stored ack (``repeat``), which then changes no volume (``engine.user.core``), and
        executes one it never did. Its position being closed, the close takes all the volume:
        it is not sent again. Any lost command of a position that has ended is over.
        """
        live = self._book.positions
        for flight in self._commands.lost_on(device_id):
            command, p = flight.command, live.get(flight.position_id)
            if p is None:
                self._commands.resolve(command.command_id, "position_closed", now_ms, effects)
            elif not isinstance(command, PartialCloseCommand):
                continue  # an open or a close: its position's finding settled it
            elif p.state is PositionState.OPEN:
                again = msgspec.structs.replace(command, deadline_ms=now_ms + timing.close_deadline)
                self._commands.issue(again, device_id, p.id, now_ms, effects)
                effects.records.append(
                    ReconciliationRecorded(
                        entry=ReconciliationEntry(
                            time_ms=now_ms,
                            device_id=device_id,
                            kind="resend_partial_close",
                            position_id=p.id,
                            ticket=p.ticket,
                            detail=f"{command.command_id}: {command.volume} lots",
                        )
                    )
                )
            else:
                self._commands.resolve(command.command_id, "superseded_by_close", now_ms, effects)

    def _take_costs(
        self, device_id: str, held: list[TerminalPosition], now_ms: int, effects: Effects
    ) -> None:
        """Keep the commission and swap the snapshot reports of each position both sides hold.

        Swap changes at the broker's daily rollover, not with any command: the positions
        snapshot an EA sends then (docs/protocol.md, "positions") is what keeps it current. A
        position whose figures did not change is not saved again, so a periodic snapshot
        journals nothing new.
        """
        by_ticket = {t.ticket: t for t in held if t.commission is not None or t.swap is not None}
        if not by_ticket:
            return
        for p in list(self._book.positions.values()):
            if p.device_id != device_id or p.ticket is None:
                continue
            t = by_ticket.get(p.ticket)
            if t is None or p.state in (PositionState.PENDING_OPEN, PositionState.UNKNOWN):
                continue
            costed = p.with_costs(now_ms, t.commission, t.swap)
            if costed is not p:
                self._book.save(costed, effects)

    def _apply_finding(
        self,
        device_id: str,
        f: Finding,
        settings: UserSettings,
        timing: Timing,
        now_ms: int,
        effects: Effects,
    ) -> None:
        book = self._book
        p = book.positions.get(f.position_id) if f.position_id else None
        t = f.terminal
        if f.kind == "external_found" and t is not None:
            found = self._list_external(device_id, t, now_ms, effects)
            position_id = found.id if found else None
        elif p is None:
            return
        else:
            position_id = p.id
            if f.kind == "open_confirmed" and t is not None:
                self._resolve(p, "confirmed_by_snapshot", now_ms, effects)
                instrument = self._instrument_for(p.symbol, device_id)
                opened = p.transition(
                    PositionEvent.OPEN_FILLED,
                    now_ms,
                    ticket=t.ticket,
                    open_price=instrument.to_points(t.open_price),
                    open_time_ms=t.open_time_ms,
                    volume=t.volume,
                    command_id=None,
                ).with_costs(now_ms, t.commission, t.swap)
                book.save(opened, effects)
                effects.arms.append(Arm(opened))
            elif f.kind == "open_not_found":
                self._resolve(p, "not_executed", now_ms, effects)
                book.save(
                    p.transition(
                        PositionEvent.OPEN_REJECTED,
                        now_ms,
                        command_id=None,
                        close_reason="open not found on the terminal",
                    ),
                    effects,
                )
            elif f.kind == "resend_close":
                self._resend_close(p, settings, timing, now_ms, effects)
            elif f.kind == "closed_while_away":
                self._resolve(p, "closed_while_away", now_ms, effects)
                # Its absence proves the close, not the fill: that comes with the terminal's
                # deal (on_deals). Until then it is fill-pending, never a trade with a P&L of 0.
                closed = p.transition(
                    PositionEvent.BROKER_CLOSED,
                    now_ms,
                    command_id=None,
                    close_reason=p.close_reason or "closed_while_away",
                    close_time_ms=now_ms,
                    flags=(*p.flags, FILL_PENDING),
                )
                book.save(closed, effects)
                if p.watched:
                    effects.arms.append(Disarm(p.symbol, p.id))
            elif (
                f.kind == "volume_mismatch"
                and t is not None
                # A partial close executed and answered but not yet read: its ack takes the
                # volume off, so the snapshot must not take it too (the next one corrects any
                # other difference).
                and not self._commands.partial_close_pending(p.id)
            ):
                book.save(p.with_changes(now_ms, volume=t.volume), effects)
            elif f.kind == "levels_mismatch" and t is not None and not p.adopted:
                # Not the engine's to watch: the broker's levels are the ones it lists.
                instrument = self._instrument_for(p.symbol, device_id)
                sl = None if t.sl is None else instrument.to_points(t.sl)
                tp = None if t.tp is None else instrument.to_points(t.tp)
                book.save(p.with_changes(now_ms, sl=sl, tp=tp), effects)
                return  # following the terminal is no divergence
        effects.records.append(
            ReconciliationRecorded(
                entry=ReconciliationEntry(
                    time_ms=now_ms,
                    device_id=device_id,
                    kind=f.kind,
                    position_id=position_id,
                    ticket=t.ticket if t else (p.ticket if p else None),
                    detail=f.detail,
                )
            )
        )

    def _resolve(self, p: Position, outcome: str, now_ms: int, effects: Effects) -> None:
        """Forget the position's command in flight (the terminal answered it)."""
        if p.command_id:
            self._commands.resolve(p.command_id, outcome, now_ms, effects)

    def _resend_close(
        self, p: Position, settings: UserSettings, timing: Timing, now_ms: int, effects: Effects
    ) -> None:
        """Still open after a lost close: send the very same command again (same id)."""
        assert p.command_id is not None and p.ticket is not None
        flight = self._commands.get(p.command_id)
        command = flight.command if flight is not None else None
        if not isinstance(command, CloseCommand):  # rebuilt after a restart: same id and content
            command = CloseCommand(
                command_id=p.command_id,
                ticket=p.ticket,
                symbol=p.symbol,
                volume=p.volume,
                deviation_points=settings.deviation_points,
                reason=p.close_reason or "",
                deadline_ms=now_ms,
            )
        command = msgspec.structs.replace(command, deadline_ms=now_ms + timing.close_deadline)
        self._book.save(p.transition(PositionEvent.CLOSE_SENT, now_ms), effects)
        self._commands.issue(command, p.device_id, p.id, now_ms, effects)

    def _list_external(
        self, device_id: str, t: TerminalPosition, now_ms: int, effects: Effects
    ) -> Position | None:
        """Take a terminal position the engine did not know into the book, as EXTERNAL.

        One the engine did not open is not adopted: listed, never armed or commanded until its
        user adopts it (a trade made by hand is the trader's, and its stops may not be meant
        for the engine to act on). One whose comment carries the engine's tag (``was_ours``:
        an open the engine gave up on that executed after all) is the user's approved trade:
        adopted and armed at once, as it would have been."""
        if self._book.live_on(device_id, t.ticket) is not None:
            return None
        instrument = self._instrument_for(t.symbol, device_id)
        to_points = instrument.to_points
        ours = position_id_from_comment(t.comment)
        pid = external_position_id(device_id, t.ticket)
        found = Position(
            id=pid,
            user_id=self._user_id,
            device_id=device_id,
            account=device_id,
            symbol=t.symbol,
            side=t.side,
            volume=t.volume,
            state=PositionState.OPEN,
            origin=Origin.EXTERNAL,
            open_price=to_points(t.open_price),
            open_time_ms=t.open_time_ms,
            sl=None if t.sl is None else to_points(t.sl),
            tp=None if t.tp is None else to_points(t.tp),
            ticket=t.ticket,
            client_id=client_id(pid),
            updated_ms=now_ms,
            flags=("was_ours",) if ours else (),
            commission=t.commission,
            swap=t.swap,
            adopted=ours is not None,
        )
        self._book.save(found, effects)
        if found.watched:
            effects.arms.append(Arm(found))
        return found

    def adopt(self, p: Position, now_ms: int) -> tuple[Position, Effects]:
        """The user adopts ``p``, a live external position not adopted yet: from now on it is
        armed at its SL/TP (the broker's, as last reported) like any other."""
        effects = Effects()
        adopted = p.with_changes(now_ms, adopted=True)
        self._book.save(adopted, effects)
        effects.arms.append(Arm(adopted))
        effects.records.append(
            ReconciliationRecorded(
                entry=ReconciliationEntry(
                    time_ms=now_ms,
                    device_id=p.device_id,
                    kind="adopt",
                    position_id=p.id,
                    ticket=p.ticket,
                    detail="adopted by its user: its SL/TP are watched",
                )
            )
        )
        return adopted, effects

    # -- the terminal's own events -------------------------------------------------------------

    def on_event(self, device_id: str, event: TerminalEvent, now_ms: int) -> Effects:
        """Something the terminal did by itself."""
        effects = Effects()
        book = self._book
        price = self._instrument_for(event.symbol, device_id).to_points(event.price)
        live = book.live_on(device_id, event.ticket)
        if event.kind in _CLOSE_REASONS:
            if live is not None and live.state is not PositionState.PENDING_OPEN:
                # Our own close may be in flight: its later ack ("already closed") is ignored.
                self._resolve(live, "closed_by_terminal", now_ms, effects)
                reason = live.close_reason if live.state is PositionState.CLOSING else None
                closed = live.transition(
                    PositionEvent.BROKER_CLOSED,
                    now_ms,
                    close_price=price,
                    close_time_ms=event.time_ms,
                    command_id=None,
                    close_reason=reason or _CLOSE_REASONS[event.kind],
                    realized_pl=event.profit
                    if event.profit is not None
                    else realized_pl(live, price, self._instrument_for),
                ).with_costs(now_ms, event.commission, event.swap)
                book.save(closed, effects)
                if live.watched:
                    effects.arms.append(Disarm(live.symbol, live.id))
                return effects
            # Closed already (our close was answered "already closed"): record the terminal's
            # fill.
            for p in reversed(book.recent_closed.values()):
                if p.device_id == device_id and p.ticket == event.ticket:
                    if p.close_price is None:
                        book.save(self._filled(p, price, event, now_ms), effects)
                    break
            return effects
        if event.kind is EventKind.OPENED_PENDING:
            pending = live or next(
                (
                    p
                    for p in book.positions.values()
                    if p.id == position_id_from_comment(event.comment)
                    and p.state is PositionState.PENDING_OPEN
                ),
                None,
            )
            if pending is not None and pending.state is PositionState.PENDING_OPEN:
                self._resolve(pending, "pending_filled", now_ms, effects)
                opened = pending.transition(
                    PositionEvent.OPEN_FILLED,
                    now_ms,
                    ticket=event.ticket,
                    open_price=price,
                    open_time_ms=event.time_ms,
                    volume=event.volume,
                    command_id=None,
                ).with_costs(now_ms, event.commission, event.swap)
                book.save(opened, effects)
                effects.arms.append(Arm(opened))
                return effects
        if live is None:  # opened by hand, or a pending fill we cannot match: list it
            terminal = TerminalPosition(
                ticket=event.ticket,
                symbol=event.symbol,
                side=event.side,
                volume=event.volume,
                open_price=event.price,
                open_time_ms=event.time_ms,
                sl=event.sl,
                tp=event.tp,
                comment=event.comment,
                commission=event.commission,
                swap=event.swap,
            )
            found = self._list_external(device_id, terminal, now_ms, effects)
            if found is not None:
                effects.records.append(
                    ReconciliationRecorded(
                        entry=ReconciliationEntry(
                            time_ms=now_ms,
                            device_id=device_id,
                            kind="external_found",
                            position_id=found.id,
                            ticket=event.ticket,
                            detail=f"{event.kind.value} on the terminal",
                        )
                    )
                )
        return effects

    def _filled(self, p: Position, price: int, fill: Deal | TerminalEvent, now_ms: int) -> Position:
        """``p`` (closed) with the fill a deal or a close event reports, no longer
        fill-pending."""
        return p.with_changes(
            now_ms,
            close_price=price,
            close_time_ms=fill.time_ms,
            realized_pl=fill.profit
            if fill.profit is not None
            else realized_pl(p, price, self._instrument_for),
            flags=tuple(f for f in p.flags if f != FILL_PENDING),
        ).with_costs(now_ms, fill.commission, fill.swap)

    # -- deals ---------------------------------------------------------------------------------

    def on_deals(self, device_id: str, deals: Iterable[Deal], now_ms: int) -> Effects:
        """A device's closing deals: each fill-pending position of this device whose ticket a
        deal names takes that deal's fill, once. A deal for a position not pending (filled
        already, by an earlier copy of the deal or a close event; live; unknown here) changes
        nothing, so an EA may repeat its deals on every reconnect."""
        effects = Effects()
        pending = {
            p.ticket: p
            for p in self._book.recent_closed.values()
            if p.device_id == device_id and p.ticket is not None and p.fill_pending
        }
        if not pending:
            return effects
        for deal in deals:
            p = pending.pop(deal.position, None)
            if p is None:
                continue
            price = self._instrument_for(p.symbol, device_id).to_points(deal.price)
            self._book.save(self._filled(p, price, deal, now_ms), effects)
            effects.records.append(
                ReconciliationRecorded(
                    entry=ReconciliationEntry(
                        time_ms=now_ms,
                        device_id=device_id,
                        kind="fill_recovered",
                        position_id=p.id,
                        ticket=p.ticket,
                        detail=f"deal {deal.ticket} at {deal.price} ({deal.volume} lots)",
                    )
                )
            )
        return effects
