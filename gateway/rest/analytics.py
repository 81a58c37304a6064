"""Analytics: P&L, Sharpe ratio, maximum drawdown, the equity curve and the RSI.

The formulas are ``engine.analytics`` (the old platform's, so its reports keep their numbers).
The equity curve starts at the account's balance as last reported by its terminal, or at
10,000 when no terminal has reported one, and adds the realised P&L of each closed trade in
the order they closed; the Sharpe ratio and the drawdown are those of that curve. The RSI(14)
is computed on one-minute closes of the candle book, in both of its forms.

The trades come from Postgres in one aggregated row (cached briefly); the numbers are computed
in a worker thread, so a long history never stalls the event loop.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import msgspec
import numpy as np
import trio
from quart import Blueprint
from quart_schema import document_response, validate_querystring

from engine.analytics import (
    equity_curve,
    max_drawdown,
    returns_from_equity,
    rsi_rolling,
    rsi_wilder,
    sharpe_ratio,
)
from gateway.context import GatewayContext
from gateway.rest.common import ctx, require_token, scope_user
from gateway.rest.docs import bearer, errors, json_response
from gateway.rest.market import candle_book, known_symbol
from gateway.rest.positions import live_positions, view_of
from gateway.rest.reads import read_through
from protocol.types import Id, Symbol

__all__ = ["DEFAULT_BALANCE", "Equity", "blueprint", "equity_of"]

blueprint = Blueprint("analytics", __name__, url_prefix="/api/v1")
require_token(blueprint)

DEFAULT_BALANCE = 10_000.0
"""The starting balance when no terminal has reported one."""
MAX_TRADES = 10_000
"""The curve shows at most this many of the latest trades (older ones still count in P&L)."""
RSI_PERIOD = 14
RSI_INTERVAL_S = 60
RSI_CANDLES = 240

_TRADES = """
SELECT json_build_object(
    'realized', (SELECT coalesce(sum(pl), 0)::float8 FROM positions
                 WHERE user_id = $1 AND state = 'closed' AND pl IS NOT NULL),
    'trades', coalesce(json_agg(json_build_array(t.closed_ms, t.pl, t.opened_ms)
                       ORDER BY t.closed_ms, t.id), '[]'::json)
)::text
FROM (
    SELECT id, pl,
           (extract(epoch FROM coalesce(closed_at, updated_at)) * 1000)::bigint AS closed_ms,
           (extract(epoch FROM opened_at) * 1000)::bigint AS opened_ms
    FROM positions
    WHERE user_id = $1 AND state = 'closed' AND pl IS NOT NULL
    ORDER BY coalesce(closed_at, updated_at) DESC, id
    LIMIT $2
) AS t"""


class Trades(msgspec.Struct, frozen=True, kw_only=True):
    realized: float
    trades: list[tuple[int, float, int | None]]
    """(closed ms, realised P&L, opened ms), oldest first."""


_TRADES_CODEC = msgspec.json.Decoder(Trades)


class PL(msgspec.Struct, frozen=True, kw_only=True):
    realized: float
    """Sum of the realised P&L of every closed position."""
    floating: float
    """Sum of the current P&L of the live positions."""


class EquityPoint(msgspec.Struct, frozen=True, kw_only=True):
    time_ms: int
    equity: float


class RSI(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    rolling: float | None
    """The old platform's RSI (rolling means); null until there are enough candles."""
    wilder: float | None
    """Wilder's RSI; null until there are enough candles."""
    period: int = RSI_PERIOD
    interval_s: int = RSI_INTERVAL_S


class AnalyticsOut(msgspec.Struct, frozen=True, kw_only=True):
    pl: PL
    sharpe: float
    max_drawdown: float
    """The deepest fall from a peak of the equity curve, as a fraction (-0.2 is 20 %)."""
    equity_curve: list[EquityPoint]
    rsi: RSI
    starting_balance: float
    trades: int


