"""The MT5 bridge follows ``moved``: to the node that serves its user, at once, with a new hello;
and not more than three times in a row (two real engines, the fake terminal process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.placement import Elsewhere
from protocol.codec import device_client_codec
from tests.e2e.conftest import Engine
from tests.e2e.nodes import PlacedAt, mirror_device, start_engine
from tests.fixtures.postgres import PgServer
from tripwire_ea.dispatch import Dispatcher
from tripwire_ea.session import Bridge
from tripwire_ea.terminal import Terminal
from tripwire_ea.window import CommandWindow


@pytest.fixture
def pg_dsn_b(pg_server: PgServer) -> Iterator[str]:
    dsn = pg_server.new_database()
    yield dsn
    pg_server.drop_database(dsn)


def _placed(engine: Engine) -> PlacedAt:
    ownership = engine.ctx.ownership
    assert isinstance(ownership, PlacedAt)
    return ownership


async def _two_nodes(
    nursery: trio.Nursery, pg_dsn: str, pg_dsn_b: str, tmp_path: Path
) -> tuple[Engine, Engine, str, str, str]:
    node_a = await start_engine(nursery, pg_dsn, tmp_path / "a")
    node_b = await start_engine(nursery, pg_dsn_b, tmp_path / "b")
    user_id, _ = await node_a.user("mt5-user")
    device, secret = await node_a.ctx.registry.register_device(user_id, "mt5")
    await mirror_device(node_a, node_b, user_id, device.id)
    return node_a, node_b, user_id, device.id, secret


def _bridge(
    mt5: Any, terminal: Any, tmp_path: Path, url: str, device_id: str, secret: str
) -> Bridge:
    codec = device_client_codec("json")
    term = Terminal(mt5, path=terminal[0].address)
    dispatcher = Dispatcher(term, CommandWindow(tmp_path / "w.json"), codec)
    return Bridge(url, device_id, secret.encode(), dispatcher, codec, max_backoff_s=1.0)


async def _until(condition: Any, seconds: float = 20.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.02)


async def test_the_bridge_follows_moved_to_the_node_that_serves_its_user(
    nursery: trio.Nursery, pg_dsn: str, pg_dsn_b: str, tmp_path: Path, mt5: Any, terminal: Any
) -> None:
    node_a, node_b, user_id, device_id, secret = await _two_nodes(
        nursery, pg_dsn, pg_dsn_b, tmp_path
    )
    _placed(node_a).placements[user_id] = Elsewhere(url=node_b.base_url, partition=8, epoch=3)
    home = f"{node_a.ws_url}/ws/device"
    bridge = _bridge(mt5, terminal, tmp_path, home, device_id, secret)
    async with trio.open_nursery() as inner:
        inner.start_soon(bridge.run)
        await _until(lambda: bridge.sessions == 1)
        inner.cancel_scope.cancel()
    assert node_a.ctx.counters.handshakes["moved"] == 1
    assert node_b.ctx.counters.handshakes["ok"] == 1
    assert bridge.next_url() == f"{node_b.ws_url}/ws/device"  # the session it ran
    assert bridge.redirects.hops == 0 and bridge.redirects.gave_up == 0


async def test_the_bridge_stops_following_after_three_hops_in_a_loop(
    nursery: trio.Nursery, pg_dsn: str, pg_dsn_b: str, tmp_path: Path, mt5: Any, terminal: Any
) -> None:
    node_a, node_b, user_id, device_id, secret = await _two_nodes(
        nursery, pg_dsn, pg_dsn_b, tmp_path
    )
    _placed(node_a).placements[user_id] = Elsewhere(url=node_b.base_url, partition=8, epoch=3)
    _placed(node_b).placements[user_id] = Elsewhere(url=node_a.base_url, partition=8, epoch=3)
    home = f"{node_a.ws_url}/ws/device"
    bridge = _bridge(mt5, terminal, tmp_path, home, device_id, secret)
    async with trio.open_nursery() as inner:
        inner.start_soon(bridge.run)
        await _until(lambda: bridge.redirects.gave_up == 1)
        inner.cancel_scope.cancel()
    moved = node_a.ctx.counters.handshakes["moved"] + node_b.ctx.counters.handshakes["moved"]
    assert moved == 4 and bridge.sessions == 0
    # The fourth was not followed: back to the configured URL, with the usual backoff.
    assert bridge.redirects.target == home
