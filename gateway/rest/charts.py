"""Charts the old platform rendered on the server: the equity curve and a symbol's candles.

Rendering is matplotlib's Agg backend on a bare :class:`~matplotlib.figure.Figure` (no pyplot
and its global state), in a worker thread, one render at a time (matplotlib is not safe to
drive from several threads at once). A rendered PNG is kept for :data:`CHART_TTL_MS` in the
read cache, so a dashboard refreshing it costs one render per few seconds, not one per request.
matplotlib is imported on the first render, so starting the engine does not pay for it.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import trio
from quart import Blueprint, Response
from quart_schema import validate_querystring

from gateway.rest.analytics import Equity, curve_stats, equity_of
from gateway.rest.candlebook import Candle
from gateway.rest.common import ctx, identity, require_token
from gateway.rest.docs import bearer, binary, errors
from gateway.rest.market import CandleQuery, candle_book, known_symbol
from gateway.rest.reads import read_through

__all__ = ["CHART_TTL_MS", "blueprint", "equity_chart_data", "render_candles", "render_equity"]

blueprint = Blueprint("charts", __name__, url_prefix="/api/v1/charts")
require_token(blueprint)

CHART_TTL_MS = 5_000
_RENDERER = trio.CapacityLimiter(1)
_SIZE = (9.0, 3.6)
_DPI = 100


def _figure(title: str) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=_SIZE, dpi=_DPI, layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def render_equity(points: list[tuple[int, float]], title: str) -> bytes:
    """A PNG of an equity curve of ``(time ms, equity)`` points (blocking: run in a thread)."""
    figure, axes = _figure(title)
    if points:
        axes.plot([_when(t) for t, _ in points], [e for _, e in points], color="#1f77b4")
        axes.set_ylabel("equity")
        figure.autofmt_xdate()
    else:
        axes.text(0.5, 0.5, "no closed trades yet", ha="center", va="center")
    return _png(figure)


def render_candles(candles: list[Candle], title: str, interval_s: int) -> bytes:
    """A PNG of OHLC candles, green up and red down (blocking: run in a thread)."""
    figure, axes = _figure(title)
    if candles:
        # Wicks and bodies are two line collections (one artist each, not one per candle);
        # a body is a thick line, as wide as the plot allows for that many candles.
        when = [_when(c.t + interval_s * 500) for c in candles]  # centred on their span
        colors = ["#2ca02c" if c.c >= c.o else "#d62728" for c in candles]
        axes.vlines(when, [c.l for c in candles], [c.h for c in candles], colors=colors)
        body_points = max(1.0, _SIZE[0] * 72 * 0.8 / len(candles) * 0.7)
        tops = [max(c.o, c.c) for c in candles]
        bottoms = [min(c.o, c.c) for c in candles]
        axes.vlines(when, bottoms, tops, colors=colors, linewidth=body_points)
        figure.autofmt_xdate()
    else:
        axes.text(0.5, 0.5, "no prices sampled yet", ha="center", va="center")
    return _png(figure)


def equity_chart_data(equity: Equity) -> tuple[list[tuple[int, float]], str]:
    """What the equity PNG shows: the points of ``/analytics``' curve and a title with its
    maximum drawdown, computed as ``/analytics`` computes it (blocking: run in a thread)."""
    points = [(p.time_ms, p.equity) for p in equity.points]
    if not points:
        return points, "Equity"
    drawdown = curve_stats(equity.points).max_drawdown
    shown = "none" if drawdown is None else f"{drawdown * 100:.2f} %"
    return points, (
        f"Equity from {points[0][1]:,.2f} to {points[-1][1]:,.2f}, max drawdown {shown}"
    )


def _image(png: bytes) -> Response:
    response = Response(png, content_type="image/png")
    response.headers["Cache-Control"] = f"private, max-age={CHART_TTL_MS // 1000}"
    return response


@blueprint.get("/equity.png")
@bearer
@binary("image/png", description="The caller's equity curve")
@errors(401)
async def equity_chart() -> Any:
    """The caller's equity curve as a PNG."""
    context = ctx()
    user_id = identity().user_id

    async def render() -> bytes:
        equity = await equity_of(context, user_id)
        points, title = await trio.to_thread.run_sync(equity_chart_data, equity)
        async with _RENDERER:
            return await trio.to_thread.run_sync(render_equity, points, title)

    return _image(await read_through(context, f"chart:equity:{user_id}", render, CHART_TTL_MS))


@blueprint.get("/candles/<symbol>.png")
@bearer
@validate_querystring(CandleQuery)
@binary("image/png", description="Candles of the symbol's bid")
@errors(400, 401, 404)
async def candles_chart(symbol: str, query_args: CandleQuery) -> Any:
    """A symbol's candles as a PNG (the same data as ``/market/{symbol}/candles``)."""
    context = ctx()
    known_symbol(context, symbol)
    interval, limit = query_args.interval_s, query_args.limit

    async def render() -> bytes:
        candles = candle_book(context).candles(symbol, interval, limit)
        title = f"{symbol} {interval} s candles"
        async with _RENDERER:
            return await trio.to_thread.run_sync(render_candles, candles, title, interval)

    key = f"chart:candles:{symbol}:{interval}:{limit}"
    return _image(await read_through(context, key, render, CHART_TTL_MS))
