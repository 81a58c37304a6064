from __future__ import annotations

from decimal import Decimal

from engine.instruments import DEFAULT_INSTRUMENTS
from engine.money import legacy_pl, legacy_pl_pips, pip_value, pips, position_pl
from protocol.common import Side

GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]
EURUSD = DEFAULT_INSTRUMENTS["EURUSD"]


def test_legacy_known_answer() -> None:
    """The old platform's own vector: buy gold 1950.00 -> 1954.50, vol x pip value 0.1, 1.27."""
    assert legacy_pl(Side.BUY, 1950.00, 1954.50, 0.1, 1.27) == Decimal("5.715")
    assert legacy_pl_pips(Side.BUY, Decimal("1950.00"), Decimal("1954.50")) == 45
    assert legacy_pl(Side.SELL, 1950.00, 1954.50, 0.1, 1.27) == Decimal("-5.715")


def test_general_formula_reproduces_the_legacy_one_for_gold() -> None:
    # volume 0.01 lot x pip value per lot (0.1 x 100 oz = $10) = 0.1, as in the legacy vector
    pl = position_pl(
        GOLD, Side.BUY, 0.01, GOLD.to_points(1950.00), GOLD.to_points(1954.50), exchange_rate=1.27
    )
    assert pl == Decimal("5.715")
    assert pip_value(GOLD, 0.01) == Decimal("0.1")


def test_eurusd_pips_and_value() -> None:
    # 1 lot EURUSD: a pip is $10; 1.10000 -> 1.10250 is 25 pips = $250.
    assert pips(EURUSD, Side.BUY, 110_000, 110_250) == 25
    assert position_pl(EURUSD, Side.BUY, 1.0, 110_000, 110_250) == Decimal("250")
    assert position_pl(EURUSD, Side.SELL, 0.5, 110_000, 110_250) == Decimal("-125")
    # Where the legacy "x 10" would be wrong for EURUSD by a factor 1000:
    assert legacy_pl_pips(Side.BUY, Decimal("1.10000"), Decimal("1.10250")) == Decimal("0.025")


def test_gold_loss() -> None:
    pl = position_pl(GOLD, Side.SELL, 0.1, GOLD.to_points(1290.0), GOLD.to_points(1295.5))
    assert pl == Decimal("-55.0")
