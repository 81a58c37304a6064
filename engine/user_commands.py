"""The user core's commands: closes, partial closes, command outcomes, lost links.

Split from ``engine.user`` to keep modules readable. Every function takes the
:class:`~engine.user.UserCore` it works on and returns (or fills) its
:class:`~engine.effects.Effects`; ``UserCore`` exposes them as methods.

Ids: an open, a close or a partial close is sent as ``<position>.<action>.<attempt>``. A
retryable rejection leads to the next attempt after a backoff; a close that follows an earlier
one (a retry, or a new try after CLOSE_FAILED) never re-uses an id, because the EA would answer a
repeated id with its earlier result instead of closing. A link lost before the answer moves the
position to UNKNOWN, resolved only by the terminal's snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec
from msgspec import UNSET

from engine.effects import Arm, Disarm, Effects
from engine.lifecycle import PositionEvent, PositionState
from engine.positions import FILL_PENDING, Position
from engine.records import CommandResolved
from engine.sizing import ProtectiveStops, check_stops
from engine.stoprules import LevelChanges, break_even_rule, trailing_rule
from engine.triggers import Trigger, TriggerKind
from protocol.common import AlertLevel
from protocol.device import (
    Ack,
    CloseCommand,
    ModifyCommand,
    OpenCommand,
    PartialCloseCommand,
)
from protocol.errors import Conflict, NotFound, Refused, SizingRefused
from protocol.ids import command_id

if TYPE_CHECKING:
    from engine.user import Category, UserCore

__all__ = [
    "LevelChanges",
    "close",
    "close_position",
    "modify_position",
    "on_link_lost",
    "on_result",
    "on_triggers",
    "partial_close",
]

# The hot path's enum members, read once: on CPython 3.11 ``Enum.MEMBER`` goes through the
# slow attribute hook that ``EnumType.__getattr__`` installs (~150-250 ns a lookup).
_OPEN = PositionState.OPEN
_SL = TriggerKind.SL


def on_triggers(core: UserCore, triggers: Iterable[Trigger], now_ms: int) -> Effects:
    """SL/TP fired: close each position that is still OPEN (the hot path)."""
    effects = Effects()
    positions = core.positions
    for t in triggers:
        p = positions.get(t.position_id)
        if p is None or p.state is not _OPEN:
            continue  # closing or closed by other means meanwhile
        reason = "sl" if t.kind is _SL else "tp"
        close(core, p, reason, now_ms, effects, trigger_price=t.price, armed=False)
    return effects


def close_position(core: UserCore, position_id: str, reason: str, now_ms: int) -> Effects:
    """Close a position by hand (owner or admin), by expiry, or by a guard.

    Raises:
        NotFound: no such live position for this user.
        Conflict: it is not OPEN or CLOSE_FAILED (already closing, unknown, pending).
    """
    p = core.positions.get(position_id)
    if p is None:
        raise NotFound("no such open position", position_id=position_id)
    if p.state not in (PositionState.OPEN, PositionState.CLOSE_FAILED):
        raise Conflict(f"position is {p.state.value}", state=p.state.value)
    effects = Effects()
    close(core, p, reason, now_ms, effects, armed=p.state is PositionState.OPEN)
    return effects


def close(
    core: UserCore,
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
        deviation_points=core.settings.deviation_points,
        reason=reason,
        deadline_ms=now_ms + core.timing.close_deadline,
    )
    closing = p.closing(now_ms, attempt, cid, reason, trigger_price)
    # The command goes out first; its record follows (docs/architecture.md: ids make a resend
    # harmless).
    core._issue(command, p.device_id, p.id, now_ms, effects)
    core._save(closing, effects)
    if armed:
        effects.arms.append(Disarm(p.symbol, p.id))
    core._modifies.pop(p.id, None)


def on_result(
    core: UserCore, command_id_: str, category: Category, ack: Ack | None, now_ms: int
) -> Effects:
    """The device's answer to one of our commands (or its classified absence).

    An answer to a command that is not in flight (a duplicate, a late repeat, one resolved
    by reconciliation meanwhile) changes nothing.
    """
    effects = Effects()
    flight = core.inflight.pop(command_id_, None)
    if flight is None:
        return effects
    effects.records.append(
        CommandResolved(
            command_id=command_id_,
            position_id=flight.position_id,
            device_id=flight.device_id,
            outcome=category,
            time_ms=now_ms,
            retcode=None if ack is None else ack.retcode,
            text="" if ack is None else ack.result_text,
        )
    )
    p = core.positions.get(flight.position_id)
    command = flight.command
    # Modifies and partial closes travel beside the position's own open/close command.
    beside = isinstance(command, ModifyCommand | PartialCloseCommand)
    if p is None or (p.command_id != command_id_ and not beside):
        return effects  # the position moved on (closed meanwhile): nothing left to do
    if isinstance(command, OpenCommand):
        _open_result(core, p, command, category, ack, now_ms, effects)
    elif isinstance(command, CloseCommand):
        _close_result(core, p, command, category, ack, now_ms, effects)
    elif isinstance(command, PartialCloseCommand):
        _partial_result(core, p, command, category, ack, now_ms, effects)
    else:
        _modify_result(core, p, category, ack, now_ms, effects)
    return effects


def _open_result(
    core: UserCore,
    p: Position,
    command: OpenCommand,
    category: Category,
    ack: Ack | None,
    now_ms: int,
    effects: Effects,
) -> None:
    instrument = core.instrument_for(p.symbol, p.device_id)
    if category == "done" and ack is not None and ack.ticket is not None:
        if ack.fill_price is None:  # a pending order was placed: wait for its fill event
            core._save(p.with_changes(now_ms, ticket=ack.ticket), effects)
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
        core._save(opened, effects)
        effects.arms.append(Arm(opened))
    elif category == "retryable" and p.attempt < core.timing.max_open_attempts:
        core._save(p.transition(PositionEvent.RETRY, now_ms), effects)
        core._retries[p.id] = (now_ms + core._backoff(p.attempt), command)
    elif category == "unknown":
        core._save(p.transition(PositionEvent.LINK_LOST, now_ms), effects)
    else:
        reason = (
            "retries exhausted"
            if category == "retryable"
            else (ack.result_text if ack else category)
        )
        core._save(
            p.transition(
                PositionEvent.OPEN_REJECTED,
                now_ms,
                command_id=None,
                close_reason=f"open refused: {reason}",
            ),
            effects,
        )
        core._alert(
            effects,
            "open_rejected",
            AlertLevel.WARNING,
            now_ms,
            f"open of {p.symbol} refused by the broker: {reason}",
            p,
        )


def _close_result(
    core: UserCore,
    p: Position,
    command: CloseCommand,
    category: Category,
    ack: Ack | None,
    now_ms: int,
    effects: Effects,
) -> None:
    instrument = core.instrument_for(p.symbol, p.device_id)
    if category in ("done", "already_closed"):
        if ack is not None and ack.fill_volume and abs(ack.fill_volume - p.volume) > 1e-9:
            # The terminal closed less than we knew of: a partial close executed with its ack
            # lost, and the close resent after the reconnect names the volume from before it.
            # The P&L is the volume closed.
            p = p.with_changes(now_ms, volume=ack.fill_volume)
        fill = (
            None if ack is None or ack.fill_price is None else instrument.to_points(ack.fill_price)
        )
        event = PositionEvent.CLOSE_FILLED if category == "done" else PositionEvent.BROKER_CLOSED
        # "Already closed" proves the close, not its fill: the terminal's close event or deal
        # brings it (a done close always has one: engine.device refuses an ack without).
        closed = p.transition(
            event,
            now_ms,
            close_price=fill,
            close_time_ms=(ack.fill_time_ms if ack else None) or now_ms,
            command_id=None,
            realized_pl=core._realized(p, fill),
            flags=p.flags if fill is not None else (*p.flags, FILL_PENDING),
        )
        if ack is not None:  # the close's totals: entry and exit commission, all the swap
            closed = closed.with_costs(now_ms, ack.commission, ack.swap)
        core._save(closed, effects)
    elif category == "retryable" and p.attempt < core.timing.max_close_attempts:
        core._save(p.transition(PositionEvent.RETRY, now_ms), effects)
        core._retries[p.id] = (now_ms + core._backoff(p.attempt), command)
    elif category == "unknown":
        core._save(p.transition(PositionEvent.LINK_LOST, now_ms), effects)
    else:
        reason = (
            "retries exhausted"
            if category == "retryable"
            else (ack.result_text if ack else category)
        )
        failed = p.transition(PositionEvent.CLOSE_FAILED, now_ms, command_id=None)
        core._save(failed, effects)
        core._alert(
            effects,
            "close_failed",
            AlertLevel.CRITICAL,
            now_ms,
            f"close of {p.symbol} position {p.id} failed: {reason}",
            p,
        )


def _partial_result(
    core: UserCore,
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
        if remaining > 0:
            kept = p.with_changes(now_ms, volume=remaining)
            if ack is not None:
                kept = kept.with_costs(now_ms, ack.commission, ack.swap)
            core._save(kept, effects)
    elif category != "already_closed":
        core._alert(
            effects,
            "partial_close_failed",
            AlertLevel.WARNING,
            now_ms,
            f"partial close of {p.id} not done: {ack.result_text if ack else category}",
            p,
        )


def partial_close(core: UserCore, position_id: str, volume: float, now_ms: int) -> Effects:
    """Close ``volume`` lots of an OPEN position (the rest stays watched).

    Raises:
        NotFound: no such live position.
        Conflict: it is not OPEN.
        SizingRefused: the volume does not fit the broker's step, or leaves nothing.
    """
    p = core.positions.get(position_id)
    if p is None:
        raise NotFound("no such open position", position_id=position_id)
    if p.state is not PositionState.OPEN or p.ticket is None:
        raise Conflict(f"position is {p.state.value}", state=p.state.value)
    volume = core.instrument_for(p.symbol, p.device_id).normalize_volume(volume)
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
        deviation_points=core.settings.deviation_points,
        deadline_ms=now_ms + core.timing.close_deadline,
    )
    core._save(updated, effects)
    core._issue(command, p.device_id, p.id, now_ms, effects)
    return effects


def modify_position(
    core: UserCore,
    position_id: str,
    changes: LevelChanges,
    bid: float | None,
    ask: float | None,
    now_ms: int,
) -> Effects:
    """A user changes an OPEN position's SL/TP, trailing stop or break-even move.

    Nothing changes unless everything is valid. The position is saved (journaled) with its new
    levels and rules and re-armed with them; a changed SL or TP is sent to the broker as a
    ``modify`` (rate-limited like the trailing stop's, with ``protective_stops`` ``same``;
    with ``disaster`` the broker keeps its wide backstop).

    Raises:
        NotFound: no such live position for this user.
        Conflict: it is not OPEN.
        Refused: a new SL/TP and no price for the symbol yet.
        SizingRefused: a new SL/TP on the wrong side of the price or within the stops level,
            or a rule closer than the broker allows (``engine.stoprules.check_rules``).
    """
    p = core.positions.get(position_id)
    if p is None:
        raise NotFound("no such open position", position_id=position_id)
    if p.state is not PositionState.OPEN or p.ticket is None or p.open_price is None:
        raise Conflict(f"position is {p.state.value}", state=p.state.value)
    instrument = core.instrument_for(p.symbol, p.device_id)
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
    core._save(updated, effects)
    # Re-armed whole: the trigger book takes the levels, the trailing book the rules.
    effects.arms.append(Arm(updated))
    if levels_changed and core.settings.protective_stops is ProtectiveStops.SAME:
        due = max(now_ms, core._last_modify.get(p.id, 0) + core.timing.modify_interval)
        core._modifies.setdefault(p.id, due)
    return effects


def _modify_result(
    core: UserCore, p: Position, category: Category, ack: Ack | None, now_ms: int, effects: Effects
) -> None:
    if category == "retryable" and p.state is PositionState.OPEN:
        core._modifies[p.id] = now_ms + core.timing.modify_interval
    elif category == "final":
        core._alert(
            effects,
            "modify_failed",
            AlertLevel.WARNING,
            now_ms,
            f"broker refused the stops of {p.id}: {ack.result_text if ack else 'no reason'}",
            p,
        )


def on_link_lost(core: UserCore, command_ids: Iterable[str], now_ms: int) -> Effects:
    """The device went away with these commands unanswered: opens and closes -> UNKNOWN."""
    effects = Effects()
    for cid in command_ids:
        flight = core.inflight.get(cid)
        if flight is None:
            continue
        if isinstance(flight.command, ModifyCommand):
            del core.inflight[cid]
            effects.records.append(
                CommandResolved(
                    command_id=cid,
                    position_id=flight.position_id,
                    device_id=flight.device_id,
                    outcome="link_lost",
                    time_ms=now_ms,
                )
            )
            continue
        p = core.positions.get(flight.position_id)
        core.inflight[cid] = msgspec.structs.replace(flight, lost=True)
        if (
            p is not None
            and p.command_id == cid
            and p.state in (PositionState.PENDING_OPEN, PositionState.CLOSING)
        ):
            core._save(p.transition(PositionEvent.LINK_LOST, now_ms), effects)
    return effects
