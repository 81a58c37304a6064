"""Instruments and the integer price representation.

Every price inside the engine is an ``int`` number of points at the instrument's digits
(XAUUSD at 3 digits: 1284.065 -> 1_284_065). Comparing a price with a level is then an integer
comparison, so "exactly at the level" is decided the same way every time, with no float dust.
Floats exist only at the edges (the wire speaks doubles, as MQL5 does); :meth:`to_points` and
:meth:`to_price` are the only crossings.

Volumes are lots (floats on every wire MetaTrader speaks); :meth:`normalize_volume` fits a
volume to the broker's min/step/max and returns a float with no more decimals than the step.
"""

from __future__ import annotations

import math
from decimal import Decimal

import msgspec

from protocol.errors import SizingRefused, UsageError

__all__ = ["DEFAULT_INSTRUMENTS", "Instrument"]

_SCALES: tuple[int, ...] = tuple(
    10**d for d in range(9)
)  # digits are 0..8 (checked in __post_init__)


class Instrument(msgspec.Struct, frozen=True, kw_only=True):
    """What the engine knows about a tradable symbol (canonical name, e.g. ``XAUUSD``)."""

    symbol: str
    digits: int
    """Decimals of a quoted price; one point is ``10 ** -digits``."""
    pip_size: float
    """Price distance of one pip (0.1 for gold: the old platform's ``x 10``; 0.0001 for EURUSD)."""
    contract_size: float
    """Units of the base per lot (100 oz of gold, 100,000 EUR)."""
    volume_min: float = 0.01
    volume_step: float = 0.01
    volume_max: float = 100.0
    stops_level: int = 0
    """Least distance in points from the market to a new SL/TP (MT5 SYMBOL_TRADE_STOPS_LEVEL)."""
    profit_currency: str = "USD"

    def __post_init__(self) -> None:
        if not 0 <= self.digits <= 8:
            raise UsageError("digits must be within 0..8", symbol=self.symbol)
        if self.pip_size <= 0 or self.contract_size <= 0:
            raise UsageError("pip_size and contract_size must be positive", symbol=self.symbol)
        if not 0 < self.volume_min <= self.volume_max or self.volume_step <= 0:
            raise UsageError("volume limits must satisfy 0 < min <= max, step > 0")

    # -- prices --------------------------------------------------------------------------------

    @property
    def scale(self) -> int:
        """Points per unit of price (``10 ** digits``)."""
        return _SCALES[self.digits]

    @property
    def point(self) -> float:
        return 10.0**-self.digits

    @property
    def pip_points(self) -> int:
        """Points in one pip (gold at 3 digits: 100)."""
        return round(self.pip_size * self.scale)

    def to_points(self, price: float) -> int:
        """The nearest point to ``price``. Raises ``UsageError`` for NaN or infinity."""
        if not math.isfinite(price):
            raise UsageError("price must be finite", symbol=self.symbol)
        return round(price * self.scale)

    def to_price(self, points: int) -> float:
        """The float price of ``points``, rounded to the instrument's digits.

        A plain division is already that rounding: both operands are exact and IEEE division is
        correctly rounded, so the result is the double nearest ``points * 10**-digits``, which
        is what ``round(..., digits)`` would return, at a third of the cost (the REST views call
        this five times per position; tests/engine check the equality by property).
        """
        return points / _SCALES[self.digits]

    def to_decimal(self, points: int) -> Decimal:
        """The exact decimal price of ``points`` (for money maths)."""
        return Decimal(points).scaleb(-self.digits)

    # -- volumes -------------------------------------------------------------------------------

    @property
    def _volume_decimals(self) -> int:
        exponent = Decimal(repr(self.volume_step)).normalize().as_tuple().exponent
        return max(0, -int(exponent))

    def normalize_volume(self, volume: float) -> float:
        """Round ``volume`` down to a whole number of steps and check it against min and max.

        Rounds down, never up: sizing must not risk more than it was asked to.

        Raises:
            SizingRefused: the volume is not finite, or below the minimum after rounding, or
                above the maximum. ``details`` has ``volume``, ``min``, ``max``, ``step``.
        """
        limits = {
            "volume": volume,
            "min": self.volume_min,
            "max": self.volume_max,
            "step": self.volume_step,
            "symbol": self.symbol,
        }
        if not math.isfinite(volume) or volume <= 0:
            raise SizingRefused("volume must be a positive number", **limits)
        # The small epsilon absorbs float dust such as 0.07 / 0.01 = 7.000000000000001 -> 7
        # and 0.29 / 0.01 = 28.999999999999996 -> 29.
        steps = math.floor(volume / self.volume_step + 1e-9)
        normalized = round(steps * self.volume_step, self._volume_decimals)
        if normalized < self.volume_min - 1e-12:
            raise SizingRefused(
                f"volume {volume} is below the broker minimum {self.volume_min}", **limits
            )
        if normalized > self.volume_max + 1e-12:
            raise SizingRefused(
                f"volume {volume} is above the broker maximum {self.volume_max}", **limits
            )
        return normalized

    def check_volume(self, volume: float) -> float:
        """``volume`` as a person chose it (a lot override): it must already be a whole number
        of steps within min and max. Unlike :meth:`normalize_volume` nothing is rounded: a lot
        size someone typed is taken as typed or refused, never silently changed.

        Raises:
            SizingRefused: it is not finite and positive, not a whole number of steps, or
                outside min and max. ``details`` has ``volume``, ``min``, ``max``, ``step``.
        """
        normalized = self.normalize_volume(volume)
        if abs(normalized - volume) > self.volume_step * 1e-6:
            raise SizingRefused(
                f"volume {volume} is not a multiple of the step {self.volume_step}",
                volume=volume,
                min=self.volume_min,
                max=self.volume_max,
                step=self.volume_step,
                symbol=self.symbol,
            )
        return normalized


DEFAULT_INSTRUMENTS: dict[str, Instrument] = {
    # Oanda quotes gold at 3 decimals (the replay data in data/); most MT5 brokers use 2.
    "XAUUSD": Instrument(
        symbol="XAUUSD",
        digits=3,
        pip_size=0.1,
        contract_size=100.0,
        volume_min=0.01,
        volume_step=0.01,
        volume_max=100.0,
        stops_level=0,
    ),
    "EURUSD": Instrument(
        symbol="EURUSD",
        digits=5,
        pip_size=0.0001,
        contract_size=100_000.0,
        volume_min=0.01,
        volume_step=0.01,
        volume_max=100.0,
        stops_level=0,
    ),
}
"""The instruments of the bundled market data; a device's symbol specs refine them."""
