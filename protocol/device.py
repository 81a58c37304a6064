"""Messages between a device (an Expert Advisor in a MetaTrader terminal) and the server.

Every message is an object with a ``type`` tag. Unknown fields are ignored and every field added
after version 1 has a default, so an older EA keeps working with a newer server and the other
way round (docs/protocol.md, "Compatibility").

A session, as the device sees it::

    connect /ws/device (subprotocol tripwire.v1.json or tripwire.v1.msgpack)
    -> hello (signed)                  <- welcome, or error + close, or moved + close
    -> positions (full snapshot)       on every (re)connect, before any command is trusted
    -> deals                           the fills of positions closed since the last acked state
    -> account
    <- open | close | partial_close | modify      -> ack (with the same command_id)
    -> heartbeat every heartbeat_s     <- ping (answer with a heartbeat)
    -> event (the terminal closed or opened something on its own)
    -> positions again when a position's swap or commission changes (the daily rollover)
"""

from __future__ import annotations

import enum
import hashlib
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from protocol.common import Side
from protocol.redirects import Moved
from protocol.types import (
    ClientId,
    Count,
    Digits,
    ErrorDetails,
    Id,
    Money,
    Nonce,
    Points,
    Price,
    RetCode,
    ShortText,
    Signature,
    Size,
    Symbol,
    Text,
    Ticket,
    TimeMs,
    Volume,
)

__all__ = [
    "COMMAND_HASH_OMITS",
    "AccountState",
    "Ack",
    "CloseCommand",
    "Command",
    "Deal",
    "DealsReport",
    "DeviceError",
    "DeviceMessage",
    "EventKind",
    "Heartbeat",
    "Hello",
    "HelloBody",
    "ModifyCommand",
    "Moved",
    "OpenCommand",
    "OrderType",
    "PartialCloseCommand",
    "Ping",
    "PositionEvent",
    "PositionsSnapshot",
    "ServerMessage",
    "SymbolSpec",
    "TerminalPosition",
    "Welcome",
    "command_hash",
]

Platform = Literal["mt4", "mt5"]


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every device-wire message: tagged by ``type``, immutable, keyword-only."""


# -- device -> server ------------------------------------------------------------------------


class SymbolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A symbol as the terminal's broker defines it (MT5 ``SymbolInfo*``)."""

    name: Symbol
    """The broker's name (``XAUUSDm``, ``GOLD``, ``XAUUSD.vip``)."""
    digits: Digits
    contract_size: Size = 1.0
    volume_min: Volume = 0.01
    volume_step: Volume = 0.01
    volume_max: Volume = 100.0
    stops_level: Points = 0
    """Least distance in points from the market to a new SL/TP."""
    freeze_level: Points = 0
    filling_modes: list[Literal["fok", "ioc", "return"]] = msgspec.field(default_factory=list)
    trade_mode: Literal["full", "long_only", "short_only", "close_only", "disabled"] = "full"


class HelloBody(msgspec.Struct, frozen=True, kw_only=True):
    """What a device says about itself; carried signed inside :class:`Hello`."""

    ea_build: ShortText
    platform: Platform = "mt5"
    account_login: ShortText
    broker: ShortText = ""
    server_name: ShortText = ""
    terminal_time_ms: TimeMs
    """The trade server's time as the terminal sees it (``TimeTradeServer()``)."""
    currency: ShortText = ""
    symbols: list[SymbolSpec] = msgspec.field(default_factory=list)
    encryption: bool = False
    """Ask for AES-GCM frames after the welcome (off by default; TLS is the primary protection)."""


class Hello(_Msg, tag="hello", frozen=True, kw_only=True):
    """The first frame of a device session: who it is, signed with its secret.

    ``body`` is the :class:`HelloBody` as JSON text, on JSON and msgpack connections alike; the
    signature covers the exact UTF-8 bytes of that text, so nobody has to re-encode anything
    canonically. See docs/protocol.md, "Handshake".
    """

    device_id: Id
    v: Count
    """The protocol version the device speaks."""
    ts_ms: TimeMs
    nonce: Nonce
    sig: Signature = ""
    """Lower-case hex HMAC-SHA256 of the canonical string under the device secret."""
    body: Annotated[str, Meta(max_length=262_144)]


class Heartbeat(_Msg, tag="heartbeat", frozen=True, kw_only=True):
    seq: Count
    time_ms: TimeMs


class TerminalPosition(msgspec.Struct, frozen=True, kw_only=True):
    """A position as the terminal holds it (``PositionGet*``). ``sl``/``tp`` null when unset."""

    ticket: Ticket
    symbol: Symbol
    side: Side
    volume: Volume
    open_price: Price
    open_time_ms: TimeMs
    sl: Price | None = None
    tp: Price | None = None
    comment: ShortText = ""
    """The order comment; positions Tripwire opened carry their client id here."""
    magic: Ticket = 0
    profit: Money = 0.0
    """The floating profit at the current price, without commission and swap (MT5's
    ``POSITION_PROFIT``)."""
    commission: Money | None = None
    """The position's commission so far (its deals' ``DEAL_COMMISSION`` summed; a cost is
    negative), in the account currency; null when the EA does not report it."""
    swap: Money | None = None
    """The swap accrued so far (``POSITION_SWAP``), signed; null when the EA does not report it."""


