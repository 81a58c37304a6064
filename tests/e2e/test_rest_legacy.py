"""The old Flask routes: 301 to their new home with the query string kept, 410 once the flag is
off, and every call counted on ``/metrics``."""

from __future__ import annotations

import msgspec

REDIRECTS = {
    "/api/price": "/api/v1/market/prices",
    "/api/price?symbol=XAUUSD": "/api/v1/market/prices?symbol=XAUUSD",
    "/api/trades": "/api/v1/positions?state=closed",
    "/api/trades?symbol=XAUUSD&limit=5": "/api/v1/positions?state=closed&symbol=XAUUSD&limit=5",
    "/api/trades?state=all": "/api/v1/positions?state=all",
    "/api/positions?user_id=u-1": "/api/v1/positions?user_id=u-1",
    "/api/images": "/api/v1/charts/equity.png",
    "/api/metrics": "/api/v1/analytics",
    "/api/indicators?symbol=EURUSD": "/api/v1/analytics?symbol=EURUSD",
    "/api/historical": "/api/v1/market/XAUUSD/candles",
    "/api/historical?symbol=EURUSD&interval_s=300": (
        "/api/v1/market/EURUSD/candles?symbol=EURUSD&interval_s=300"
    ),
    "/images/equity_curve.png": "/api/v1/charts/equity.png",
    "/images/candles_EURUSD.png?limit=50": "/api/v1/charts/candles/EURUSD.png?limit=50",
    "/images/xauusd-chart.png": "/api/v1/charts/candles/XAUUSD.png",
}


def legacy_count(metrics: str, route: str) -> float:
    prefix = f'tripwire_legacy_calls_total{{route="{route}"}}'
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


async def test_redirects_then_gone(engine) -> None:
    _, token = await engine.user("old-client")
    async with engine.client(token) as http:
        for old, new in REDIRECTS.items():
            response = await http.get(old)
            assert response.status_code == 301, (old, response.text)
            assert response.headers["location"] == new, old
        unknown = await http.get("/images/logo.png")
        assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
        # The new home answers what the old route asked.
        followed = await http.get("/api/trades?symbol=XAUUSD", follow_redirects=True)
        assert followed.status_code == 200
        assert followed.json() == {"positions": [], "next_cursor": None}

        engine.ctx.settings = msgspec.structs.replace(engine.ctx.settings, legacy_redirects=False)
        for old in REDIRECTS:
            response = await http.get(old)
            assert response.status_code == 410, old
            assert response.json()["code"] == "gone"
            assert "location" not in response.headers

        metrics = (await http.get("/metrics")).text
    assert legacy_count(metrics, "/api/price") == 4  # two redirects, two 410s
    assert legacy_count(metrics, "/api/trades") == 7
    assert legacy_count(metrics, "/images/<name>") == 7
    assert legacy_count(metrics, "/api/historical") == 4
