"""The user core's dealings with terminal-side facts and with time.

Separated from ``engine.user`` to keep each module readable; every function here takes the
:class:`~engine.user.UserCore` it works on and returns :class:`~engine.effects.Effects`:

* :func:`on_snapshot`: a reconnecting device's positions snapshot, through ``engine.reconcile``;
* :func:`on_event`: the terminal closed or opened something on its own (broker SL/TP hit first,
  a manual close, a pending order filled, a position opened by hand);
* :func:`on_deals`: the closing deals a reconnecting device reports, which give a position
  closed with its fill unknown (``fill_pending``) its close price, time, P&L and costs;
* :func:`on_level_moves`: trailing-stop and break-even moves from the symbol's trailing book;
* :func:`tick`: what is due: retries after their backoff, rate-limited modifies, expiry closes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from engine.effects import Arm, Disarm, Effects
from engine.lifecycle import PositionEvent, PositionState
from engine.positions import FILL_PENDING, Position
from engine.reconcile import Finding, reconcile
from engine.records import (
    CommandResolved,
    LevelsMoved,
    ReconciliationEntry,
    ReconciliationRecorded,
)
from engine.sizing import ProtectiveStops
from engine.trailing import LevelMove
from protocol.common import Origin
from protocol.device import (
    CloseCommand,
    Deal,
    EventKind,
    ModifyCommand,
    OpenCommand,
    TerminalPosition,
)
from protocol.device import (
    PositionEvent as TerminalEvent,
)
from protocol.ids import client_id, command_id, position_id_from_comment

if TYPE_CHECKING:
    from engine.user import UserCore

__all__ = [
    "external_position_id",
    "on_deals",
    "on_event",
    "on_level_moves",
    "on_snapshot",
    "tick",
]

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


# -- reconciliation ----------------------------------------------------------------------------


def on_snapshot(
    core: UserCore, device_id: str, terminal: Iterable[TerminalPosition], now_ms: int
) -> Effects:
    """Resolve what a device's positions snapshot proves (symbols already canonical)."""
    effects = Effects()
    held = list(terminal)
    mine = [p for p in core.positions.values() if p.device_id == device_id]
    instruments = {p.symbol: core.instrument_for(p.symbol, device_id) for p in mine}
    for finding in reconcile(mine, held, instruments):
        _apply_finding(core, device_id, finding, now_ms, effects)
    _take_costs(core, device_id, held, now_ms, effects)
    return effects


def _take_costs(
    core: UserCore,
    device_id: str,
    held: list[TerminalPosition],
    now_ms: int,
    effects: Effects,
) -> None:
    """Keep the commission and swap the snapshot reports of each position both sides hold.

    Swap changes at the broker's daily rollover, not with any command: the positions snapshot
    an EA sends then (docs/protocol.md, "positions") is what keeps it current. A position whose
    figures did not change is not saved again, so a periodic snapshot journals nothing new.
    """
    by_ticket = {t.ticket: t for t in held if t.commission is not None or t.swap is not None}
    if not by_ticket:
        return
    for p in list(core.positions.values()):
        if p.device_id != device_id or p.ticket is None:
            continue
        t = by_ticket.get(p.ticket)
        if t is None or p.state in (PositionState.PENDING_OPEN, PositionState.UNKNOWN):
            continue
        costed = p.with_costs(now_ms, t.commission, t.swap)
        if costed is not p:
            core._save(costed, effects)


def _apply_finding(
    core: UserCore, device_id: str, f: Finding, now_ms: int, effects: Effects
) -> None:
    p = core.positions.get(f.position_id) if f.position_id else None
    t = f.terminal
    if f.kind == "adopt" and t is not None:
        adopted = _adopt(core, device_id, t, now_ms, effects)
        position_id = adopted.id if adopted else None
    elif p is None:
        return
    else:
        position_id = p.id
        if f.kind == "open_confirmed" and t is not None:
            _resolve(core, p, "confirmed_by_snapshot", now_ms, effects)
            instrument = core.instrument_for(p.symbol, device_id)
            opened = p.transition(
                PositionEvent.OPEN_FILLED,
                now_ms,
                ticket=t.ticket,
                open_price=instrument.to_points(t.open_price),
                open_time_ms=t.open_time_ms,
                volume=t.volume,
                command_id=None,
            ).with_costs(now_ms, t.commission, t.swap)
            core._save(opened, effects)
            effects.arms.append(Arm(opened))
        elif f.kind == "open_not_found":
            _resolve(core, p, "not_executed", now_ms, effects)
            core._save(
                p.transition(
                    PositionEvent.OPEN_REJECTED,
                    now_ms,
                    command_id=None,
                    close_reason="open not found on the terminal",
                ),
                effects,
            )
        elif f.kind == "resend_close":
            _resend_close(core, p, now_ms, effects)
        elif f.kind == "closed_while_away":
            _resolve(core, p, "closed_while_away", now_ms, effects)
            # Its absence proves the close, not the fill: that comes with the terminal's deal
            # (on_deals). Until then it is fill-pending, never a trade with a P&L of 0.
            closed = p.transition(
                PositionEvent.BROKER_CLOSED,
                now_ms,
                command_id=None,
                close_reason=p.close_reason or "closed_while_away",
                close_time_ms=now_ms,
                flags=(*p.flags, FILL_PENDING),
            )
            core._save(closed, effects)
            if p.state is PositionState.OPEN:
                effects.arms.append(Disarm(p.symbol, p.id))
        elif f.kind == "volume_mismatch" and t is not None:
            core._save(p.with_changes(now_ms, volume=t.volume), effects)
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


