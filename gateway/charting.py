"""Chart rendering: PNGs of an equity curve and of OHLC candles, with matplotlib's Agg backend.

This module is what the chart worker processes import (``gateway.rest.charts`` runs it in a
process pool), so it imports nothing of the server's: no Quart, no trio, no engine. Its inputs
are plain tuples, which pickle without importing the classes they came from.

A bare :class:`~matplotlib.figure.Figure` (no pyplot and its global state) per render.
matplotlib is imported on the first render, so importing this module costs nothing.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["render_candles", "render_equity", "start_worker"]

_SIZE = (9.0, 3.6)
_DPI = 100


def start_worker(niceness: int) -> None:
    """A chart process's initializer: lower its CPU priority below the engine's (a render is
    a picture for a person; the engine's event loop serves devices and quotes) and pay
    matplotlib's import before the first request does."""
    if niceness:
        os.nice(niceness)
    from matplotlib.backends import backend_agg  # noqa: F401


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


def render_equity(points: Sequence[tuple[int, float]], title: str) -> bytes:
    """A PNG of an equity curve of ``(time ms, equity)`` points (blocking, CPU-bound)."""
    figure, axes = _figure(title)
    if points:
        axes.plot([_when(t) for t, _ in points], [e for _, e in points], color="#1f77b4")
        axes.set_ylabel("equity")
        figure.autofmt_xdate()
    else:
        axes.text(0.5, 0.5, "no closed trades yet", ha="center", va="center")
    return _png(figure)


def render_candles(
    candles: Sequence[tuple[int, float, float, float, float]], title: str, interval_s: int
) -> bytes:
    """A PNG of ``(start ms, open, high, low, close)`` candles, green up and red down
    (blocking, CPU-bound)."""
    figure, axes = _figure(title)
    if candles:
        # Wicks and bodies are two line collections (one artist each, not one per candle);
        # a body is a thick line, as wide as the plot allows for that many candles.
        when = [_when(t + interval_s * 500) for t, _, _, _, _ in candles]  # centred on their span
        colors = ["#2ca02c" if c >= o else "#d62728" for _, o, _, _, c in candles]
        axes.vlines(
            when, [low for *_, low, _ in candles], [h for _, _, h, _, _ in candles], colors=colors
        )
        body_points = max(1.0, _SIZE[0] * 72 * 0.8 / len(candles) * 0.7)
        tops = [max(o, c) for _, o, _, _, c in candles]
        bottoms = [min(o, c) for _, o, _, _, c in candles]
        axes.vlines(when, bottoms, tops, colors=colors, linewidth=body_points)
        figure.autofmt_xdate()
    else:
        axes.text(0.5, 0.5, "no prices sampled yet", ha="center", va="center")
    return _png(figure)
