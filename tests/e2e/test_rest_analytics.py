"""Analytics on seeded closed positions (known numbers, from an independent oracle), candles
from the candle book, and the charts as PNG; the REST answer, the equity PNG's data and the
dashboard's figures held to the same numbers."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import trio

from engine.lifecycle import PositionState
from engine.positions import Position
from engine.records import PositionSaved
from gateway.rest.analytics import equity_of
from gateway.rest.charts import equity_chart_data
from gateway.rest.reads import cache_of
from protocol.common import Side
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.helpers import now_ms, wait_for
from tests.e2e.test_dashboard import chromium, launch  # noqa: F401 (chromium: a fixture)

PLS = [100.0, -50.0, 200.0, -300.0]
PNG = b"\x89PNG\r\n\x1a\n"


def oracle(start: float, pls: list[float]) -> tuple[list[float], float, float]:
    """Equity, Sharpe and max drawdown by the old platform's formulas, in plain Python; the
    drawdown with the guard's sign, ``(peak - equity) / peak`` >= 0."""
    equity = [start]
    for pl in pls:
        equity.append(equity[-1] + pl)
    returns = [(b - a) / a for a, b in itertools.pairwise(equity)]
    mean = sum(returns) / len(returns)
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / len(returns))
    peak, deepest = equity[0], 0.0
    for e in equity:
        peak = max(peak, e)
        deepest = max(deepest, (peak - e) / peak)
    return equity, mean / std * math.sqrt(252), deepest


class Board:
    """A price board with one symbol, for feeding the candle book by hand."""

    def __init__(self) -> None:
        self.quotes: dict[str, tuple[float, float, int]] = {}

    def all(self) -> dict[str, tuple[float, float, int]]:
        return self.quotes


async def seed_closed(
    engine, user_id: str, device_id: str, pls: list[float] = PLS, prefix: str = "P-seed"
) -> list[int]:
    """Closed positions with the realised P&Ls ``pls``, one minute apart."""
    start = now_ms() - 3_600_000
    closes = []
    for i, pl in enumerate(pls):
        opened, closed = start + i * 60_000, start + i * 60_000 + 30_000
        closes.append(closed)
        position = Position(
            id=f"{prefix}-{i}",
            user_id=user_id,
            device_id=device_id,
            account=device_id,
            symbol="XAUUSD",
            side=Side.BUY,
            volume=0.1,
            state=PositionState.CLOSED,
            open_price=2_000_000,
            open_time_ms=opened,
            close_price=2_000_000 + int(pl * 10),
            close_time_ms=closed,
            close_reason="tp" if pl > 0 else "sl",
            realized_pl=pl,
            updated_ms=closed,
        )
        await engine.ctx.record_durably(PositionSaved(position=position))
    return closes


