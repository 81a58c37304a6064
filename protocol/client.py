"""Messages between a user's client (the dashboard, an app) and the server on ``/ws/client``.

The client authenticates with a JWT (query ``token`` or the ``Authorization`` header), sends a
:class:`Subscribe`, and receives a :class:`Snapshot` of what it subscribed to, then deltas.
The stream lasts as long as its token: before that expires the client may send a fresher one
(:class:`ClientAuth`, answered by :class:`Authenticated`), else the stream is closed.
Deltas are coalesced: a client sees the latest state of each position, never every
intermediate one, and a client that cannot keep up is disconnected (close code 1013 "try again
later"), never allowed to slow anyone else.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from protocol.common import Alert, Origin, Side
from protocol.redirects import Moved
from protocol.signals import BreakEvenSpec, TrailingSpec
from protocol.types import (
    Count,
    ErrorDetails,
    Id,
    Money,
    Price,
    ShortText,
    Symbol,
    Text,
    Ticket,
    TimeMs,
    Volume,
)

__all__ = [
    "AccountDelta",
    "AccountView",
    "AlertMessage",
    "Authenticated",
    "Channel",
    "ClientAuth",
    "ClientError",
    "ClientMessage",
    "ClientPing",
    "DeviceStatus",
    "DeviceView",
    "Moved",
    "Pong",
    "PositionDelta",
    "PositionView",
    "PriceUpdate",
    "ServerClientMessage",
    "Snapshot",
    "Subscribe",
    "Unsubscribe",
]

Channel = Literal["positions", "prices", "alerts", "devices"]


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every client-wire message."""


# -- views: what a client may see (no secrets, no other user's data) ------------------------


class PositionView(msgspec.Struct, frozen=True, kw_only=True):
    id: Id
    symbol: Symbol
    side: Side
    volume: Volume
    state: ShortText
    origin: Origin = Origin.SIGNAL
    device_id: Id | None = None
    ticket: Ticket | None = None
    open_price: Price | None = None
    open_time_ms: TimeMs | None = None
    sl: Price | None = None
    tp: Price | None = None
    current_price: Price | None = None
    pl: Money | None = None
    """Profit or loss in the account currency at ``current_price`` (realised once closed): the
    price P&L only, like MT5's position profit, without ``commission`` and ``swap``."""
    close_price: Price | None = None
    close_time_ms: TimeMs | None = None
    close_reason: ShortText | None = None
    signal_id: Text | None = None
    """The signal the position came from, as ``strategy/signal/version`` (ids may hold no
    slash, so the key is unambiguous)."""
    flags: list[ShortText] = msgspec.field(default_factory=list)
    updated_ms: TimeMs = 0
    trailing: TrailingSpec | None = None
    """The position's trailing stop (price units), if it has one."""
    break_even: BreakEvenSpec | None = None
    """The position's break-even move (price units), if it has one (it stays after acting)."""
    commission: Money | None = None
    """The broker's commission so far, in the account currency, signed (a cost is negative);
    null while the terminal has not reported it (an EA that predates the field)."""
    swap: Money | None = None
    """The swap accrued so far, in the account currency, signed; null while not reported."""
    net_pl: Money | None = None
    """``pl`` plus ``commission`` plus ``swap`` (costs not reported count as zero): what the
    trade nets. Null when ``pl`` is."""
    fill_pending: bool = False
    """True for a closed position whose fill is not known yet (the terminal closed it while
    its answer was lost): ``close_price``, ``pl`` and ``net_pl`` are null until the terminal's
    deal arrives, and it counts in no P&L meanwhile."""
    adopted: bool = True
    """False for a position found on the terminal (``origin`` ``external``) that the user has
    not adopted: listed read-only with the broker's SL/TP; the engine watches none of its
    levels and sends it no command (close and PATCH answer 409) until
    ``POST /api/v1/positions/{id}/adopt``. True for every other."""


