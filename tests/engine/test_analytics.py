"""Known-answer tests for the analytics (values worked by hand or with the textbook example),
and properties of the equity curve and the drawdown (hypothesis)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.analytics import (
    SHARPE_MIN_RETURNS,
    drawdown_series,
    equity_curve,
    equity_to_balance,
    max_drawdown,
    returns_from_equity,
    rsi_rolling,
    rsi_wilder,
    sharpe_ratio,
)
from engine.guards import DrawdownGuard


def test_sharpe_known_answer() -> None:
    returns = [0.01, -0.005, 0.02, 0.0, 0.015]
    mean, std = 0.008, math.sqrt(np.var(returns))
    sharpe = sharpe_ratio(returns, min_returns=5)
    assert sharpe.value == pytest.approx(mean / std * math.sqrt(252)) and sharpe.reason is None
    assert sharpe.value == pytest.approx(13.694, rel=1e-4)  # worked by hand


def test_sharpe_needs_a_sample_and_says_so() -> None:
    """Two trades gave -185 and -1,754: too few returns give no number, and a reason."""
    two = sharpe_ratio([-0.0003, -0.0004])
    assert two.value is None and two.reason == "needs at least 30 returns, has 2"
    assert sharpe_ratio([]).value is None and sharpe_ratio([0.01], min_returns=1).value is None
    enough = [0.01 * (-1) ** i + 0.001 for i in range(SHARPE_MIN_RETURNS)]
    assert sharpe_ratio(enough[:-1]).value is None
    assert sharpe_ratio(enough).value == pytest.approx(0.1 * math.sqrt(252))
    flat = sharpe_ratio([0.01] * SHARPE_MIN_RETURNS)  # numpy's std of equal floats: ~1e-19
    assert flat == (None, "the returns do not vary")


def test_drawdown_known_answer() -> None:
    equity = [100, 120, 90, 130, 65, 70]
    assert drawdown_series(equity).tolist() == pytest.approx([0, 0, 0.25, 0, 0.5, 60 / 130])
    assert max_drawdown(equity) == (pytest.approx(0.5), None)
    assert max_drawdown([]) == (None, "needs at least one closed trade")
    assert max_drawdown([100.0]).value is None
    assert max_drawdown([100.0, 100.0]).value == 0.0


money = st.floats(-5_000, 5_000, allow_nan=False).map(lambda x: round(x, 2))


@given(st.floats(1.0, 1e7, allow_nan=False), st.lists(money, max_size=60))
def test_the_curve_is_a_fold_of_the_trades_that_ends_at_the_balance(balance, pls) -> None:
    """The issue's figures: balance 9,993.13, trades -3.00 and -3.87; the curve ended at
    9,986.26 (it started from the balance and took the trades off again)."""
    curve = equity_to_balance(balance, pls)
    assert curve.size == len(pls) + 1
    assert curve[-1] == balance  # exactly: the fold is anchored at its end
    opening = balance - math.fsum(pls)
    assert curve[0] == pytest.approx(opening, abs=1e-6)
    # A fold from the opening balance: each step is that trade's P&L.
    assert np.diff(curve).tolist() == pytest.approx(pls, abs=1e-6)
    assert curve.tolist() == pytest.approx(equity_curve(opening, pls).tolist(), abs=1e-6)


def test_the_issue_s_curve() -> None:
    assert equity_to_balance(9_993.13, [-3.00, -3.87]).round(2).tolist() == [
        10_000.0,
        9_997.0,
        9_993.13,
    ]


@given(st.lists(st.floats(1.0, 1e6, allow_nan=False), min_size=1, max_size=60))
def test_drawdown_has_the_guard_s_sign(equity) -> None:
    """One convention: a fraction >= 0, the drawdown guard's ``(peak - equity) / peak``, at
    every point; the maximum is the brute-force largest fall from an earlier peak."""
    series = drawdown_series(equity)
    guard = DrawdownGuard()
    for e, dd in zip(equity, series, strict=True):
        guard.update(e, 0)
        assert dd >= 0 and dd == pytest.approx(guard.drawdown, abs=1e-12)
    brute = max((max(equity[: i + 1]) - e) / max(equity[: i + 1]) for i, e in enumerate(equity))
    deepest = max_drawdown(equity)
    if len(equity) < 2:
        assert deepest.value is None and deepest.reason
    else:
        assert deepest.value == pytest.approx(brute, abs=1e-12) and deepest.value >= 0


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
