"""Known-answer tests for the analytics (values worked by hand or with the textbook example)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from engine.analytics import (
    drawdown_series,
    equity_curve,
    max_drawdown,
    returns_from_equity,
    rsi_rolling,
    rsi_wilder,
    sharpe_ratio,
)


def test_sharpe_known_answer() -> None:
    returns = [0.01, -0.005, 0.02, 0.0, 0.015]
    mean, std = 0.008, math.sqrt(np.var(returns))
    assert sharpe_ratio(returns) == pytest.approx(mean / std * math.sqrt(252))
    assert sharpe_ratio(returns) == pytest.approx(13.694, rel=1e-4)  # worked by hand


def test_sharpe_degenerate_cases() -> None:
    assert sharpe_ratio([]) == 0.0
    assert sharpe_ratio([0.01]) == 0.0
    assert sharpe_ratio([0.01, 0.01, 0.01]) == 0.0


def test_drawdown_known_answer() -> None:
    equity = [100, 120, 90, 130, 65, 70]
    assert drawdown_series(equity).tolist() == pytest.approx([0, 0, -0.25, 0, -0.5, -60 / 130])
    assert max_drawdown(equity) == pytest.approx(-0.5)
    assert max_drawdown([]) == 0.0


def test_returns_from_equity() -> None:
    assert returns_from_equity([100, 110, 99]).tolist() == pytest.approx([0.1, -0.1])


# Wilder's example as StockCharts reproduces it. StockCharts prints 70.53 and 66.32 because it
# rounds the intermediate averages (0.24 / 0.10); worked exactly with fractions below, the first
# average gain is 3.34/14 and loss 1.40/14, so RSI = 100 - 100 / (1 + 3.34/1.40) = 70.464.
WILDER_CLOSES = [
    44.34,
    44.09,
    44.15,
    43.61,
    44.33,
    44.83,
    45.10,
    45.42,
    45.84,
    46.08,
    45.89,
    46.03,
    45.61,
    46.28,
    46.28,
    46.00,
    46.03,
    46.41,
    46.22,
    45.64,
]


def _wilder_by_hand(closes: list[float], period: int) -> list[float]:
    from fractions import Fraction

    c = [Fraction(str(x)) for x in closes]
    d = [b - a for a, b in itertools.pairwise(c)]
    gain = sum(max(x, 0) for x in d[:period]) / period
    loss = sum(max(-x, 0) for x in d[:period]) / period
    out = [float(100 - 100 / (1 + gain / loss))]
    for x in d[period:]:
        gain = (gain * (period - 1) + max(x, 0)) / period
        loss = (loss * (period - 1) + max(-x, 0)) / period
        out.append(float(100 - 100 / (1 + gain / loss)))
    return out


def test_rsi_wilder_textbook_values() -> None:
    rsi = rsi_wilder(WILDER_CLOSES, 14)
    assert np.isnan(rsi[:14]).all()
    assert rsi[14] == pytest.approx(70.464, abs=0.001)
    assert rsi[14:].tolist() == pytest.approx(_wilder_by_hand(WILDER_CLOSES, 14))
    # Within StockCharts' rounding of its published table:
    assert rsi[14] == pytest.approx(70.53, abs=0.1) and rsi[15] == pytest.approx(66.32, abs=0.1)


def test_rsi_rolling_matches_a_hand_computation() -> None:
    prices = [1, 2, 3, 2, 3, 4]
    # period 3: deltas 1,1,-1,1,1 -> windows (1,1,-1): g=2/3, l=1/3 -> RSI 66.67
    rsi = rsi_rolling(prices, 3)
    assert np.isnan(rsi[:3]).all()
    assert rsi[3] == pytest.approx(100 - 100 / (1 + 2))
    assert rsi[4] == pytest.approx(100 - 100 / (1 + 2))  # (1,-1,1)
    assert rsi[5] == pytest.approx(100 - 100 / (1 + 2))  # (-1,1,1)
    assert rsi_rolling([1, 2, 3, 4, 5], 3)[3:].tolist() == [100.0, 100.0]
    assert rsi_rolling([2, 2, 2, 2], 3)[3] == 50.0


def test_rsi_forms_agree_on_the_first_value() -> None:
    assert rsi_rolling(WILDER_CLOSES)[14] == pytest.approx(rsi_wilder(WILDER_CLOSES)[14])


def test_equity_curve() -> None:
    assert equity_curve(1000, [10, -5, 20]).tolist() == [1000, 1010, 1005, 1025]