def _resolve(core: UserCore, p: Position, outcome: str, now_ms: int, effects: Effects) -> None:
    """Forget the position's command in flight (the snapshot answered it)."""
    if p.command_id and core.inflight.pop(p.command_id, None) is not None:
        effects.records.append(
            CommandResolved(
                command_id=p.command_id,
                position_id=p.id,
                device_id=p.device_id,
                outcome=outcome,
                time_ms=now_ms,
            )
        )


def _resend_close(core: UserCore, p: Position, now_ms: int, effects: Effects) -> None:
    """Still open after a lost close: send the very same command again (same id)."""
    assert p.command_id is not None and p.ticket is not None
    flight = core.inflight.get(p.command_id)
    command = flight.command if flight is not None else None
    if not isinstance(command, CloseCommand):  # rebuilt after a restart: same id, same content
        command = CloseCommand(
            command_id=p.command_id,
            ticket=p.ticket,
            symbol=p.symbol,
            volume=p.volume,
            deviation_points=core.settings.deviation_points,
            reason=p.close_reason or "",
            deadline_ms=now_ms,
        )
    command = msgspec.structs.replace(command, deadline_ms=now_ms + core.timing.close_deadline)
    core._save(p.transition(PositionEvent.CLOSE_SENT, now_ms), effects)
    core._issue(command, p.device_id, p.id, now_ms, effects)


def _adopt(
    core: UserCore, device_id: str, t: TerminalPosition, now_ms: int, effects: Effects
) -> Position | None:
    """Take a terminal position the engine did not know into the book, as EXTERNAL."""
    if any(p.ticket == t.ticket and p.device_id == device_id for p in core.positions.values()):
        return None
    instrument = core.instrument_for(t.symbol, device_id)
    to_points = instrument.to_points
    ours = position_id_from_comment(t.comment)
    pid = external_position_id(device_id, t.ticket)
    adopted = Position(
        id=pid,
        user_id=core.user_id,
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
    )
    core._save(adopted, effects)
    effects.arms.append(Arm(adopted))
    return adopted


# -- the terminal's own events -----------------------------------------------------------------


def on_event(core: UserCore, device_id: str, event: TerminalEvent, now_ms: int) -> Effects:
    """Something the terminal did by itself (symbol already canonical)."""
    effects = Effects()
    instrument = core.instrument_for(event.symbol, device_id)
    price = instrument.to_points(event.price)
    live = next(
        (
            p
            for p in core.positions.values()
            if p.device_id == device_id and p.ticket == event.ticket
        ),
        None,
    )
    if event.kind in _CLOSE_REASONS:
        if live is not None and live.state is not PositionState.PENDING_OPEN:
            # Our own close may be in flight: its later ack ("already closed") is then ignored.
            _resolve(core, live, "closed_by_terminal", now_ms, effects)
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
                else core._realized(live, price),
            ).with_costs(now_ms, event.commission, event.swap)
            core._save(closed, effects)
            if live.state is PositionState.OPEN:
                effects.arms.append(Disarm(live.symbol, live.id))
            return effects
        # Closed already (our close was answered "already closed"): record the terminal's fill.
        for p in reversed(core.recent_closed.values()):
            if p.device_id == device_id and p.ticket == event.ticket:
                if p.close_price is None:
                    core._save(_filled(core, p, price, event, now_ms), effects)
                break
        return effects
    if event.kind is EventKind.OPENED_PENDING:
        pending = live or next(
            (
                p
                for p in core.positions.values()
                if p.id == position_id_from_comment(event.comment)
                and p.state is PositionState.PENDING_OPEN
            ),
            None,
        )
        if pending is not None and pending.state is PositionState.PENDING_OPEN:
            _resolve(core, pending, "pending_filled", now_ms, effects)
            opened = pending.transition(
                PositionEvent.OPEN_FILLED,
                now_ms,
                ticket=event.ticket,
                open_price=price,
                open_time_ms=event.time_ms,
                volume=event.volume,
                command_id=None,
            ).with_costs(now_ms, event.commission, event.swap)
            core._save(opened, effects)
            effects.arms.append(Arm(opened))
            return effects
    if live is None:  # opened by hand, or a pending fill we cannot match: adopt it
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
        adopted = _adopt(core, device_id, terminal, now_ms, effects)
        if adopted is not None:
            effects.records.append(
                ReconciliationRecorded(
                    entry=ReconciliationEntry(
                        time_ms=now_ms,
                        device_id=device_id,
                        kind="adopt",
                        position_id=adopted.id,
                        ticket=event.ticket,
                        detail=f"{event.kind.value} on the terminal",
                    )
                )
            )
    return effects


