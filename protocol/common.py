"""Primitives shared by every wire and by the engine: sides, origins, alerts.

They live here, in the bottom layer, so that the engine and the messages use the very same
types (an engine ``Alert`` *is* the alert a client receives).
"""

from __future__ import annotations

import enum

import msgspec

from protocol.types import Id, Real, ShortText, Symbol, Text, TimeMs

__all__ = ["Alert", "AlertLevel", "Origin", "Side"]


class Side(enum.StrEnum):
    """Direction of a position. A BUY is long (closed at the bid), a SELL short (at the ask)."""

    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class Origin(enum.StrEnum):
    """Where a position came from."""

    SIGNAL = "signal"  # an approved strategy signal
    MANUAL = "manual"  # reserved: opened by a user through the API (none is yet)
    EXTERNAL = "external"  # found on the terminal: opened by hand or by another EA


class AlertLevel(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """Something an operator or a user should look at.

    Produced by the engine (guards, command deadlines, reconciliation) and sent as it is to
    clients and the alerts table.
    """

    kind: ShortText
    """Stable machine-readable kind: ``drawdown``, ``spread``, ``price_jump``, ``feed_silent``,
    ``device_stale``, ``command_overdue``, ``close_failed``, ``outbox_full``, ..."""
    level: AlertLevel
    message: Text
    time_ms: TimeMs
    user_id: Id | None = None
    device_id: Id | None = None
    symbol: Symbol | None = None
    position_id: Id | None = None
    value: Real | None = None
    """The measured value (a drawdown, a spread, a move); finite, or null."""
    threshold: Real | None = None
