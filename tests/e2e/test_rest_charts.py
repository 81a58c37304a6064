"""Charts under a flood: one user's burst of distinct charts is refused past the per-user
limit (429 with Retry-After) while another user's chart is still rendered (200), and renders
never run more at once than the pool has workers."""

from __future__ import annotations

from pathlib import Path

import trio

from gateway.rest.charts import chart_pool
from gateway.runtime import run
from tests.e2e.conftest import Engine, engine_settings

PNG = b"\x89PNG\r\n\x1a\n"
FLOOD = 12


async def test_a_flood_is_refused_past_the_per_user_limit(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    settings = engine_settings(tmp_path, pg_dsn, chart_workers=1, chart_per_user=2, chart_queue=8)
    ctx = (await nursery.start(run, settings)).gateway
    engine = Engine(ctx, f"http://127.0.0.1:{settings.port}", "")
    _, alice = await engine.user("alice")
    _, bob = await engine.user("bob")
    flood: list[tuple[int, str | None]] = []

    async with engine.client(alice) as alice_http, engine.client(bob) as bob_http:

        async def one(limit: int) -> None:
            # A distinct limit is a distinct chart: no cached answer, each one a render.
            answer = await alice_http.get(
                "/api/v1/charts/candles/XAUUSD.png", params={"limit": limit}
            )
            flood.append((answer.status_code, answer.headers.get("Retry-After")))
            if answer.status_code == 200:
                assert answer.content.startswith(PNG)
            else:
                assert answer.json()["code"] == "rate_limited"

        async with trio.open_nursery() as requests:
            for k in range(FLOOD):
                requests.start_soon(one, 10 + k)
            # The first render waits for the worker process to start: alice's first two
            # are in flight, the rest refused, by the time bob asks.
            with trio.fail_after(30):
                while len(flood) < FLOOD - 2:
                    await trio.sleep(0.01)
            theirs = await bob_http.get("/api/v1/charts/equity.png")
            assert theirs.status_code == 200 and theirs.content.startswith(PNG)

    statuses = sorted(status for status, _ in flood)
    assert statuses == [200, 200] + [429] * (FLOOD - 2), statuses
    assert all(int(after) >= 1 for status, after in flood if status == 429)
    pool = chart_pool(ctx)
    assert pool.refused["user"] == FLOOD - 2
    assert pool.rendered == 3 and pool.peak == 1  # never more renders at once than workers
