"""Strategy signals: what a strategy engine posts to ``POST /api/v1/signals``.

The body is signed (``X-Signature: t=<ms>,v1=<hex>``, see ``protocol.signing``) and deduplicated
by ``(strategy_id, signal_id, version)``: posting the same triple again is answered with the
signal already recorded, never a second one. A new ``version`` of a signal supersedes the older
one for users who have not decided yet.

``created_at_ms`` may be ahead of the server's clock by at most the clock window (the
signature's, ±5 s by default): the late-signal check measures an approval's delay from it, and
a signal stamped far ahead (2^53) would never be late (:func:`check_signal_time`).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from protocol.common import Side
from protocol.device import OrderType
from protocol.errors import FutureTimestamp
from protocol.types import Count, Id, Price, ShortText, Symbol, TimeMs, Volume

__all__ = ["BreakEvenSpec", "Signal", "TrailingSpec", "check_signal_time"]

Distance = Annotated[float, Meta(ge=0, lt=1e9)]
"""A price difference (``5.0`` on gold is five dollars), never negative."""


class TrailingSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A trailing stop in price units: the SL follows ``distance`` behind the best price.

    Used by signals, by ``PATCH /api/v1/positions/{id}`` and shown on position views. The
    engine turns it into integer points of the instrument and refuses a distance closer than
    the broker's stops level (the broker would refuse the modify).
    """

    distance: Annotated[float, Meta(gt=0, lt=1e9)]
    """How far behind the best price (the bid for a buy, the ask for a sell) the SL follows."""
    step: Distance = 0.0
    """The SL moves only by at least this much (0: one point), so the broker gets fewer
    modifies."""
    activation: Distance = 0.0
    """Profit (from the open price) at which trailing starts; 0: at once."""


class BreakEvenSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Move the SL to the open price plus ``offset`` once ``trigger`` in profit (price units)."""

    trigger: Annotated[float, Meta(gt=0, lt=1e9)]
    """Profit (from the open price) at which the SL moves; more than ``offset``."""
    offset: Distance = 0.0
    """Profit the moved SL locks in (0: exactly the open price)."""


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    strategy_id: Id
    signal_id: Id
    audience: Annotated[list[Id], Meta(min_length=1, max_length=10_000)]
    """The users this signal is for; nobody else may see it or act on it."""
    version: Annotated[int, Meta(ge=1, le=2**31 - 1)] = 1
    symbol: Symbol
    """The canonical symbol (``XAUUSD``)."""
    side: Side
    order_type: OrderType = OrderType.MARKET
    entry: Price
    """The price the strategy saw; late or moved approvals are measured against it."""
    sl: Price | None = None
    tp: Price | None = None
    volume: Volume | None = None
    """Suggested volume in lots (users may size by a multiple of it)."""
    risk_percent: Annotated[float, Meta(gt=0, le=100)] | None = None
    """Suggested risk, percent of equity lost if the SL is hit."""
    created_at_ms: TimeMs
    expires_at_ms: TimeMs | None = None
    """No approval after this time; positions opened from it are closed at this time."""
    comment: ShortText = ""
    max_slippage_points: Count | None = None
    trailing: TrailingSpec | None = None
    """A trailing stop for positions opened from this signal (else the user's default)."""
    break_even: BreakEvenSpec | None = None
    """A break-even move for positions opened from this signal (else the user's default)."""


def check_signal_time(signal: Signal, now_ms: int, window_ms: int) -> None:
    """Refuse a signal stamped more than ``window_ms`` ahead of ``now_ms`` (the server's clock).

    Raises:
        FutureTimestamp: ``created_at_ms`` is more than ``window_ms`` after ``now_ms``.
    """
    ahead = signal.created_at_ms - now_ms
    if ahead > window_ms:
        raise FutureTimestamp(
            f"created_at_ms is {ahead} ms ahead of the server's clock (window {window_ms} ms)",
            ts_ms=signal.created_at_ms,
            server_time_ms=now_ms,
            window_ms=window_ms,
        )
