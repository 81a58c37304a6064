"""Database: queries on the bridge, transactions on the asyncio side, clear errors."""

from __future__ import annotations

import asyncpg
import pytest
import trio

from persistence import Bridge, Database, is_unavailable, redact_dsn
from protocol.errors import StorageError

_USER = "INSERT INTO users (id, username, password_hash, settings) VALUES ($1, $2, 'h', $3)"


async def test_queries_and_jsonb_as_python_objects(db: Database) -> None:
    assert await db.execute(_USER, "u1", "ann", {"theme": "dark", "limits": [1, 2]}) == "INSERT 0 1"
    await db.executemany(_USER, [("u2", "bob", {}), ("u3", "cy", {"n": None})])
    rows = await db.fetch("SELECT id, settings FROM users ORDER BY id")
    assert [(r["id"], r["settings"]) for r in rows] == [
        ("u1", {"theme": "dark", "limits": [1, 2]}),
        ("u2", {}),
        ("u3", {"n": None}),
    ]
    row = await db.fetchrow("SELECT username, role FROM users WHERE id = $1", "u2")
    assert row is not None and tuple(row) == ("bob", "user")
    assert await db.fetchrow("SELECT 1 FROM users WHERE id = 'nobody'") is None
    assert await db.fetchval("SELECT count(*) FROM users") == 3


async def test_transactions_commit_roll_back_and_cancel(db: Database) -> None:
    async def two_users(conn: asyncpg.Connection) -> int:
        await conn.execute(_USER, "t1", "t1", {})
        await conn.execute(_USER, "t2", "t2", {})
        return 2

    assert await db.run_in_transaction(two_users) == 2

    async def fails_half_way(conn: asyncpg.Connection) -> None:
        await conn.execute(_USER, "t3", "t3", {})
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        await db.run_in_transaction(fails_half_way)

    async def slow(conn: asyncpg.Connection) -> None:
        await conn.execute(_USER, "t4", "t4", {})
        await conn.execute("SELECT pg_sleep(30)")

    with trio.move_on_after(0.3) as scope:
        await db.run_in_transaction(slow)
    assert scope.cancelled_caught
    ids = [r["id"] for r in await db.fetch("SELECT id FROM users ORDER BY id")]
    assert ids == ["t1", "t2"]  # t3 rolled back by the error, t4 by the cancellation
    assert await db.fetchval("SELECT 1") == 1  # and the pool is healthy


async def test_data_errors_pass_through_unchanged(db: Database) -> None:
    await db.execute(_USER, "u1", "ann", {})
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(_USER, "u2", "ann", {})
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE users SET role = 'root'")
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await db.fetch("SELEC 1")


async def test_is_alive(db: Database) -> None:
    assert await db.is_alive()


async def test_unreachable_server_is_a_clear_storage_error(bridge: Bridge) -> None:
    dsn = "postgresql://app:hunter2@/nowhere?host=/nonexistent-tripwire-socket-dir"
    started = trio.current_time()
    with pytest.raises(StorageError) as info:
        await Database.open(bridge, dsn, retry_for_s=0.5)
    assert trio.current_time() - started < 3
    assert info.value.details["attempts"] >= 2  # it did retry
    assert "hunter2" not in repr(info.value)
    assert info.value.details["dsn"] == redact_dsn(dsn)


async def test_storage_error_when_the_server_goes_away(private_pg, bridge: Bridge) -> None:
    db = await Database.open(bridge, private_pg.dsn)
    try:
        await trio.to_thread.run_sync(private_pg.server.stop)
        with pytest.raises(StorageError) as info:
            await db.fetchval("SELECT 1")
        assert info.value.__cause__ is not None
        assert not await db.is_alive()
        await trio.to_thread.run_sync(private_pg.server.restart)
        assert await db.fetchval("SELECT 1") == 1  # the pool reconnects by itself
        assert await db.is_alive()
    finally:
        await db.close()


def test_unavailable_classification() -> None:
    assert is_unavailable(ConnectionRefusedError())
    assert is_unavailable(TimeoutError())
    assert is_unavailable(asyncpg.exceptions.AdminShutdownError())
    assert is_unavailable(asyncpg.exceptions.CannotConnectNowError())
    assert is_unavailable(asyncpg.exceptions.TooManyConnectionsError())
    assert is_unavailable(asyncpg.exceptions.ConnectionDoesNotExistError())
    assert is_unavailable(
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed")
    )
    assert not is_unavailable(asyncpg.UniqueViolationError())
    assert not is_unavailable(
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    )
    assert not is_unavailable(ValueError())


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:pw@127.0.0.1/db") == "postgresql://u:***@127.0.0.1/db"
    assert (
        redact_dsn("postgresql://postgres@/db?host=/tmp/x")
        == "postgresql://postgres@/db?host=/tmp/x"
    )