class AccountView(msgspec.Struct, frozen=True, kw_only=True):
    """The account as the engine last heard of it from the trading device, and the drawdown
    guard's verdict on it (the same figures the guard acts on)."""

    user_id: Id
    balance: Money | None = None
    equity: Money | None = None
    currency: ShortText = ""
    drawdown: Annotated[float, Meta(ge=0, le=1e6)] = 0.0
    guard_level: Literal["normal", "warning", "critical"] = "normal"
    opens_blocked: bool = False


class DeviceView(msgspec.Struct, frozen=True, kw_only=True):
    device_id: Id
    connected: bool
    stale: bool = False
    last_seen_ms: TimeMs | None = None
    account_login: ShortText = ""
    broker: ShortText = ""
    healthy: bool = True


# -- client -> server ------------------------------------------------------------------------


class Subscribe(_Msg, tag="subscribe", frozen=True, kw_only=True):
    v: Count = 1
    channels: Annotated[list[Channel], Meta(max_length=8)] = msgspec.field(
        default_factory=lambda: ["positions", "alerts", "devices"]
    )
    symbols: Annotated[list[Symbol], Meta(max_length=64)] = msgspec.field(default_factory=list)
    """Symbols for the ``prices`` channel (empty: those of the user's positions)."""


class Unsubscribe(_Msg, tag="unsubscribe", frozen=True, kw_only=True):
    channels: Annotated[list[Channel], Meta(max_length=8)]


class ClientPing(_Msg, tag="ping", frozen=True, kw_only=True):
    seq: Count = 0


class ClientAuth(_Msg, tag="auth", frozen=True, kw_only=True):
    """A fresher access token for the stream (it ends when its token expires)."""

    token: Annotated[str, Meta(min_length=1, max_length=4096)]
    """A JWT of the same user that expires later than the stream's current one."""


ClientMessage = Subscribe | Unsubscribe | ClientPing | ClientAuth
"""Everything a client may send."""


# -- server -> client ------------------------------------------------------------------------


class Snapshot(_Msg, tag="snapshot", frozen=True, kw_only=True):
    time_ms: TimeMs
    positions: list[PositionView] = msgspec.field(default_factory=list)
    account: AccountView | None = None
    devices: list[DeviceView] = msgspec.field(default_factory=list)
    alerts: list[Alert] = msgspec.field(default_factory=list)


class PositionDelta(_Msg, tag="position", frozen=True, kw_only=True):
    position: PositionView


class AccountDelta(_Msg, tag="account", frozen=True, kw_only=True):
    """The account changed (a device's account report, the guard's level): its whole latest
    view, coalesced as position deltas are (a client sees the newest, not every one)."""

    account: AccountView
    time_ms: TimeMs
    """Server time of the change."""


class PriceUpdate(_Msg, tag="price", frozen=True, kw_only=True):
    symbol: Symbol
    bid: Price
    ask: Price
    time_ms: TimeMs


class AlertMessage(_Msg, tag="alert", frozen=True, kw_only=True):
    alert: Alert


class DeviceStatus(_Msg, tag="device", frozen=True, kw_only=True):
    """A device's latest view: its connection changed, or it was heard from (``last_seen_ms``
    moves with its heartbeats and account reports), coalesced per device."""

    device: DeviceView


class ClientError(_Msg, tag="error", frozen=True, kw_only=True):
    """Something went wrong; ``code`` is one of the stable codes of ``protocol.errors``."""

    code: ShortText
    message: Text
    details: ErrorDetails | None = None


class Pong(_Msg, tag="pong", frozen=True, kw_only=True):
    seq: Count = 0
    time_ms: TimeMs


class Authenticated(_Msg, tag="authenticated", frozen=True, kw_only=True):
    """The stream now runs on the token of a :class:`ClientAuth`."""

    expires_at_ms: TimeMs
    """When the stream's token now expires (the stream is closed then, unless renewed)."""


ServerClientMessage = (
    Snapshot
    | PositionDelta
    | AccountDelta
    | PriceUpdate
    | AlertMessage
    | DeviceStatus
    | ClientError
    | Pong
    | Authenticated
    | Moved
)
"""Everything the server may send to a client."""
