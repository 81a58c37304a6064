"""Analytics on seeded closed positions (known numbers, from an independent oracle), candles
from the candle book, and the charts as PNG."""

from __future__ import annotations

import itertools
import math

from engine.lifecycle import PositionState
from engine.positions import Position
from engine.records import PositionSaved
from protocol.common import Side
from tests.e2e.helpers import now_ms

PLS = [100.0, -50.0, 200.0, -300.0]
PNG = b"\x89PNG\r\n\x1a\n"


def oracle(start: float, pls: list[float]) -> tuple[list[float], float, float]:
    """Equity, Sharpe and max drawdown by the old platform's formulas, in plain Python."""
    equity = [start]
    for pl in pls:
        equity.append(equity[-1] + pl)
    returns = [(b - a) / a for a, b in itertools.pairwise(equity)]
    mean = sum(returns) / len(returns)
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / len(returns))
    peak, deepest = equity[0], 0.0
    for e in equity:
        peak = max(peak, e)
        deepest = min(deepest, (e - peak) / peak)
    return equity, mean / std * math.sqrt(252), deepest


class Board:
    """A price board with one symbol, for feeding the candle book by hand."""

    def __init__(self) -> None:
        self.quotes: dict[str, tuple[float, float, int]] = {}

    def all(self) -> dict[str, tuple[float, float, int]]:
        return self.quotes


async def seed_closed(engine, user_id: str, device_id: str) -> list[int]:
    """Closed positions with the realised P&Ls of :data:`PLS`, one minute apart."""
    start = now_ms() - 3_600_000
    closes = []
    for i, pl in enumerate(PLS):
        opened, closed = start + i * 60_000, start + i * 60_000 + 30_000
        closes.append(closed)
        position = Position(
            id=f"P-seed-{i}",
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
    book = engine.ctx.extras["rest.candles"]
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
        assert [p["equity"] for p in stats["equity_curve"]] == equity
        assert [p["time_ms"] for p in stats["equity_curve"]][1:] == closes
        assert math.isclose(stats["sharpe"], sharpe, rel_tol=1e-9)
        assert math.isclose(stats["max_drawdown"], deepest, rel_tol=1e-9)
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