class AnalyticsQuery(msgspec.Struct, frozen=True, kw_only=True):
    symbol: Symbol = "XAUUSD"
    """The symbol of the RSI."""
    user_id: Id | None = None
    """Admins: another user's analytics (default: the caller's)."""


class Equity(NamedTuple):
    """A user's equity curve and what it was built from."""

    starting_balance: float
    realized: float
    trades: int
    points: list[EquityPoint]


def starting_balance(context: GatewayContext, user_id: str) -> float:
    """The balance the user's terminal last reported, else :data:`DEFAULT_BALANCE`."""
    actor = context.node.users.get(user_id)
    balance = actor.core.balance if actor is not None else None
    if balance is None:
        saved = context.node.state.guards.get(user_id)
        balance = saved.balance if saved is not None else None
    return DEFAULT_BALANCE if balance is None else balance


def _curve(start: float, realized: float, trades: Trades) -> list[EquityPoint]:
    pls = [pl for _, pl, _ in trades.trades]
    # Trades older than the ones shown still moved the balance the curve starts from.
    base = start + (realized - math.fsum(pls))
    values = equity_curve(base, pls)
    if not trades.trades:
        return []
    first_closed, _, first_opened = trades.trades[0]
    times = [first_opened or first_closed] + [closed for closed, _, _ in trades.trades]
    return [
        EquityPoint(time_ms=t, equity=round(float(v), 2))
        for t, v in zip(times, values, strict=True)
    ]


async def equity_of(context: GatewayContext, user_id: str) -> Equity:
    """The user's equity curve (the trades are read through the cache)."""

    async def load() -> bytes:
        text: str = await context.db.fetchval(_TRADES, user_id, MAX_TRADES)
        return text.encode()

    trades = _TRADES_CODEC.decode(await read_through(context, f"trades:{user_id}", load))
    start = starting_balance(context, user_id)
    points = await trio.to_thread.run_sync(_curve, start, trades.realized, trades)
    return Equity(start, trades.realized, len(trades.trades), points)


def _last(values: np.ndarray) -> float | None:
    if values.size == 0 or not np.isfinite(values[-1]):
        return None
    return float(values[-1])


def _numbers(points: list[EquityPoint], closes: list[float]) -> tuple[float, float, Any, Any]:
    equity = np.array([p.equity for p in points], dtype=np.float64)
    prices = np.array(closes, dtype=np.float64)
    return (
        sharpe_ratio(returns_from_equity(equity)),
        max_drawdown(equity),
        _last(rsi_rolling(prices, RSI_PERIOD)),
        _last(rsi_wilder(prices, RSI_PERIOD)),
    )


@blueprint.get("/analytics")
@bearer
@validate_querystring(AnalyticsQuery)
@document_response(AnalyticsOut, 200)
@errors(400, 401, 403, 404)
async def analytics(query_args: AnalyticsQuery) -> Any:
    """P&L, Sharpe ratio, maximum drawdown, equity curve and RSI of the caller's trading."""
    context = ctx()
    user_id = scope_user(query_args.user_id, everyone=False)
    assert user_id is not None
    symbol = known_symbol(context, query_args.symbol)
    equity = await equity_of(context, user_id)
    views = [view_of(context, p) for p in live_positions(context, user_id)]
    floating = math.fsum(v.pl for v in views if v is not None and v.pl is not None)
    closes = candle_book(context).closes(symbol, RSI_INTERVAL_S, RSI_CANDLES)
    sharpe, drawdown, rolling, wilder = await trio.to_thread.run_sync(
        _numbers, equity.points, closes
    )
    return json_response(
        AnalyticsOut(
            pl=PL(realized=round(equity.realized, 2), floating=round(floating, 2)),
            sharpe=sharpe,
            max_drawdown=drawdown,
            equity_curve=equity.points,
            rsi=RSI(symbol=symbol, rolling=rolling, wilder=wilder),
            starting_balance=equity.starting_balance,
            trades=equity.trades,
        )
    )