class PositionsSnapshot(_Msg, tag="positions", frozen=True, kw_only=True):
    """Every position the terminal holds, sent on every (re)connect and on request."""

    time_ms: TimeMs
    positions: list[TerminalPosition] = msgspec.field(default_factory=list)


class Deal(msgspec.Struct, frozen=True, kw_only=True):
    """The deal that closed a position (MT5 ``history_deals_get``: the position's last exit
    deal, ``DEAL_ENTRY_OUT`` or ``DEAL_ENTRY_OUT_BY``)."""

    ticket: Ticket
    """``DEAL_TICKET``: the deal's own ticket."""
    position: Ticket
    """``DEAL_POSITION_ID``: the ticket of the position it closed."""
    price: Price
    """``DEAL_PRICE``: the close price."""
    time_ms: TimeMs
    """``DEAL_TIME_MSC``: when it was done."""
    volume: Volume
    """``DEAL_VOLUME``: lots."""
    profit: Money | None = None
    """``DEAL_PROFIT``: the price P&L of the close, without commission and swap."""
    commission: Money | None = None
    """The position's total commission (all its deals' ``DEAL_COMMISSION``), signed."""
    swap: Money | None = None
    """The position's total swap (all it accrued), signed."""


class DealsReport(_Msg, tag="deals", frozen=True, kw_only=True):
    """The closing deals of positions that were closed while the server may have missed their
    fill (the ack lost in a crash, a close while disconnected): sent right after ``positions``
    on every (re)connect. Repeating a deal is harmless: a position takes its fill once."""

    time_ms: TimeMs
    deals: Annotated[list[Deal], Meta(max_length=1000)] = msgspec.field(default_factory=list)


class Ack(_Msg, tag="ack", frozen=True, kw_only=True):
    """The result of a command, as the broker answered it.

    The server classifies ``retcode`` itself (``protocol.results``); ``category`` is the EA's own
    view, kept for diagnosis. A repeat of an executed command id must be answered with the
    earlier result (the same ack), never executed twice.
    """

    command_id: Id
    retcode: RetCode = 0
    """MT5 ``MqlTradeResult.retcode`` or MT4 ``GetLastError()``; see ``protocol.results``."""
    result_text: Text = ""
    category: ShortText | None = None
    ticket: Ticket | None = None
    """The position ticket (for an open: the new position's)."""
    fill_price: Price | None = None
    """The deal price. Required when a close or an open at market is done: a close acked done
    without it is refused (``malformed``, reason ``fill_missing``)."""
    fill_volume: Volume | None = None
    fill_time_ms: TimeMs | None = None
    executed: bool | None = None
    """For timeouts: ``false`` only when the EA has proof the request did not execute."""
    repeat: bool = False
    """True when this is the stored answer to a command id the EA had already executed."""
    commission: Money | None = None
    """The position's total commission after this deal (an open's entry commission; a close's
    entry and exit commissions together), signed; null when not reported."""
    swap: Money | None = None
    """The position's total swap after this deal, signed; null when not reported."""
    command_hash: ShortText | None = None
    """:func:`command_hash` of the command this answers, as the EA received it (a repeat: the
    command it executed under this id). The server refuses an ack whose hash is not that of the
    command it holds under the id (an id reused with other parameters); null (an older EA): not
    checked."""


class EventKind(enum.StrEnum):
    CLOSED_SL = "closed_sl"  # the broker's stop-loss closed it
    CLOSED_TP = "closed_tp"  # the broker's take-profit closed it
    CLOSED_MANUAL = "closed_manual"  # a person closed it in the terminal
    CLOSED_STOPOUT = "closed_stopout"  # margin stop-out
    CLOSED_OTHER = "closed_other"
    OPENED_MANUAL = "opened_manual"  # a person (or another EA) opened it
    OPENED_PENDING = "opened_pending"  # a pending order the server placed has filled


class PositionEvent(_Msg, tag="event", frozen=True, kw_only=True):
    """Something the terminal did on its own (not in answer to a command)."""

    kind: EventKind
    ticket: Ticket
    symbol: Symbol
    side: Side
    volume: Volume
    price: Price
    """Close price for a closed_* event, open price for opened_manual."""
    time_ms: TimeMs
    sl: Price | None = None
    tp: Price | None = None
    comment: ShortText = ""
    profit: Money | None = None
    """Realised profit of a close, without commission and swap (``DEAL_PROFIT``)."""
    commission: Money | None = None
    """The position's total commission (all its deals so far, this one included), signed."""
    swap: Money | None = None
    """The position's total swap (for a close: all it accrued), signed."""


class AccountState(_Msg, tag="account", frozen=True, kw_only=True):
    balance: Money
    equity: Money
    margin: Money = 0.0
    free_margin: Money = 0.0
    currency: ShortText = ""
    leverage: Count | None = None
    time_ms: TimeMs