async def test_analytics_candles_and_charts(engine) -> None:
    alice, token = await engine.user("alice")
    record, _ = await engine.ctx.registry.register_device(alice, "EA")
    closes = await seed_closed(engine, alice, record.id)

    # Fifteen one-minute EURUSD closes: ten rises of 0.0001 and four falls of 0.0001.
    book = engine.ctx.candles
    board, price, base = Board(), 1.1000, now_ms() - 20 * 60_000
    moves = [1, 1, -1, 1, 1, -1, 1, 1, -1, 1, 1, -1, 1, 1]
    for minute, move in enumerate([0, *moves]):
        price = round(price + move * 0.0001, 5)
        board.quotes["EURUSD"] = (price, price + 0.0001, base + minute * 60_000)
        book.sample(board, base + minute * 60_000)

    equity, sharpe, deepest = oracle(10_000.0, PLS)
    async with engine.client(token) as http:
        answer = await http.get("/api/v1/analytics", params={"symbol": "EURUSD"})
        assert answer.status_code == 200, answer.text
        stats = answer.json()
        assert stats["pl"] == {"realized": sum(PLS), "floating": 0.0}
        assert stats["starting_balance"] == 10_000.0 and stats["trades"] == len(PLS)
        # No terminal reported a balance: the default opening balance plus the trades.
        assert stats["balance"] == 10_000.0 + sum(PLS) and not stats["balance_reported"]
        assert [p["equity"] for p in stats["equity_curve"]] == equity
        assert [p["time_ms"] for p in stats["equity_curve"]][1:] == closes
        # Four trades are no sample for a Sharpe ratio: null, and why (the formula's -8.3
        # would be a made-up figure).
        assert sharpe < 0 and stats["sharpe"] is None and stats["sharpe_min_returns"] == 30
        assert stats["sharpe_reason"] == "needs at least 30 returns, has 4"
        assert math.isclose(stats["max_drawdown"], deepest, rel_tol=1e-9)
        assert stats["max_drawdown"] > 0 and stats["max_drawdown_reason"] is None
        rsi = stats["rsi"]
        assert rsi["symbol"] == "EURUSD" and rsi["period"] == 14
        assert math.isclose(rsi["rolling"], 100 - 100 / (1 + 10 / 4), rel_tol=1e-9)
        assert math.isclose(rsi["wilder"], rsi["rolling"], rel_tol=1e-9)
        no_rsi = (await http.get("/api/v1/analytics")).json()["rsi"]
        assert no_rsi == {
            "symbol": "XAUUSD",
            "rolling": None,
            "wilder": None,
            "period": 14,
            "interval_s": 60,
        }
        assert (await http.get("/api/v1/analytics", params={"symbol": "DOGE"})).status_code == 404

        candles = await http.get(
            "/api/v1/market/EURUSD/candles", params={"interval_s": 120, "limit": 3}
        )
        assert candles.status_code == 200
        three = candles.json()["candles"]
        assert len(three) == 3 and all(c["l"] <= min(c["o"], c["c"]) for c in three)
        assert three[-1]["c"] == price and three[0]["t"] % 120_000 == 0
        for bad in ({"interval_s": 0}, {"limit": 0}, {"interval_s": "soon"}):
            response = await http.get("/api/v1/market/EURUSD/candles", params=bad)
            assert response.status_code == 400
        assert (await http.get("/api/v1/market/DOGE/candles")).status_code == 404

        equity_png = await http.get("/api/v1/charts/equity.png")
        assert equity_png.status_code == 200
        assert equity_png.headers["content-type"] == "image/png"
        assert equity_png.content.startswith(PNG)
        again = await http.get("/api/v1/charts/equity.png")
        assert again.content == equity_png.content  # served from the cache
        candle_png = await http.get("/api/v1/charts/candles/EURUSD.png")
        assert candle_png.status_code == 200 and candle_png.content.startswith(PNG)
        empty = await http.get("/api/v1/charts/candles/XAUUSD.png")
        assert empty.status_code == 200 and empty.content.startswith(PNG)
        missing = await http.get("/api/v1/charts/candles/DOGE.png")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"

        metrics = (await http.get("/metrics")).text
        hits = [
            line
            for line in metrics.splitlines()
            if line.startswith('tripwire_rest_read_cache_total{result="hit"}')
        ]
        assert hits and float(hits[0].split()[-1]) >= 1


ISSUE_PLS = [-3.00, -3.87]
"""The issue's account: balance 9,993.13 after these two trades; the curve ended at 9,986.26,
the Sharpe ratio read -185, the max drawdown -0.07 % beside the guard's 0.07 %."""
REPORTED = 9_993.13


def dashboard_figures(base_url: str, browser_path: Path, answer: dict[str, Any]) -> dict[str, Any]:
    """What the dashboard makes of an ``/analytics`` answer: its modules, in Chromium, on the
    engine's own page (the curve, the figures, and the analytics panel as rendered)."""
    from playwright.sync_api import sync_playwright

    script = """async (answer) => {
      const { curveFromAnalytics, statsFromAnalytics } = await import("/static/chart.js");
      const view = await import("/static/render.js");
      const stats = statsFromAnalytics(answer);
      view.renderAnalytics(stats, "USD");
      const text = (id) => document.querySelector(`[data-testid="${id}"]`);
      return {
        curve: curveFromAnalytics(answer),
        stats,
        shown: {
          sharpe: text("analytics-sharpe").textContent,
          sharpeTitle: text("analytics-sharpe").title,
          drawdown: text("analytics-drawdown").textContent,
          drawdownTitle: text("analytics-drawdown").title,
        },
      };
    }"""
    with sync_playwright() as pw:
        browser = launch(pw, browser_path)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(base_url + "/")
            figures: dict[str, Any] = page.evaluate(script, answer)
        finally:
            browser.close()
    return figures


