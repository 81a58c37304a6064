"""Performance analytics with numpy: Sharpe ratio, drawdown, RSI, equity curve.

Formulas are the old platform's, so its reports keep their numbers:

* Sharpe ratio: ``mean(returns) / std(returns) * sqrt(252)`` (population std, no risk-free rate).
* Drawdown: ``(equity - running max) / running max``; max drawdown is its minimum (<= 0).
* RSI(14), two forms: the old platform's rolling means of gains and losses over the window, and
  Wilder's smoothing (the standard, an exponential average with alpha = 1/period seeded by the
  first simple mean).
* Equity curve: starting balance plus the cumulative realised P&L of closed trades, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "drawdown_series",
    "equity_curve",
    "max_drawdown",
    "returns_from_equity",
    "rsi_rolling",
    "rsi_wilder",
    "sharpe_ratio",
]

FloatArray = npt.NDArray[np.float64]
TRADING_DAYS = 252


def _array(values: Sequence[float] | FloatArray) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError("expected a one-dimensional series")
    return array


def sharpe_ratio(returns: Sequence[float] | FloatArray, periods: int = TRADING_DAYS) -> float:
    """Annualised Sharpe ratio; 0.0 when there are fewer than two returns or no variance."""
    r = _array(returns)
    if r.size < 2:
        return 0.0
    std = float(r.std())
    if std == 0.0 or not np.isfinite(std):
        return 0.0
    return float(r.mean() / std * np.sqrt(periods))


def returns_from_equity(equity: Sequence[float] | FloatArray) -> FloatArray:
    """Simple period returns of an equity series."""
    e = _array(equity)
    if e.size < 2:
        return np.zeros(0)
    return np.diff(e) / e[:-1]


def drawdown_series(equity: Sequence[float] | FloatArray) -> FloatArray:
    """``(equity - running max) / running max`` at each point (0 or negative)."""
    e = _array(equity)
    if e.size == 0:
        return e
    running = np.maximum.accumulate(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(running > 0, (e - running) / running, 0.0)
    return dd


def max_drawdown(equity: Sequence[float] | FloatArray) -> float:
    """The deepest drawdown as a fraction (e.g. -0.2 for a 20 % fall from a peak)."""
    dd = drawdown_series(equity)
    return float(dd.min()) if dd.size else 0.0


def rsi_rolling(prices: Sequence[float] | FloatArray, period: int = 14) -> FloatArray:
    """The old platform's RSI: rolling simple means of gains and losses over ``period``.

    The first ``period`` values are NaN (not enough history). A window with no losses is 100.
    """
    p = _array(prices)
    out = np.full(p.size, np.nan)
    if p.size <= period:
        return out
    delta = np.diff(p)
    gains = np.clip(delta, 0, None)
    losses = np.clip(-delta, 0, None)
    kernel = np.ones(period) / period
    avg_gain = np.convolve(gains, kernel, mode="valid")
    avg_loss = np.convolve(losses, kernel, mode="valid")
    out[period:] = _rsi(avg_gain, avg_loss)
    return out


def rsi_wilder(prices: Sequence[float] | FloatArray, period: int = 14) -> FloatArray:
    """Wilder's RSI: the first average is a simple mean, then ``avg = (avg*(n-1) + x) / n``."""
    p = _array(prices)
    out = np.full(p.size, np.nan)
    if p.size <= period:
        return out
    delta = np.diff(p)
    gains = np.clip(delta, 0, None)
    losses = np.clip(-delta, 0, None)
    avg_gain = np.empty(delta.size - period + 1)
    avg_loss = np.empty_like(avg_gain)
    avg_gain[0] = gains[:period].mean()
    avg_loss[0] = losses[:period].mean()
    # A recurrence: each value depends on the previous one, so it is a loop; it runs over a
    # price history (thousands of points), never on the tick path.
    for i in range(1, avg_gain.size):
        avg_gain[i] = (avg_gain[i - 1] * (period - 1) + gains[period + i - 1]) / period
        avg_loss[i] = (avg_loss[i - 1] * (period - 1) + losses[period + i - 1]) / period
    out[period:] = _rsi(avg_gain, avg_loss)
    return out


def _rsi(avg_gain: FloatArray, avg_loss: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        rs = avg_gain / avg_loss
        rsi = 100.0 - 100.0 / (1.0 + rs)
    rsi = np.where(avg_loss == 0, np.where(avg_gain == 0, 50.0, 100.0), rsi)
    return rsi


def equity_curve(starting_balance: float, trade_pls: Sequence[float] | FloatArray) -> FloatArray:
    """Balance after each closed trade, starting with the starting balance itself."""
    pls = _array(trade_pls)
    return np.concatenate(([starting_balance], starting_balance + np.cumsum(pls)))