DeviceMessage = (
    Hello | Heartbeat | PositionsSnapshot | DealsReport | Ack | PositionEvent | AccountState
)
"""Everything a device may send."""


# -- server -> device ------------------------------------------------------------------------


class Welcome(_Msg, tag="welcome", frozen=True, kw_only=True):
    """The server's answer to a valid hello: the session's parameters."""

    session_id: Id
    v: Count
    server_time_ms: TimeMs
    heartbeat_s: Count = 5
    """Send a heartbeat at least this often."""
    stale_after_s: Count = 30
    """Without a heartbeat for this long the device is considered stale."""
    max_frame_bytes: Count = 1_048_576
    command_window: Count = 1000
    """How many recently executed command ids the EA must remember (and answer repeats of)."""
    encryption: bool = False


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"


class OpenCommand(_Msg, tag="open", frozen=True, kw_only=True):
    """Open a position. ``sl``/``tp`` are the broker-side protective stops (docs/protocol.md,
    "open").

    For a market order ``price`` is the reference price the deviation is measured from; for a
    pending order (limit or stop) it is the order price.
    """

    command_id: Id
    client_id: ClientId
    """Put it in the order comment: the positions snapshot maps tickets back by it."""
    symbol: Symbol
    """The broker's symbol name."""
    side: Side
    order_type: OrderType = OrderType.MARKET
    volume: Volume
    price: Price | None = None
    sl: Price | None = None
    tp: Price | None = None
    deviation_points: Points = 0
    expires_ms: TimeMs | None = None
    """Pending orders only: cancel the order at this time."""
    deadline_ms: TimeMs
    """After this the server gives up waiting for the ack and raises an alert."""
    sig: Signature = ""


class CloseCommand(_Msg, tag="close", frozen=True, kw_only=True):
    """Close the whole position ``ticket`` at market."""

    command_id: Id
    ticket: Ticket
    symbol: Symbol
    volume: Volume
    deviation_points: Points = 0
    reason: ShortText = ""
    """``sl``, ``tp``, ``manual``, ``expiry``, ``guard``: for the EA's log only."""
    deadline_ms: TimeMs
    sig: Signature = ""


class PartialCloseCommand(_Msg, tag="partial_close", frozen=True, kw_only=True):
    """Close ``volume`` lots of position ``ticket`` at market."""

    command_id: Id
    ticket: Ticket
    symbol: Symbol
    volume: Volume
    deviation_points: Points = 0
    deadline_ms: TimeMs
    sig: Signature = ""


class ModifyCommand(_Msg, tag="modify", frozen=True, kw_only=True):
    """Set the broker-side SL/TP of position ``ticket`` (null removes a level)."""

    command_id: Id
    ticket: Ticket
    symbol: Symbol
    sl: Price | None = None
    tp: Price | None = None
    deadline_ms: TimeMs
    sig: Signature = ""


class Ping(_Msg, tag="ping", frozen=True, kw_only=True):
    seq: Count
    time_ms: TimeMs


class DeviceError(_Msg, tag="error", frozen=True, kw_only=True):
    """Something went wrong. ``code`` is one of the stable codes of ``protocol.errors``.

    When ``fatal`` the server closes the connection right after this frame.
    """

    code: ShortText
    message: Text
    fatal: bool = False
    command_id: Id | None = None
    details: ErrorDetails | None = None
    """Fields that help the EA recover, e.g. ``server_time_ms`` on ``expired`` (fix the clock
    offset and sign a new hello), ``size``/``limit`` on ``too_large``, ``path`` on ``malformed``."""


Command = OpenCommand | CloseCommand | PartialCloseCommand | ModifyCommand
"""The messages that ask the terminal to trade; each carries a ``command_id`` and a ``sig``."""

COMMAND_HASH_OMITS = ("sig", "deadline_ms", "reason")
"""Members left out of :func:`command_hash`: the signature and the deadline (a resend of the
same command carries new ones) and a close's ``reason`` (the EA's log only): none of them
changes what the terminal does."""

_HASH_ENCODER = msgspec.json.Encoder()


def command_hash(command: Command) -> str:
    """The short hash an ack carries of the command it answers (docs/protocol.md, "ack").

    The command's JSON object as the server sends it (members in that order, no whitespace)
    without the members of :data:`COMMAND_HASH_OMITS`, hashed with BLAKE2b to 8 bytes, in
    lower-case hex (16 digits). Two commands with one id and the same hash ask the terminal
    for the same thing.
    """
    fields = msgspec.to_builtins(command)
    for name in COMMAND_HASH_OMITS:
        fields.pop(name, None)
    return hashlib.blake2b(_HASH_ENCODER.encode(fields), digest_size=8).hexdigest()


ServerMessage = (
    Welcome
    | OpenCommand
    | CloseCommand
    | PartialCloseCommand
    | ModifyCommand
    | Ping
    | DeviceError
    | Moved
)
"""Everything the server may send to a device."""
