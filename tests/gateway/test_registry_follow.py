"""Two registries on one database (two nodes of a cluster): what one writes, the other, running
``Registry.follow``, serves within a bounded wait. So does a change made by ``tripwire admin``
in its own process, and a change whose notification was lost (the listening connection killed):
the full reload after reconnecting finds it."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from engine.sizing import UserSettings
from gateway.registry import Registry
from persistence import Bridge, Database, open_database
from persistence.listener import LISTENER_APPLICATION, listen
from protocol.errors import Conflict, StorageError


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``check()`` holds (failing after ``timeout_s``)."""
    with trio.fail_after(timeout_s):
        while not check():
            await trio.sleep(0.01)


@pytest.fixture
async def other_db(bridge: Bridge, pg_dsn: str) -> AsyncIterator[Database]:
    """A second pool on the same database: the other node's."""
    async with open_database(bridge, pg_dsn, retry_for_s=5) as opened:
        yield opened


@pytest.fixture
async def nodes(
    db: Database, other_db: Database, nursery: trio.Nursery
) -> tuple[Registry, Registry]:
    """Node A (writes) and node B (follows), both loaded."""
    a, b = Registry(db), Registry(other_db)
    await a.load()
    await b.load()
    await nursery.start(b.follow)
    return a, b


async def test_a_revoked_device_is_refused_by_the_other_node(
    nodes: tuple[Registry, Registry],
) -> None:
    a, b = nodes
    user = await a.create_user("alice", "password-0123")
    device, secret = await a.register_device(user.id, "MT5")
    await eventually(lambda: b.device_secrets(device.id) == [secret.encode()])
    assert b.device_owner(device.id) == user.id and b.devices_of(user.id)[0].name == "MT5"

    await a.revoke(device.id)
    await eventually(lambda: b.device_secrets(device.id) == [])
    assert b.devices[device.id].revoked and b.device_owner(device.id) is None


async def test_a_rotation_is_seen_with_the_old_secret_in_its_grace(
    nodes: tuple[Registry, Registry],
) -> None:
    a, b = nodes
    user = await a.create_user("alice", "password-0123")
    device, old = await a.register_device(user.id, "MT5")
    new = await a.rotate_secret(device.id, grace_s=3600)
    await eventually(lambda: len(b.device_secrets(device.id)) == 2)
    assert b.device_secrets(device.id) == a.device_secrets(device.id)
    assert b.device_secrets(device.id) == [old.encode(), new.encode()]


async def test_a_disabled_user_and_new_settings_reach_the_other_node(
    nodes: tuple[Registry, Registry],
) -> None:
    a, b = nodes
    user = await a.create_user("bob", "password-0123")
    device, _ = await a.register_device(user.id, "MT5")
    await eventually(lambda: b.is_active(user.id) and device.id in b.devices)
    assert await b.authenticate("bob", "password-0123") is not None

    await a.set_disabled(user.id, True)
    await eventually(lambda: not b.is_active(user.id))
    assert b.device_owner(device.id) is None and b.device_secrets(device.id) == []
    assert await b.authenticate("bob", "password-0123") is None

    settings = UserSettings(risk_percent=2.5, max_delay_ms=9_000)
    await a.update_settings(user.id, settings)
    await eventually(lambda: b.user_settings(user.id) == settings)

    await a.set_disabled(user.id, False)
    await eventually(lambda: b.is_active(user.id))
    assert b.user_settings(user.id) == settings  # the row re-read whole, settings kept


async def test_a_name_or_id_taken_on_another_node_is_a_conflict(
    db: Database, other_db: Database
) -> None:
    # B does not follow: it has not heard of A's writes, Postgres's unique keys still hold.
    a, b = Registry(db), Registry(other_db)
    user = await a.create_user("carol", "password-0123")
    device, _ = await a.register_device(user.id, "MT5")
    await b.load()
    await a.create_user("dave", "password-0123")
    with pytest.raises(Conflict):
        await b.create_user("Dave", "password-0123")
    with pytest.raises(Conflict):
        await a.register_device(user.id, "again", device_id=device.id)
    b.devices.pop(device.id)
    with pytest.raises(Conflict):
        await b.register_device(user.id, "again", device_id=device.id)