def _filled(
    core: UserCore, p: Position, price: int, fill: Deal | TerminalEvent, now_ms: int
) -> Position:
    """``p`` (closed) with the fill a deal or a close event reports, no longer fill-pending."""
    return p.with_changes(
        now_ms,
        close_price=price,
        close_time_ms=fill.time_ms,
        realized_pl=fill.profit if fill.profit is not None else core._realized(p, price),
        flags=tuple(f for f in p.flags if f != FILL_PENDING),
    ).with_costs(now_ms, fill.commission, fill.swap)


def on_deals(core: UserCore, device_id: str, deals: Iterable[Deal], now_ms: int) -> Effects:
    """A device's closing deals: each fill-pending position of this device whose ticket a deal
    names takes that deal's fill, once. A deal for a position not pending (filled already, by
    an earlier copy of the deal or a close event; live; unknown here) changes nothing, so an EA
    may repeat its deals on every reconnect."""
    effects = Effects()
    pending = {
        p.ticket: p
        for p in core.recent_closed.values()
        if p.device_id == device_id and p.ticket is not None and p.fill_pending
    }
    if not pending:
        return effects
    for deal in deals:
        p = pending.pop(deal.position, None)
        if p is None:
            continue
        price = core.instrument_for(p.symbol, device_id).to_points(deal.price)
        core._save(_filled(core, p, price, deal, now_ms), effects)
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


# -- level moves and time ----------------------------------------------------------------------


def on_level_moves(core: UserCore, moves: Iterable[LevelMove], now_ms: int) -> Effects:
    """Trailing/break-even moved SLs: keep them, and have the broker's stops follow."""
    effects = Effects()
    for move in moves:
        p = core.positions.get(move.position_id)
        if p is None or p.state is not PositionState.OPEN:
            continue
        moved = p.with_changes(now_ms, sl=move.sl)
        core.positions[p.id] = moved
        effects.records.append(
            LevelsMoved(position_id=p.id, sl=moved.sl, tp=moved.tp, time_ms=now_ms)
        )
        effects.changed.append(moved)
        if core.settings.protective_stops is ProtectiveStops.SAME:
            due = max(now_ms, core._last_modify.get(p.id, 0) + core.timing.modify_interval)
            core._modifies.setdefault(p.id, due)
    return effects


def tick(core: UserCore, now_ms: int) -> Effects:
    """Issue what has come due: retries, modifies, closes of expired positions."""
    effects = Effects()
    for pid, (due, previous) in list(core._retries.items()):
        if due > now_ms:
            continue
        del core._retries[pid]
        p = core.positions.get(pid)
        if p is None:
            continue
        attempt = p.attempt + 1
        if isinstance(previous, CloseCommand) and p.state is PositionState.CLOSING:
            cid = command_id(pid, "close", attempt)
            deadline = now_ms + core.timing.close_deadline
        elif isinstance(previous, OpenCommand) and p.state is PositionState.PENDING_OPEN:
            cid = command_id(pid, "open", attempt)
            deadline = now_ms + core.timing.open_deadline
        else:
            continue
        retry = msgspec.structs.replace(previous, command_id=cid, deadline_ms=deadline)
        core._save(p.with_changes(now_ms, attempt=attempt, command_id=cid), effects)
        core._issue(retry, p.device_id, pid, now_ms, effects)

    for pid, due in list(core._modifies.items()):
        if due > now_ms:
            continue
        del core._modifies[pid]
        p = core.positions.get(pid)
        if p is None or p.state is not PositionState.OPEN or p.ticket is None:
            continue
        instrument = core.instrument_for(p.symbol, p.device_id)
        updated = p.with_changes(now_ms, modify_count=p.modify_count + 1)
        command = ModifyCommand(
            command_id=command_id(pid, "modify", updated.modify_count),
            ticket=p.ticket,
            symbol=p.symbol,
            sl=None if p.sl is None else instrument.to_price(p.sl),
            tp=None if p.tp is None else instrument.to_price(p.tp),
            deadline_ms=now_ms + core.timing.modify_deadline,
        )
        core._last_modify[pid] = now_ms
        core._save(updated, effects)
        core._issue(command, p.device_id, pid, now_ms, effects)

    for pid in core.pop_expired(now_ms):
        effects.extend(core.close_position(pid, "expiry", now_ms))
    return effects
