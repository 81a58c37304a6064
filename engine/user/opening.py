"""Opening a position for an approved signal: where, how much, with what stops.

Pure: the core chooses the device and the instrument, and keeps and sends what this returns.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from engine.instruments import Instrument
from engine.positions import Position
from engine.sizing import UserSettings, check_entry, check_stops, protective_levels, size_volume
from engine.stoprules import break_even_rule, default_rules, trailing_rule
from engine.user.timing import Timing
from protocol.common import Origin
from protocol.device import OpenCommand
from protocol.errors import Refused
from protocol.ids import client_id, command_id
from protocol.signals import Signal

__all__ = ["Opening", "open_for_signal", "position_id_for"]


class Opening(NamedTuple):
    """A position about to be opened (PENDING_OPEN, attempt 1) and the command that opens it."""

    position: Position
    command: OpenCommand


def position_id_for(approval_id: str) -> str:
    """Derived from the approval, so a retried approval names the same position."""
    return "P" + hashlib.blake2b(approval_id.encode(), digest_size=8).hexdigest()


def open_for_signal(
    *,
    user_id: str,
    approval_id: str,
    signal: Signal,
    signal_key: str,
    device_id: str,
    instrument: Instrument,
    bid: float | None,
    ask: float | None,
    volume: float | None,
    equity: float | None,
    settings: UserSettings,
    timing: Timing,
    expires_at_ms: int | None,
    now_ms: int,
) -> Opening:
    """The position an approved ``signal`` opens on ``device_id``, and its open command.

    ``volume`` overrides the sizing rule with a lot size the user chose; it is checked against
    the instrument's min, max and step as typed (never rounded).

    Raises:
        Refused: (and subclasses) the open cannot be placed: no price yet, late, moved,
            sizing, stops.
    """
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
        settings,
    )
    if volume is None:
        volume = size_volume(
            instrument,
            settings,
            signal.volume,
            signal.risk_percent,
            equity,
            plan.price,
            sl,
        )
    else:
        volume = instrument.check_volume(volume)
    check_stops(instrument, signal.side, plan.price, sl, tp)
    broker_sl, broker_tp = protective_levels(instrument, signal.side, plan.price, sl, tp, settings)
    # Each rule the signal carries wins over the user's default for it.
    trailing, break_even = default_rules(
        instrument,
        None if signal.trailing is not None else settings.trailing,
        None if signal.break_even is not None else settings.break_even,
    )
    trailing = trailing_rule(instrument, signal.trailing) or trailing
    break_even = break_even_rule(instrument, signal.break_even) or break_even

    position_id = position_id_for(approval_id)
    cid = command_id(position_id, "open", 1)
    position = Position(
        id=position_id,
        user_id=user_id,
        device_id=device_id,
        account=device_id,
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
        signal_id=signal_key,
        approval_id=approval_id,
        expires_at_ms=expires_at_ms,
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
        deviation_points=settings.deviation_points,
        expires_ms=plan.expires_ms,
        deadline_ms=now_ms + timing.open_deadline,
    )
    return Opening(position, command)
