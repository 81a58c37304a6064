"""Money: P&L, pips and pip values, in exact decimals.

The old platform's formula is the reference::

    pl_pips = (current - entry) * 10        # a buy;  (entry - current) * 10 for a sell
    pl      = pl_pips * volume * pip_value * exchange_rate

Its ``* 10`` is "divide by a pip of 0.1", right for gold only. The general form goes through
the instrument: ``pl_pips = price difference / pip_size`` and
``pip_value per lot = pip_size * contract_size`` (in the profit currency), so

    pl = (current - entry) * side * volume * contract_size * exchange_rate

which is the legacy formula exactly when ``pip_size`` is 0.1 (gold).
:func:`legacy_pl` keeps the old formula verbatim for the known-answer tests.

Everything is :class:`~decimal.Decimal`: prices arrive as integer points and convert exactly,
so the same inputs give the same cents on every machine. Nothing here is on the tick path.
"""

from __future__ import annotations

from decimal import Decimal

from engine.instruments import Instrument
from protocol.common import Side

__all__ = ["legacy_pl", "legacy_pl_pips", "pip_value", "pips", "position_pl", "to_decimal"]

_TEN = Decimal(10)


def to_decimal(value: float | int | str | Decimal) -> Decimal:
    """A float as the decimal it prints as (0.1 -> Decimal('0.1'), not its binary expansion)."""
    if isinstance(value, Decimal):
        return value
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def legacy_pl_pips(side: Side, entry: Decimal, current: Decimal) -> Decimal:
    """The old platform's pips: ``(current - entry) * 10`` for a buy, mirrored for a sell."""
    return (current - entry) * _TEN * side.sign


def legacy_pl(
    side: Side,
    entry: float | Decimal,
    current: float | Decimal,
    volume_times_pip_value: float | Decimal,
    exchange_rate: float | Decimal = 1,
) -> Decimal:
    """The old platform's P&L formula, verbatim (gold-only; kept as a tested special case)."""
    pl_pips = legacy_pl_pips(side, to_decimal(entry), to_decimal(current))
    return pl_pips * to_decimal(volume_times_pip_value) * to_decimal(exchange_rate)


def pips(instrument: Instrument, side: Side, open_points: int, current_points: int) -> Decimal:
    """Profit in pips (negative for a loss)."""
    diff = instrument.to_decimal((current_points - open_points) * side.sign)
    return diff / to_decimal(instrument.pip_size)


def pip_value(instrument: Instrument, volume: float, exchange_rate: float | Decimal = 1) -> Decimal:
    """Value of one pip for ``volume`` lots, in the account currency."""
    return (
        to_decimal(instrument.pip_size)
        * to_decimal(instrument.contract_size)
        * to_decimal(volume)
        * to_decimal(exchange_rate)
    )


def position_pl(
    instrument: Instrument,
    side: Side,
    volume: float,
    open_points: int,
    current_points: int,
    exchange_rate: float | Decimal = 1,
) -> Decimal:
    """P&L of a position in the account currency.

    ``exchange_rate`` converts the instrument's profit currency into the account's (1 when they
    are the same).
    """
    return pips(instrument, side, open_points, current_points) * pip_value(
        instrument, volume, exchange_rate
    )
