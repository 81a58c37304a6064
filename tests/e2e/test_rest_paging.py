"""Paging the closed positions over REST: 3,000 positions closed within three milliseconds,
walked 250 at a time by ``cursor``, are each reached exactly once (by ``before_ms`` most were
unreachable); a cursor that is not one is a 400."""

from __future__ import annotations

from engine.instruments import DEFAULT_INSTRUMENTS
from engine.lifecycle import PositionState
from engine.positions import Position
from engine.records import PositionSaved
from persistence.projections import make_projection
from protocol.common import Side
from tests.e2e.helpers import now_ms

COUNT, LIMIT = 3_000, 250


async def seed_closed(engine, user_id: str, device_id: str, count: int) -> set[str]:
    """``count`` closed positions, all in three milliseconds, written by the real projection."""
    end = now_ms() - 60_000
    records = [
        PositionSaved(
            position=Position(
                id=f"P-page-{(i * 7919) % 10_007:05d}",
                user_id=user_id,
                device_id=device_id,
                account=device_id,
                symbol="XAUUSD",
                side=Side.BUY,
                volume=0.1,
                state=PositionState.CLOSED,
                open_price=2_000_000,
                open_time_ms=end - 1_000,
                close_price=2_000_500,
                close_time_ms=end + i % 3,
                close_reason="sl",
                realized_pl=-5.0,
                updated_ms=end + i % 3,
            )
        )
        for i in range(count)
    ]
    for sql, rows in make_projection(DEFAULT_INSTRUMENTS)(records):
        await engine.ctx.db.executemany(sql, rows)
    return {r.position.id for r in records}


async def test_every_closed_position_is_reached_once(engine) -> None:
    alice, token = await engine.user("alice")
    record, _ = await engine.ctx.registry.register_device(alice, "EA")
    ids = await seed_closed(engine, alice, record.id, COUNT)
    async with engine.client(token) as http:
        seen: list[str] = []
        params: dict = {"state": "closed", "limit": LIMIT}
        for _ in range(COUNT // LIMIT + 2):
            answer = await http.get("/api/v1/positions", params=params)
            assert answer.status_code == 200, answer.text
            page = answer.json()
            seen += [p["id"] for p in page["positions"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert len(seen) == COUNT and set(seen) == ids

        # The old bound still answers (a page of what ended before it).
        first = (await http.get("/api/v1/positions", params={"state": "closed"})).json()
        last_end = first["positions"][-1]["close_time_ms"]
        older = await http.get(
            "/api/v1/positions", params={"state": "closed", "before_ms": last_end}
        )
        assert older.status_code == 200
        assert all(p["close_time_ms"] < last_end for p in older.json()["positions"])

        live = (await http.get("/api/v1/positions")).json()
        assert live == {"positions": [], "next_cursor": None}
        for bad in ("x", "not*base64", "WzEsMl0", "A" * 300, "WyJhIiwiYiJd"):
            answer = await http.get("/api/v1/positions", params={"state": "closed", "cursor": bad})
            assert answer.status_code == 400, (bad, answer.text)
            assert answer.json()["code"] == "malformed"
