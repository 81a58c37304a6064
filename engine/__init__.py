"""The sans-I/O core of Tripwire: everything that decides, nothing that waits.

This package has no networking code at all, no trio, no database and no clock: functions and
methods take the time as an argument and return what should happen. It can be driven by plain
function calls, which is how its tests drive it; ``actors/`` drives it live.
"""

from __future__ import annotations

from engine.analytics import (
    SHARPE_MIN_RETURNS,
    Figure,
    drawdown_series,
    equity_curve,
    equity_to_balance,
    max_drawdown,
    returns_from_equity,
    rsi_rolling,
    rsi_wilder,
    sharpe_ratio,
)
from engine.guards import (
    DrawdownGuard,
    DrawdownLimits,
    GuardDecision,
    GuardLevel,
    MarketGuard,
    MarketLimits,
)
from engine.instruments import DEFAULT_INSTRUMENTS, Instrument
from engine.lifecycle import FINAL_STATES, LIVE_STATES, PositionEvent, PositionState, next_state
from engine.money import legacy_pl, pip_value, pips, position_pl
from engine.positions import BreakEvenRule, Position, TrailingRule
from engine.quotes import REJECT_REASONS, QuoteLimits, QuoteValidator
from engine.trailing import LevelMove, TrailingBook
from engine.triggers import KEEP, Trigger, TriggerBook, TriggerKind

__all__ = [
    "DEFAULT_INSTRUMENTS",
    "FINAL_STATES",
    "KEEP",
    "LIVE_STATES",
    "REJECT_REASONS",
    "SHARPE_MIN_RETURNS",
    "BreakEvenRule",
    "DrawdownGuard",
    "DrawdownLimits",
    "Figure",
    "GuardDecision",
    "GuardLevel",
    "Instrument",
    "LevelMove",
    "MarketGuard",
    "MarketLimits",
    "Position",
    "PositionEvent",
    "PositionState",
    "QuoteLimits",
    "QuoteValidator",
    "TrailingBook",
    "TrailingRule",
    "Trigger",
    "TriggerBook",
    "TriggerKind",
    "drawdown_series",
    "equity_curve",
    "equity_to_balance",
    "legacy_pl",
    "max_drawdown",
    "next_state",
    "pip_value",
    "pips",
    "position_pl",
    "returns_from_equity",
    "rsi_rolling",
    "rsi_wilder",
    "sharpe_ratio",
]
