"""Analytics: P&L, Sharpe ratio, maximum drawdown, the equity curve and the RSI.

The formulas are ``engine.analytics``. The equity curve is the fold of the closed trades'
realised P&L, in the order they closed, from the opening balance: the balance now less the P&L
of every closed trade. It ends at that balance. The balance now is the one the account's
terminal last reported plus the P&L of the closes it has not reported yet (a terminal books a
close at once but sends its balance with its next account frame, up to a heartbeat later:
anchored on the report alone, the whole curve sat one close too high until then); without any
report it is :data:`DEFAULT_BALANCE` plus the realised P&L.

The trades are those in Postgres and those the user's actor closed that are not there yet (the
journal writes behind): the balance and the trades are one consistent set, whichever of a
close, its record and the next account report comes first. The Sharpe ratio and
the drawdown are those of that curve; each is null with a reason beside it when the sample
cannot carry it (the Sharpe ratio below ``engine.analytics.SHARPE_MIN_RETURNS`` trades). A
drawdown is a fraction >= 0, as the drawdown guard's. The RSI(14) is computed on one-minute
closes of the candle book, in both of its forms.

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
    SHARPE_MIN_RETURNS,
    equity_to_balance,
    max_drawdown,
    returns_from_equity,
    rsi_rolling,
    rsi_wilder,
    sharpe_ratio,
)
from engine.lifecycle import PositionState
from engine.views import net_pl
from gateway.context import GatewayContext
from gateway.rest.common import ctx, require_token, scope_user
from gateway.rest.docs import bearer, errors, json_response
from gateway.rest.market import candle_book, known_symbol
from gateway.rest.placement import serve_here
from gateway.rest.positions import live_positions, view_of
from gateway.rest.reads import read_through
from persistence import projection_reads
from protocol.types import Id, Symbol

__all__ = [
    "DEFAULT_BALANCE",
    "Equity",
    "Stats",
    "blueprint",
    "curve_stats",
    "equity_from",
    "equity_of",
]

blueprint = Blueprint("analytics", __name__, url_prefix="/api/v1")
require_token(blueprint)

DEFAULT_BALANCE = 10_000.0
"""The opening balance when no terminal has reported a balance (the paper account's)."""
MAX_TRADES = 10_000
"""The curve shows at most this many of the latest trades (older ones still count in P&L)."""
RSI_PERIOD = 14
RSI_INTERVAL_S = 60
RSI_CANDLES = 240


class Trades(msgspec.Struct, frozen=True, kw_only=True):
    realized: float
    trades: list[tuple[int, float, int | None, str]]
    """(closed ms, net P&L (price P&L plus commission and swap), opened ms, position id),
    oldest first."""


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
    sharpe: float | None
    """Annualised Sharpe ratio of the curve's returns; null below ``sharpe_min_returns`` closed
    trades or when the returns do not vary (``sharpe_reason`` says which)."""
    sharpe_reason: str | None
    """Why ``sharpe`` is null; null when it is not."""
    sharpe_min_returns: int = SHARPE_MIN_RETURNS
    """The fewest returns (closed trades) a Sharpe ratio is given for."""
    max_drawdown: float | None
    """The deepest fall from a peak of the equity curve, a fraction >= 0 (0.2 is 20 %), as the
    drawdown guard reports it; null with no closed trade (``max_drawdown_reason``)."""
    max_drawdown_reason: str | None
    """Why ``max_drawdown`` is null; null when it is not."""
    equity_curve: list[EquityPoint]
    """The balance when the first trade shown opened, then after each closed trade; the last
    point is ``balance``. Empty without closed trades."""
    rsi: RSI
    starting_balance: float
    """The opening balance: ``balance`` less the realised P&L of every closed trade."""
    balance: float
    """Where the curve ends: the balance the terminal last reported plus the realised P&L of
    the closes it has not reported yet (its next account report says this figure), or, when
    ``balance_reported`` is false, :data:`DEFAULT_BALANCE` plus the realised P&L."""
    balance_reported: bool
    trades: int


class AnalyticsQuery(msgspec.Struct, frozen=True, kw_only=True):
    symbol: Symbol = "XAUUSD"
    """The symbol of the RSI."""
    user_id: Id | None = None
    """Admins: another user's analytics (default: the caller's)."""


class Equity(NamedTuple):
    """A user's equity curve and what it was built from."""

    starting_balance: float
    """The opening balance (``balance`` less ``realized``)."""
    balance: float
    """The balance the curve ends at."""
    balance_reported: bool
    realized: float
    trades: int
    points: list[EquityPoint]


class Ledger(NamedTuple):
    """What the user's actor knows beyond Postgres: the last reported balance, the closes the
    terminal has not reported yet, and the latest closed trades (some maybe not written yet)."""

    balance: float | None
    unreported: float
    recent: list[tuple[int, float, int | None, str]]


def live_ledger(context: GatewayContext, user_id: str) -> Ledger:
    """The balance the user's terminal last reported (live, else as last saved, if any), the
    P&L of the closes since that report, and the actor's recently closed trades."""
    actor = context.node.users.get(user_id)
    if actor is None:
        saved = context.node.state.guards.get(user_id)
        return Ledger(saved.balance if saved is not None else None, 0.0, [])
    ledger = actor.ledger()
    balance = ledger.balance
    if balance is None:
        saved = context.node.state.guards.get(user_id)
        balance = saved.balance if saved is not None else None
    recent = [
        (p.close_time_ms or p.updated_ms, net, p.open_time_ms, p.id)
        for p in ledger.recent_closed
        if p.state is PositionState.CLOSED
        and (net := net_pl(p.realized_pl, p.commission, p.swap)) is not None
    ]
    return Ledger(balance, ledger.unreported, recent)


def merge(trades: Trades, recent: list[tuple[int, float, int | None, str]]) -> Trades:
    """``trades`` with the recently closed ones Postgres does not hold yet, in close order."""
    known = {t[3] for t in trades.trades}
    missing = [t for t in recent if t[3] not in known]
    if not missing:
        return trades
    return Trades(
        realized=trades.realized + math.fsum(t[1] for t in missing),
        trades=sorted([*trades.trades, *missing], key=lambda t: (t[0], t[3])),
    )


def equity_from(balance: float | None, trades: Trades, unreported: float = 0.0) -> Equity:
    """The curve of ``trades`` ending at ``balance`` plus ``unreported`` (the P&L of closes the
    reported balance does not hold yet) (blocking: numpy; run it in a thread)."""
    reported = balance is not None
    end = balance + unreported if balance is not None else DEFAULT_BALANCE + trades.realized
    if not trades.trades:
        return Equity(end - trades.realized, end, reported, trades.realized, 0, [])
    values = equity_to_balance(end, [t[1] for t in trades.trades])
    first_closed, _, first_opened, _ = trades.trades[0]
    times = [first_opened or first_closed] + [t[0] for t in trades.trades]
    points = [
        EquityPoint(time_ms=t, equity=round(float(v), 2))
        for t, v in zip(times, values, strict=True)
    ]
    return Equity(end - trades.realized, end, reported, trades.realized, len(trades.trades), points)


async def equity_of(context: GatewayContext, user_id: str) -> Equity:
    """The user's equity curve (the trades are read through the cache)."""

    async def load() -> bytes:
        return (await projection_reads.trades_json(context.database, user_id, MAX_TRADES)).encode()

    trades = _TRADES_CODEC.decode(await read_through(context, f"trades:{user_id}", load))
    # Read after the trades: a trade in Postgres is also in the actor's view (or older), so the
    # two are one set.
    ledger = live_ledger(context, user_id)
    merged = merge(trades, ledger.recent)
    return await trio.to_thread.run_sync(equity_from, ledger.balance, merged, ledger.unreported)


class Stats(NamedTuple):
    """The curve's statistics, each None with a reason when the sample cannot carry it."""

    sharpe: float | None
    sharpe_reason: str | None
    max_drawdown: float | None
    max_drawdown_reason: str | None


def curve_stats(points: list[EquityPoint]) -> Stats:
    """The Sharpe ratio and the maximum drawdown of a curve (the REST answer's and the
    equity chart's: one computation, so they cannot disagree)."""
    equity = np.array([p.equity for p in points], dtype=np.float64)
    sharpe = sharpe_ratio(returns_from_equity(equity))
    drawdown = max_drawdown(equity)
    return Stats(sharpe.value, sharpe.reason, drawdown.value, drawdown.reason)


def _last(values: np.ndarray) -> float | None:
    if values.size == 0 or not np.isfinite(values[-1]):
        return None
    return float(values[-1])


def _numbers(points: list[EquityPoint], closes: list[float]) -> tuple[Stats, Any, Any]:
    prices = np.array(closes, dtype=np.float64)
    return (
        curve_stats(points),
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
    serve_here(user_id)  # the user actor's ledger and live positions
    symbol = known_symbol(context, query_args.symbol)
    equity = await equity_of(context, user_id)
    views = [view_of(context, p) for p in live_positions(context, user_id)]
    floating = math.fsum(v.pl for v in views if v is not None and v.pl is not None)
    closes = candle_book(context).closes(symbol, RSI_INTERVAL_S, RSI_CANDLES)
    stats, rolling, wilder = await trio.to_thread.run_sync(_numbers, equity.points, closes)
    return json_response(
        AnalyticsOut(
            pl=PL(realized=round(equity.realized, 2), floating=round(floating, 2)),
            sharpe=stats.sharpe,
            sharpe_reason=stats.sharpe_reason,
            max_drawdown=stats.max_drawdown,
            max_drawdown_reason=stats.max_drawdown_reason,
            equity_curve=equity.points,
            rsi=RSI(symbol=symbol, rolling=rolling, wilder=wilder),
            starting_balance=round(equity.starting_balance, 2),
            balance=round(equity.balance, 2),
            balance_reported=equity.balance_reported,
            trades=equity.trades,
        )
    )
