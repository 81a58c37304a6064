"""Notices: what a user is told about (fills, closes, their alerts, devices gone silent).

The user core notes a :class:`Notice` when it saves a position whose state *changed* into
OPEN from PENDING_OPEN (a fill) or into CLOSED (a close, whatever closed it): only the core
knows the state before. Noting is one tuple on a list, so the tick path pays nothing more; the
notifier (``gateway.notifier``, off the tick path) turns notices and alerts into
:class:`~protocol.notifications.Notification` with the functions here and delivers them.

Rules of operation:

* A fill is PENDING_OPEN -> OPEN (or UNKNOWN that was PENDING_OPEN -> OPEN). An adopted
  position (found on the terminal) was never pending: no fill.
* A close is any live state -> CLOSED; ``close_reason`` says which (``sl``, ``tp``, ``manual``,
  ``broker_sl``, ``guard``...).
* An alert is told only to the user it names: market alerts (no user) go to nobody.
  ``device_stale`` becomes ``device_offline`` (warning) or ``device_online`` (info).
* A notification's ``id`` is derived from what it tells, so every retry carries the same one.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import msgspec

from engine.instruments import Instrument
from engine.lifecycle import PositionState
from engine.positions import Position
from engine.views import position_view
from protocol.common import Alert, AlertLevel
from protocol.notifications import Notification

__all__ = [
    "Notice",
    "alert_notification",
    "notice_of",
    "position_notification",
    "retry_delay_s",
]

_OPEN = PositionState.OPEN
_CLOSED = PositionState.CLOSED
_PENDING = PositionState.PENDING_OPEN
_UNKNOWN = PositionState.UNKNOWN


class Notice(NamedTuple):
    """A position's change worth telling its user: ``kind`` is ``fill`` or ``close``."""

    kind: str
    position: Position


def notice_of(before: Position | None, after: Position) -> Notice | None:
    """The notice of ``before`` becoming ``after`` (None: nothing to tell)."""
    state = after.state
    if state is _OPEN:
        if before is None:
            return None
        was = before.unknown_from if before.state is _UNKNOWN else before.state
        return Notice("fill", after) if was is _PENDING else None
    if state is _CLOSED and before is not None and before.state is not _CLOSED:
        return Notice("close", after)
    return None


def _price(instrument: Instrument, points: int | None) -> str:
    return "?" if points is None else f"{instrument.to_price(points):.{instrument.digits}f}"


def position_notification(notice: Notice, instrument: Instrument) -> Notification:
    """The notification of a fill or a close."""
    p = notice.position
    view = position_view(instrument, p)
    what = f"{p.side.value.upper()} {p.volume:g} {p.symbol}"
    if notice.kind == "fill":
        levels = f"SL {_price(instrument, p.sl) if p.sl else '-'}, "
        levels += f"TP {_price(instrument, p.tp) if p.tp else '-'}"
        text = f"Filled {what} at {_price(instrument, p.open_price)} ({levels}), position {p.id}"
        time_ms = p.open_time_ms or p.updated_ms
    else:
        reason = (p.close_reason or "close").upper().replace("_", " ")
        pl = f": {view.pl:+.2f}" if view.pl is not None else ""
        text = f"Closed {what} at {_price(instrument, p.close_price)} by {reason}{pl}, "
        text += f"position {p.id}"
        time_ms = p.close_time_ms or p.updated_ms
    return Notification(
        id=f"{p.id}.{notice.kind}",
        event="fill" if notice.kind == "fill" else "close",
        kind="fill" if notice.kind == "fill" else "close",
        user_id=p.user_id,
        time_ms=time_ms,
        text=text,
        position=view,
    )


def alert_notification(alert: Alert) -> Notification | None:
    """The notification of an alert about one user (None: a market alert, for nobody)."""
    if alert.user_id is None:
        return None
    digest = hashlib.blake2b(msgspec.json.encode(alert), digest_size=8).hexdigest()
    if alert.kind == "device_stale":
        online = alert.level is AlertLevel.INFO
        device = alert.device_id or "a device"
        text = f"Device {device} is back online" if online else f"Device offline: {alert.message}"
        return Notification(
            id=f"a{digest}",
            event="device_offline",
            kind="device_online" if online else "device_offline",
            user_id=alert.user_id,
            time_ms=alert.time_ms,
            text=text,
            alert=alert,
        )
    return Notification(
        id=f"a{digest}",
        event="alert",
        kind="alert",
        user_id=alert.user_id,
        time_ms=alert.time_ms,
        text=f"[{alert.level.value}] {alert.kind}: {alert.message}"[:1024],
        alert=alert,
    )


def retry_delay_s(attempt: int, base_s: float, cap_s: float, unit: float) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after attempt ``attempt`` (1-based) failed.

    Exponential (``base_s * 2**(attempt-1)``, at most ``cap_s``) with "equal jitter": half of
    it fixed, half drawn by ``unit`` in [0, 1), so receivers that failed together do not come
    back together, and no wait is shorter than half its step.
    """
    step = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    return step / 2 + step / 2 * min(max(unit, 0.0), 1.0)