async def test_rest_the_png_and_the_dashboard_show_the_same_curve_ending_at_the_balance(
    engine,
    nursery: trio.Nursery,
    chromium: Path,  # noqa: F811 (the fixture)
) -> None:
    alice, token = await engine.user("alice")
    record, secret = await engine.ctx.registry.register_device(alice, "EA")
    closes = await seed_closed(engine, alice, record.id, ISSUE_PLS)
    # A terminal reports the balance the trades left (once, at connect).
    terminal = PaperTerminal(
        engine.node.instruments, lambda symbol: None, PaperConfig(balance=REPORTED)
    )
    ea = SimulatedEA(engine.ws_url + "/ws/device", record.id, secret, terminal, encoding="json")
    await nursery.start(ea.run)
    await wait_for(
        lambda: engine.node.users.get(alice) and engine.node.users[alice].core.balance == REPORTED
    )

    async with engine.client(token) as http:
        answer = await http.get("/api/v1/analytics")
        assert answer.status_code == 200, answer.text
        stats = answer.json()
        guards = (await http.get("/api/v1/guards")).json()["drawdown"]
    curve = [p["equity"] for p in stats["equity_curve"]]
    assert curve == [10_000.0, 9_997.0, REPORTED]  # from the opening balance to the balance
    assert stats["balance"] == REPORTED and stats["balance_reported"]
    assert stats["starting_balance"] == 10_000.0
    assert [p["time_ms"] for p in stats["equity_curve"]][1:] == closes
    assert stats["sharpe"] is None
    assert stats["sharpe_reason"] == "needs at least 30 returns, has 2"
    deepest = (10_000.0 - REPORTED) / 10_000.0
    assert math.isclose(stats["max_drawdown"], deepest, rel_tol=1e-9)

    # The PNG plots what its data function returns for the same user: the same points, and the
    # same drawdown in its title.
    points, title = await trio.to_thread.run_sync(
        equity_chart_data, await equity_of(engine.ctx, alice)
    )
    assert points == [(p["time_ms"], p["equity"]) for p in stats["equity_curve"]]
    assert title == "Equity from 10,000.00 to 9,993.13, max drawdown 0.07 %"

    # The dashboard: the same curve and figures, the drawdown with the guard's sign.
    seen = await trio.to_thread.run_sync(
        dashboard_figures, engine.base_url, chromium, json.loads(answer.text)
    )
    assert [(p["timeMs"], p["equity"]) for p in seen["curve"]] == points
    assert seen["stats"]["maxDrawdown"] == stats["max_drawdown"]
    assert seen["stats"]["last"] == seen["stats"]["balance"] == REPORTED
    assert seen["stats"]["sharpe"] is None
    assert seen["shown"]["drawdown"] == "0.07 %"
    assert seen["shown"]["sharpe"] == "—"
    assert seen["shown"]["sharpeTitle"] == stats["sharpe_reason"]
    assert guards["drawdown"] >= 0  # the guard's own figure has the same sign


async def test_a_sharpe_ratio_from_enough_trades_and_none_without_trades(engine) -> None:
    alice, token = await engine.user("alice")
    record, _ = await engine.ctx.registry.register_device(alice, "EA")
    async with engine.client(token) as http:
        empty = (await http.get("/api/v1/analytics")).json()
        assert empty["equity_curve"] == [] and empty["trades"] == 0
        assert empty["sharpe"] is None and empty["max_drawdown"] is None
        assert empty["sharpe_reason"] == "needs at least 30 returns, has 0"
        assert empty["max_drawdown_reason"] == "needs at least one closed trade"
        assert empty["balance"] == empty["starting_balance"] == 10_000.0

        pls = [25.0 if i % 3 else -20.0 for i in range(30)]
        await seed_closed(engine, alice, record.id, pls, prefix="P-many")
        await cache_of(engine.ctx).invalidate(f"rest:trades:{alice}")
        stats = (await http.get("/api/v1/analytics")).json()
    equity, sharpe, deepest = oracle(10_000.0, pls)
    assert [p["equity"] for p in stats["equity_curve"]] == equity
    assert stats["sharpe_reason"] is None and math.isclose(stats["sharpe"], sharpe, rel_tol=1e-9)
    assert math.isclose(stats["max_drawdown"], deepest, rel_tol=1e-9)
