"""Migrations: in order, once, under a lock, refusing edited files; and the schema itself."""

from __future__ import annotations

import dataclasses

import asyncpg
import pytest
import trio

from engine.lifecycle import PositionState
from persistence import Bridge, Database, migrate, migration_status, open_database
from persistence.migrator import Migration, MigrationStatus, load_migrations
from protocol.common import Origin, Side
from protocol.errors import ConfigError


def _extra(version: int, sql: str, name: str = "extra") -> Migration:
    return Migration(version=version, name=name, sql=sql, checksum=f"test-{version}-{hash(sql)}")


async def test_applies_in_order_once(bridge: Bridge, pg_dsn_empty: str) -> None:
    async with open_database(bridge, pg_dsn_empty) as db:
        shipped = load_migrations()
        expected = MigrationStatus(applied=[], pending=[m.version for m in shipped])
        assert await migration_status(db) == expected
        assert await migrate(db) == [m.version for m in shipped]
        assert await migrate(db) == []  # idempotent
        rows = await db.fetch("SELECT version, name, checksum FROM schema_version ORDER BY 1")
        assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
            (m.version, m.name, m.checksum) for m in shipped
        ]
        later = [*shipped, _extra(len(shipped) + 1, "CREATE TABLE later (x int)")]
        assert await migrate(db, later) == [len(shipped) + 1]
        assert (await migration_status(db, later)).pending == []


async def test_an_edited_applied_file_is_refused(db: Database) -> None:
    shipped = load_migrations()
    edited = [dataclasses.replace(shipped[0], sql=shipped[0].sql + "\n-- edited", checksum="x")]
    with pytest.raises(ConfigError, match="changed after it was applied"):
        await migrate(db, [*edited, _extra(len(shipped) + 1, "CREATE TABLE never (x int)")])
    assert await db.fetchval("SELECT to_regclass('never')") is None  # nothing ran
    with pytest.raises(ConfigError):
        await migration_status(db, edited)


async def test_a_database_ahead_of_the_build_is_refused(db: Database) -> None:
    await db.execute("INSERT INTO schema_version (version, name, checksum) VALUES (999, 'f', 'c')")
    with pytest.raises(ConfigError, match="does not know"):
        await migrate(db)


async def test_a_failing_migration_leaves_the_previous_version(db: Database) -> None:
    shipped = load_migrations()
    broken = _extra(len(shipped) + 1, "CREATE TABLE half (x int); SELECT * FROM no_such_table;")
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(db, [*shipped, broken])
    assert await db.fetchval("SELECT max(version) FROM schema_version") == len(shipped)
    assert await db.fetchval("SELECT to_regclass('half')") is None


async def test_concurrent_migrators_do_not_race(bridge: Bridge, pg_dsn_empty: str) -> None:
    # Each migrator has its own pool, as separate engine processes would. The slow extra
    # migration keeps the lock held while the others queue for it.
    shipped = load_migrations()
    slow = _extra(len(shipped) + 1, "SELECT pg_sleep(0.2); CREATE TABLE slow (x int)")
    todo = [*shipped, slow]
    results: list[list[int]] = []

    async def one() -> None:
        async with open_database(bridge, pg_dsn_empty) as db:
            results.append(await migrate(db, todo))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
    everything = [m.version for m in todo]
    assert sorted(results, key=len) == [[], [], [], everything]
    async with open_database(bridge, pg_dsn_empty) as db:
        assert await db.fetchval("SELECT count(*) FROM schema_version") == len(todo)


def test_shipped_files_are_numbered_without_gaps() -> None:
    shipped = load_migrations()
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
    assert all(len(m.checksum) == 64 for m in shipped)


async def test_schema_accepts_every_engine_enum_value_and_nothing_else(db: Database) -> None:
    await db.execute("INSERT INTO users (id, username, password_hash) VALUES ('u', 'u', 'h')")
    await db.execute(
        "INSERT INTO devices (id, user_id, name, account_login, broker)"
        " VALUES ('d', 'u', 'n', '1', 'b')"
    )
    insert = (
        "INSERT INTO positions (id, user_id, device_id, symbol, side, state, origin, volume)"
        " VALUES ($1, 'u', 'd', 'XAUUSD', $2, $3, $4, 0.1)"
    )
    n = 0
    for side in Side:
        for state in PositionState:
            for origin in Origin:
                n += 1
                await db.execute(insert, f"p{n}", side.value, state.value, origin.value)
    for bad in [("up", "open", "signal"), ("buy", "lost", "signal"), ("buy", "open", "magic")]:
        with pytest.raises(asyncpg.CheckViolationError):
            await db.execute(insert, "bad", *bad)


async def test_every_listed_query_has_its_index(db: Database) -> None:
    rows = await db.fetch("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'")
    defs = {r["indexdef"].split(" USING btree ")[1] for r in rows}
    for expected in [
        "(username)",
        "(user_id, decided_at)",
        "(user_id, strategy_id, signal_id)",
        "(received_at)",
        "(user_id, state)",
        "(user_id, closed_at DESC)",
        "(device_id, state)",
        "(position_id)",
        "(device_id, deadline_at) WHERE (acked_at IS NULL)",
        "(device_id, created_at DESC)",
        "(actor_id, at DESC)",
        "(target_type, target_id)",
        "(user_id, at DESC)",
        "(first_seq)",
        "(last_seq)",
        "(device_id, created_at)",
    ]:
        assert expected in defs, expected


async def test_foreign_keys_hold(db: Database) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute(
            "INSERT INTO devices (id, user_id, name, account_login, broker)"
            " VALUES ('d', 'ghost', 'n', '1', 'b')"
        )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute(
            "INSERT INTO approvals (id, user_id, strategy_id, signal_id, signal_version, decision)"
            " VALUES ('a', 'ghost', 's', 'x', 1, 'approve')"
        )
