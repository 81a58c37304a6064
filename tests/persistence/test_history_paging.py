"""Paging the history of positions by cursor, at the SQL level against a real Postgres: for
any spread of end times (most of them shared by many positions) and any page size, walking
the pages reaches every position exactly once, in the order newest first (id descending among
equals); the admin's view (everyone) and one user's are both paged so. The old ``before_ms``
bound is shown to skip what the cursor reaches. And both orders are served by an index."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.rest.positions import history_page
from persistence.projection_reads import _history_sql

T = TypeVar("T")
T0 = 1_700_000_000_000
USERS = ("u1", "u2")

# (user index, end ms offset, rejected?) per position; few distinct times, many sharing one.
positions_st = st.lists(
    st.tuples(st.integers(0, 1), st.integers(0, 6), st.booleans()), min_size=0, max_size=120
)


def run(dsn: str, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def main() -> T:
        conn = await asyncpg.connect(dsn)
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


async def seed(conn: asyncpg.Connection, rows: list[tuple[int, int, bool]]) -> list[Any]:
    """The positions ``rows`` describe (ids in an order unrelated to their times); their
    (end, id, user) in the order the history promises."""
    await conn.execute("TRUNCATE positions CASCADE")
    if not await conn.fetchval("SELECT count(*) FROM users"):
        for u in USERS:
            await conn.execute(
                "INSERT INTO users (id, username, password_hash) VALUES ($1, $1, 'x')", u
            )
            await conn.execute(
                "INSERT INTO devices (id, user_id, name, account_login, broker) "
                "VALUES ($1, $2, 'd', '1', 'b')",
                "d" + u,
                u,
            )
    ids = [f"P-{(i * 7919) % 100_003:06d}-{i}" for i in range(len(rows))]
    users = [USERS[u] for u, _, _ in rows]
    ends = [datetime.fromtimestamp((T0 + ms) / 1000, tz=UTC) for _, ms, _ in rows]
    rejected = [r for _, _, r in rows]
    await conn.execute(
        """
        INSERT INTO positions (id, user_id, device_id, symbol, side, state, origin, volume,
                               closed_at, updated_at, doc)
        SELECT id, u, 'd' || u, 'XAUUSD', 'buy',
               CASE WHEN r THEN 'rejected' ELSE 'closed' END, 'signal', 0.1,
               CASE WHEN r THEN NULL ELSE t END, t, jsonb_build_object('id', id)
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bool[]) AS x(id, u, t, r)
        """,
        ids,
        users,
        ends,
        rejected,
    )
    return sorted(zip(ends, ids, users, strict=True), reverse=True)


async def walk(
    conn: asyncpg.Connection, limit: int, user_id: str | None, *, bound: int
) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(bound):
        docs, cursor = await history_page(conn, user_id=user_id, cursor=cursor, limit=limit)
        page = [d["id"] for d in json.loads(docs)]
        assert len(page) <= limit
        seen += page
        if cursor is None:
            return seen
        assert len(page) == limit  # only a full page has a next one
    raise AssertionError(f"no end after {bound} pages")


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=positions_st, limit=st.integers(1, 40))
def test_every_position_exactly_once_in_order(pg_dsn: str, rows: list, limit: int) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        expected = await seed(conn, rows)
        bound = len(rows) // limit + 2
        assert await walk(conn, limit, None, bound=bound) == [i for _, i, _ in expected]
        mine = [i for _, i, u in expected if u == "u1"]
        assert await walk(conn, limit, "u1", bound=bound) == mine

    run(pg_dsn, body)


def test_before_ms_skips_what_the_cursor_reaches(pg_dsn: str) -> None:
    """The defect: 8,000 positions over 4 milliseconds, paged 1,000 at a time."""
    rows = [(0, i % 4, False) for i in range(8_000)]

    async def body(conn: asyncpg.Connection) -> tuple[int, int]:
        await seed(conn, rows)
        by_cursor = await walk(conn, 1_000, "u1", bound=10)
        by_time: list[str] = []
        before = None
        for _ in range(10):
            docs, _ = await history_page(conn, user_id="u1", before_ms=before, limit=1_000)
            page = json.loads(docs)
            if not page:
                break
            by_time += [d["id"] for d in page]
            end = await conn.fetchval(
                "SELECT (extract(epoch FROM closed_at) * 1000)::bigint FROM positions "
                "WHERE id = $1",
                page[-1]["id"],
            )
            before = end
        return len(set(by_cursor)), len(set(by_time))

    reached_by_cursor, reached_by_time = run(pg_dsn, body)
    assert reached_by_cursor == 8_000
    assert reached_by_time == 4 * 1_000  # one page per millisecond: the rest is unreachable


def test_the_pages_walk_an_index(pg_dsn: str) -> None:
    rows = [(i % 2, i % 50, False) for i in range(4_000)]

    async def body(conn: asyncpg.Connection) -> list[str]:
        await seed(conn, rows)
        await conn.execute("ANALYZE positions")
        await conn.execute("SET enable_seqscan = off")  # tiny tables: make the choice visible
        plans = []
        cursor = (datetime.fromtimestamp((T0 + 25) / 1000, tz=UTC), "P-050000")
        for filters, args in (
            (("user", "after"), ["u1", *cursor]),
            (("after",), list(cursor)),
        ):
            sql = _history_sql(filters)
            plan = await conn.fetch("EXPLAIN " + sql, 100, *args)
            plans.append("\n".join(r[0] for r in plan))
        return plans

    for plan in run(pg_dsn, body):
        assert "positions_history" in plan, plan
        assert "Sort" not in plan.split("Aggregate", 1)[1], plan  # the index gives the order
