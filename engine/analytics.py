"""Performance analytics with numpy: Sharpe ratio, drawdown, RSI, equity curve.

Formulas are the old platform's, so its reports keep their numbers, with two corrections:

* Sharpe ratio: ``mean(returns) / std(returns) * sqrt(252)`` (population std, no risk-free rate),
  given only for a sample worth the name: at least :data:`SHARPE_MIN_RETURNS` returns whose
  deviation is not zero. Otherwise it is None with the reason (:class:`Figure`), never a
  number: on two trades the formula gave -185 and -1,754, and 0.0 for no variance reads as a
  measured "no excess return".
* Drawdown: ``(running max - equity) / running max``, a fraction >= 0 (0.2 is a 20 % fall from
  the peak); max drawdown is its largest value. This is the drawdown guard's sign
  (``engine.guards``, its alerts and ``/guards``), so every place that shows a drawdown agrees;
  the old platform's ``(equity - max) / max`` (<= 0) showed -0.07 % beside the guard's 0.07 %.
* RSI(14), two forms: the old platform's rolling means of gains and losses over the window, and
  Wilder's smoothing (the standard, an exponential average with alpha = 1/period seeded by the
  first simple mean).
* Equity curve: a fold of the closed trades' realised P&L, in order, from the opening balance:
  the balance now less every trade's P&L (:func:`equity_to_balance`). It ends at the balance
  (the old one started FROM the balance now and added the trades a second time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "SHARPE_MIN_RETURNS",
    "Figure",
    "drawdown_series",
    "equity_curve",
    "equity_to_balance",
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


SHARPE_MIN_RETURNS = 30
"""The fewest returns a Sharpe ratio is given for: the customary smallest sample for a mean and
a deviation to say anything (annualised, a handful of trades gives any number at all)."""
FLAT = 1e-9
"""Returns whose deviation is below this fraction of their largest size do not vary: the
deviation is rounding noise, and a ratio over it would be astronomical."""


class Figure(NamedTuple):
    """A statistic, or None and the reason it cannot be given."""

    value: float | None
    reason: str | None = None
    """Why ``value`` is None (a sentence for people); None when there is a value."""


def sharpe_ratio(
    returns: Sequence[float] | FloatArray,
    periods: int = TRADING_DAYS,
    min_returns: int = SHARPE_MIN_RETURNS,
) -> Figure:
    """Annualised Sharpe ratio; None with the reason below ``min_returns`` returns (at least 2)
    or when the returns do not vary."""
    r = _array(returns)
    if r.size < max(2, min_returns):
        return Figure(None, f"needs at least {max(2, min_returns)} returns, has {r.size}")
    std = float(r.std())
    if not np.isfinite(std) or std <= FLAT * float(np.abs(r).max()):
        return Figure(None, "the returns do not vary")
    return Figure(float(r.mean() / std * np.sqrt(periods)))


def returns_from_equity(equity: Sequence[float] | FloatArray) -> FloatArray:
    """Simple period returns of an equity series."""
    e = _array(equity)
    if e.size < 2:
        return np.zeros(0)
    return np.diff(e) / e[:-1]


def drawdown_series(equity: Sequence[float] | FloatArray) -> FloatArray:
    """``(running max - equity) / running max`` at each point (0 or positive)."""
    e = _array(equity)
    if e.size == 0:
        return e
    running = np.maximum.accumulate(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(running > 0, (running - e) / running, 0.0)
    return dd


def max_drawdown(equity: Sequence[float] | FloatArray) -> Figure:
    """The deepest drawdown as a fraction >= 0 (0.2 for a 20 % fall from a peak); None with the
    reason for a curve of fewer than two points (nothing has moved it)."""
    e = _array(equity)
    if e.size < 2:
        return Figure(None, "needs at least one closed trade")
    return Figure(float(drawdown_series(e).max()))


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


def equity_to_balance(balance: float, trade_pls: Sequence[float] | FloatArray) -> FloatArray:
    """The balance before the first of ``trade_pls`` and after each: the fold of the trades
    from the balance they started at (``balance`` less all of them), ending at ``balance``.

    ``trade_pls`` may be only the latest trades: the older ones are in the balance the fold
    starts at. Each point is computed as ``balance`` less the trades after it (the fold,
    anchored at its end), so the last point is ``balance`` exactly, not up to rounding.
    """
    pls = _array(trade_pls)
    after = np.concatenate((np.cumsum(pls[::-1])[::-1], [0.0]))
    return balance - after