async def test_one_name_created_on_two_nodes_at_once_is_created_once(
    db: Database, other_db: Database
) -> None:
    a, b = Registry(db), Registry(other_db)
    outcomes: list[str] = []

    async def create(registry: Registry, name: str) -> None:
        try:
            outcomes.append((await registry.create_user(name, "password-0123")).id)
        except Conflict:
            outcomes.append("conflict")

    for n in range(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(create, a, f"zed{n}")
            nursery.start_soon(create, b, f"ZED{n}")
    assert sorted(outcomes).count("conflict") == 5
    names = await db.fetchval("SELECT count(*) FROM users WHERE username ILIKE 'zed%'")
    assert names == 5


async def test_a_change_made_while_not_listening_is_found_by_the_full_reload(
    nodes: tuple[Registry, Registry], db: Database
) -> None:
    a, b = nodes
    user = await a.create_user("erin", "password-0123")
    device, _ = await a.register_device(user.id, "MT5")
    await eventually(lambda: device.id in b.devices)
    loads = b.loads
    # A revocation whose notification B never gets: written without one, as a change sent
    # while B's connection was down would be lost. Then B's listening connection dies.
    await db.execute("UPDATE devices SET revoked_at = now() WHERE id = $1", device.id)
    await db.execute("UPDATE users SET disabled_at = now() WHERE id = $1", user.id)
    assert b.device_secrets(device.id) != []
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1 AND datname = current_database()",
        LISTENER_APPLICATION,
    )
    assert killed == 1
    await eventually(lambda: b.loads > loads)
    assert b.device_secrets(device.id) == [] and not b.is_active(user.id)
    # And it listens again: a change after the reconnection arrives as a notification.
    refreshed = b.refreshed
    other = await a.create_user("frank", "password-0123")
    await eventually(lambda: b.is_active(other.id))
    assert b.refreshed > refreshed


async def test_the_admin_command_reaches_a_running_node(
    nodes: tuple[Registry, Registry], pg_dsn: str, tmp_path: Path
) -> None:
    a, b = nodes
    user = await a.create_user("gina", "password-0123")
    device, _ = await a.register_device(user.id, "MT5")
    await eventually(lambda: device.id in b.devices)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    env.update(
        DATABASE_URL=pg_dsn,
        PYTHONPATH=os.pathsep.join(sys.path),
        TRIPWIRE_STATE_DIR=str(tmp_path / "state"),
    )

    async def admin(*args: str) -> str:
        done = await trio.run_process(
            [sys.executable, "-m", "gateway.cli", *args],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return done.stdout.decode()

    await admin("device", "revoke", device.id)
    await eventually(lambda: b.device_secrets(device.id) == [])
    await admin("user", "disable", "gina")
    await eventually(lambda: not b.is_active(user.id))
    added = await admin("device", "add", "gina", "second")
    device_id = added.split()[1]
    await eventually(lambda: device_id in b.devices)
    assert b.devices[device_id].user_id == user.id


async def test_notifications_lost_to_a_full_buffer_are_reported(db: Database) -> None:
    async with listen(db, "tripwire_test_channel", buffer=2) as notes:
        for n in range(3):
            await db.execute("SELECT pg_notify('tripwire_test_channel', $1)", str(n))
        await eventually(lambda: notes.lost)
        with pytest.raises(StorageError):
            await notes.receive()


async def test_notifications_arrive_in_commit_order_and_only_when_committed(
    db: Database,
) -> None:
    async with listen(db, "tripwire_test_channel") as notes:

        async def rolled_back(conn: object) -> None:
            await conn.execute("SELECT pg_notify('tripwire_test_channel', 'never')")  # type: ignore[attr-defined]
            raise RuntimeError("roll back")

        with pytest.raises(RuntimeError):
            await db.run_in_transaction(rolled_back)
        for n in range(3):
            await db.execute("SELECT pg_notify('tripwire_test_channel', $1)", str(n))
        with trio.fail_after(10):
            assert [await notes.receive() for _ in range(3)] == ["0", "1", "2"]
        assert notes.received == 3


async def test_a_revoke_or_disable_made_elsewhere_reaches_the_handler_once(
    db: Database, other_db: Database
) -> None:
    """What the node closes on (``gateway.access``): a device revoked and a user disabled by
    another writer, through a notification or through the full reload, each reported once;
    other changes (a rotation, an enable) are not."""
    a, b = Registry(db), Registry(other_db)
    await a.load()
    user = await a.create_user("carol", "password-0123")
    device, _ = await a.register_device(user.id, "MT5")
    spare, _ = await a.register_device(user.id, "MT4")
    await b.load()
    ended: list[tuple[str, str]] = []

    async def handler(kind: str, key: str) -> None:
        ended.append((kind, key))

    b.on_access_ended(handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(b.follow)
        await a.rotate_secret(device.id, grace_s=60)
        await a.revoke(device.id)
        await eventually(lambda: bool(ended))
        await a.set_disabled(user.id, True)
        await eventually(lambda: len(ended) == 2)
        await a.set_disabled(user.id, False)
        await eventually(lambda: not b.users[user.id].disabled)
        nursery.cancel_scope.cancel()
    assert ended == [("device", device.id), ("user", user.id)]

    await a.revoke(spare.id)  # B is not listening: its full reload finds it
    await a.set_disabled(user.id, True)
    await b.load()
    assert ended[2:] == [("user", user.id), ("device", spare.id)]
    await b.load()  # nothing changed since: nothing reported again
    assert len(ended) == 4
