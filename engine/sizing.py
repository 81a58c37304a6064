"""Turning an approved signal into an order a broker will accept, or a clear refusal.

Three questions, each answered by a pure function that raises a ``Refused`` subclass with the
reason and the numbers a user needs to fix it:

1. Is it too late, or has the market moved too far? (:func:`check_entry`) A late approval (past
   ``max_delay_ms`` after the signal) or a price beyond ``max_deviation_pips`` from the signal's
   entry is refused, or, by configuration, turned into a pending order at the signal's price.
2. How much? (:func:`size_volume`) A fixed volume, a multiple of the signal's volume, or the
   volume that loses ``risk_percent`` of equity if the SL is hit; then fitted to the broker's
   min/step/max (rounded down, never up).
3. Will the broker take the stops? (:func:`check_stops`) SL and TP must be on the right side of
   the price and at least the broker's stops level away from it.
"""

from __future__ import annotations

import enum

import msgspec

from engine.guards import DrawdownLimits
from engine.instruments import Instrument
from engine.stoprules import BreakEvenDefault, TrailingDefault
from protocol.common import Side
from protocol.device import OrderType
from protocol.errors import LateSignal, PriceDeviation, SizingRefused

__all__ = [
    "EntryPlan",
    "LatePolicy",
    "ProtectiveStops",
    "SizingMode",
    "UserSettings",
    "check_entry",
    "check_stops",
    "protective_levels",
    "size_volume",
]


class SizingMode(enum.StrEnum):
    FIXED = "fixed"
    MULTIPLE = "multiple"
    RISK = "risk"


class LatePolicy(enum.StrEnum):
    REFUSE = "refuse"
    PENDING = "pending"


class ProtectiveStops(enum.StrEnum):
    SAME = "same"  # broker-side stops at the engine's own levels
    DISASTER = "disaster"  # wider: only a backstop while the engine or the link is down


class UserSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A user's trading settings (stored as the ``settings`` of the user).

    Unknown fields are refused, not dropped: a setting the engine does not know (a misspelt
    one) must not be answered 200 and then silently ignored.
    """

    sizing: SizingMode = SizingMode.FIXED
    fixed_volume: float = 0.01
    multiple: float = 1.0
    risk_percent: float = 1.0
    max_delay_ms: int = 120_000
    max_deviation_pips: float = 30.0
    late_policy: LatePolicy = LatePolicy.REFUSE
    pending_expiry_ms: int = 3_600_000
    """Lifetime of a pending order placed by the PENDING late policy."""
    deviation_points: int = 50
    """Slippage the broker may fill a market order at."""
    protective_stops: ProtectiveStops = ProtectiveStops.SAME
    disaster_distance_pips: float = 500.0
    drawdown: DrawdownLimits = msgspec.field(default_factory=DrawdownLimits)
    auto_close_on_expiry: bool = True
    """Close what an approval opened when the signal expires (the old platform's auto-close)."""
    trailing: TrailingDefault | None = None
    """Trailing stop (in pips) for positions opened from a signal that carries none."""
    break_even: BreakEvenDefault | None = None
    """Break-even move (in pips) for positions opened from a signal that carries none."""


class EntryPlan(msgspec.Struct, frozen=True, kw_only=True):
    """How to enter: at market, or a pending order at ``price`` (points)."""

    order_type: OrderType
    price: int
    """Reference price for a market order (the current ask/bid), order price for a pending one."""
    expires_ms: int | None = None


def check_entry(
    instrument: Instrument,
    side: Side,
    entry: int,
    signal_ms: int,
    expires_at_ms: int | None,
    bid: int,
    ask: int,
    now_ms: int,
    settings: UserSettings,
) -> EntryPlan:
    """Decide how to enter a signal approved at ``now_ms`` (prices in points).

    Raises:
        LateSignal: the signal expired, or the approval is late and the policy is REFUSE.
        PriceDeviation: the market moved too far from the entry and the policy is REFUSE.
    """
    if expires_at_ms is not None and now_ms >= expires_at_ms:
        raise LateSignal("the signal has expired", expires_at_ms=expires_at_ms, now_ms=now_ms)
    market = ask if side is Side.BUY else bid
    late = now_ms - signal_ms > settings.max_delay_ms
    deviation = abs(market - entry)
    limit = round(settings.max_deviation_pips * instrument.pip_points)
    moved = deviation > limit
    if not late and not moved:
        return EntryPlan(order_type=OrderType.MARKET, price=market)
    if settings.late_policy is LatePolicy.REFUSE:
        if late:
            raise LateSignal(
                f"approved {(now_ms - signal_ms) / 1000:.0f} s after the signal "
                f"(maximum {settings.max_delay_ms / 1000:.0f} s)",
                delay_ms=now_ms - signal_ms,
                max_delay_ms=settings.max_delay_ms,
            )
        raise PriceDeviation(
            f"the market is {deviation / instrument.pip_points:.1f} pips from the signal's "
            f"entry (maximum {settings.max_deviation_pips:g})",
            deviation_pips=deviation / instrument.pip_points,
            max_deviation_pips=settings.max_deviation_pips,
        )
    # Pending at the signal's price: a limit when the market is now worse than the entry (wait
    # for it to come back), a stop when it is better (enter only once it gets there).
    worse = market > entry if side is Side.BUY else market < entry
    expires = now_ms + settings.pending_expiry_ms
    if expires_at_ms is not None:
        expires = min(expires, expires_at_ms)
    return EntryPlan(
        order_type=OrderType.LIMIT if worse else OrderType.STOP, price=entry, expires_ms=expires
    )


def size_volume(
    instrument: Instrument,
    settings: UserSettings,
    signal_volume: float | None,
    signal_risk_percent: float | None,
    equity: float | None,
    entry: int,
    sl: int | None,
    exchange_rate: float = 1.0,
) -> float:
    """The volume in lots, fitted to the broker's min/step/max.

    Raises:
        SizingRefused: the rule lacks an input (no signal volume for MULTIPLE; no SL or no
            equity for RISK) or the result does not fit the broker's limits.
    """
    mode = settings.sizing
    if mode is SizingMode.FIXED:
        volume = settings.fixed_volume
    elif mode is SizingMode.MULTIPLE:
        if signal_volume is None:
            raise SizingRefused("sizing by multiple needs a signal volume", sizing=mode.value)
        volume = signal_volume * settings.multiple
    else:
        if sl is None:
            raise SizingRefused("sizing by risk needs a stop-loss", sizing=mode.value)
        if equity is None or equity <= 0:
            raise SizingRefused(
                "sizing by risk needs the account equity (no account report yet)", sizing=mode.value
            )
        risk = signal_risk_percent if signal_risk_percent is not None else settings.risk_percent
        distance = abs(entry - sl) / instrument.scale
        if distance <= 0:
            raise SizingRefused("the stop-loss is at the entry price", sizing=mode.value)
        loss_per_lot = distance * instrument.contract_size * exchange_rate
        volume = equity * risk / 100.0 / loss_per_lot
    return instrument.normalize_volume(volume)


def check_stops(
    instrument: Instrument, side: Side, price: int, sl: int | None, tp: int | None
) -> None:
    """SL below and TP above a buy's price (mirrored for a sell), ``stops_level`` points away.

    Raises:
        SizingRefused: with ``details["reason"]`` ``wrong_side`` or ``stops_level``.
    """
    gap = instrument.stops_level
    for name, level, must_be_below in (("sl", sl, side is Side.BUY), ("tp", tp, side is Side.SELL)):
        if level is None:
            continue
        distance = price - level if must_be_below else level - price
        if distance <= 0:
            raise SizingRefused(
                f"{name.upper()} {instrument.to_price(level)} is on the wrong side of "
                f"{instrument.to_price(price)} for a {side.value}",
                reason="wrong_side",
                level=instrument.to_price(level),
                price=instrument.to_price(price),
            )
        if distance < gap:
            raise SizingRefused(
                f"{name.upper()} is {distance} points from the price; the broker needs {gap}",
                reason="stops_level",
                distance_points=distance,
                stops_level=gap,
            )


def protective_levels(
    instrument: Instrument,
    side: Side,
    price: int,
    sl: int | None,
    tp: int | None,
    settings: UserSettings,
) -> tuple[int | None, int | None]:
    """The broker-side stops sent with an open: the engine's levels, or a wide backstop.

    With DISASTER the broker holds stops ``disaster_distance_pips`` beyond the price (or beyond
    the engine's own level if that is further), so the engine's triggers stay the primary
    mechanism and the broker's only fire if the engine or the link is down.
    """
    if settings.protective_stops is ProtectiveStops.SAME:
        return sl, tp
    far = round(settings.disaster_distance_pips * instrument.pip_points)
    sign = side.sign
    backstop_sl = price - sign * far
    backstop_tp = price + sign * far
    if sl is not None:
        backstop_sl = min(backstop_sl, sl) if side is Side.BUY else max(backstop_sl, sl)
    if tp is not None:
        backstop_tp = max(backstop_tp, tp) if side is Side.BUY else min(backstop_tp, tp)
    return backstop_sl, backstop_tp
