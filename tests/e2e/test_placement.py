"""Routing over real sockets: a node answers for a user another node serves with ``moved`` (the
WebSockets, after authentication) or 307 (REST), and the clients follow to the other node."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from bench.ea_fleet import EaFleet, FleetDevice
from engine.instruments import DEFAULT_INSTRUMENTS
from gateway.placement import Elsewhere, Unowned
from protocol.client import Subscribe
from protocol.closecodes import CloseCode
from protocol.codec import client_client_codec, device_client_codec
from protocol.device import DeviceError, HelloBody
from protocol.redirects import Moved
from protocol.signing import sign_hello
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.conftest import Engine
from tests.e2e.nodes import PlacedAt, mirror_device, start_engine
from tests.fixtures.postgres import PgServer

JSON = device_client_codec("json")
CLIENT_JSON = client_client_codec("json")


@pytest.fixture
def pg_dsn_b(pg_server: PgServer) -> Iterator[str]:
    dsn = pg_server.new_database()
    yield dsn
    pg_server.drop_database(dsn)


def placed(engine: Engine) -> PlacedAt:
    ownership = engine.ctx.ownership
    assert isinstance(ownership, PlacedAt)
    return ownership


async def _device(engine: Engine, username: str = "xavier") -> tuple[str, str, str]:
    user_id, _ = await engine.user(username)
    device, secret = await engine.ctx.registry.register_device(user_id, "terminal")
    return user_id, device.id, secret


def _hello(engine: Engine, device_id: str, secret: str) -> str | bytes:
    now = engine.ctx.clock.now_ms()
    body = HelloBody(ea_build="t", account_login="42", terminal_time_ms=now)
    return JSON.encode(sign_hello(device_id, secret.encode(), body, now, secrets.token_urlsafe(18)))


async def _answer(url: str, frame: str | bytes, codec=JSON) -> tuple[object, int | None]:
    """Send one frame; the first decoded answer and the close code that followed it."""
    async with open_websocket_url(url, subprotocols=["tripwire.v1.json"]) as ws:
        await ws.send_message(frame)
        reply = codec.decode(await ws.get_message())
        with trio.fail_after(10):
            try:
                await ws.get_message()
            except ConnectionClosed as closed:
                return reply, closed.reason.code
    raise AssertionError("the server did not close")


@pytest.fixture
async def node_a(nursery: trio.Nursery, pg_dsn: str, tmp_path: Path) -> Engine:
    return await start_engine(nursery, pg_dsn, tmp_path / "a")


@pytest.mark.parametrize("direct", [True, False], ids=["wsproto", "quart"])
async def test_a_device_of_a_user_served_elsewhere_is_moved_after_its_hello(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path, direct: bool
) -> None:
    engine = await start_engine(nursery, pg_dsn, tmp_path, ws_direct=direct)
    user_id, device_id, secret = await _device(engine)
    placed(engine).placements[user_id] = Elsewhere(
        url="http://127.0.0.1:9999", partition=17, epoch=4
    )
    reply, code = await _answer(f"{engine.ws_url}/ws/device", _hello(engine, device_id, secret))
    assert reply == Moved(url="ws://127.0.0.1:9999/ws/device", partition=17, epoch=4)
    assert code == CloseCode.MOVED == 4301
    assert engine.ctx.counters.handshakes["moved"] == 1
    assert engine.ctx.node.devices.get(device_id) is None  # no session was opened here

    # A bad signature is refused as ever: placement is not told to strangers.
    reply, code = await _answer(
        f"{engine.ws_url}/ws/device", _hello(engine, device_id, "not-the-secret-0123456789")
    )
    assert isinstance(reply, DeviceError) and reply.code == "bad_signature"
    assert code == CloseCode.POLICY_VIOLATION
    assert engine.ctx.counters.handshakes["moved"] == 1


async def test_a_device_of_an_unowned_user_is_told_to_wait(node_a: Engine) -> None:
    user_id, device_id, secret = await _device(node_a)
    placed(node_a).placements[user_id] = Unowned(partition=5, retry_after_ms=750)
    reply, code = await _answer(f"{node_a.ws_url}/ws/device", _hello(node_a, device_id, secret))
    assert reply == Moved(url=None, partition=5, epoch=0, retry_after_ms=750)
    assert code == CloseCode.MOVED


async def test_a_local_device_is_welcomed_as_on_one_node(node_a: Engine) -> None:
    user_id, device_id, secret = await _device(node_a)
    placed(node_a).placements["somebody-else"] = Unowned(partition=1, retry_after_ms=1)
    ea = SimulatedEA(f"{node_a.ws_url}/ws/device", device_id, secret, _terminal(device_id))
    await nursery_run(ea)
    assert ea.welcome is not None and ea.moved == [] and ea.connections == 1
    assert user_id in placed(node_a).asked


async def test_a_client_of_a_user_served_elsewhere_is_moved_after_its_token(
    node_a: Engine,
) -> None:
    user_id, token = await node_a.user("carla")
    placed(node_a).placements[user_id] = Elsewhere(
        url="https://node-2.example.com/", partition=3, epoch=9
    )
    subscribe = CLIENT_JSON.encode(Subscribe(channels=["positions"]))
    url = f"{node_a.ws_url}/ws/client?token={token}"
    reply, code = await _answer(url, subscribe, CLIENT_JSON)
    assert reply == Moved(url="wss://node-2.example.com/ws/client", partition=3, epoch=9)
    assert code == CloseCode.MOVED
    # Unowned: no URL, a wait.
    placed(node_a).placements[user_id] = Unowned(partition=3, retry_after_ms=2_000)
    reply, code = await _answer(url, subscribe, CLIENT_JSON)
    assert reply == Moved(url=None, partition=3, retry_after_ms=2_000)
    # A bad token: unauthorized, as ever.
    bad = f"{node_a.ws_url}/ws/client?token=not-a-token"
    async with open_websocket_url(bad, subprotocols=["tripwire.v1.json"]) as ws:
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
            # Closed before any frame (the token did not verify): the send may already fail.
            await ws.send_message(subscribe)
            await ws.get_message()
    assert closed.value.reason.code == CloseCode.POLICY_VIOLATION


async def test_rest_writes_redirect_with_307_and_reads_are_served_here(node_a: Engine) -> None:
    user_id, token = await node_a.user("dora")
    placed(node_a).placements[user_id] = Elsewhere(
        url="http://127.0.0.1:9999", partition=21, epoch=2
    )
    path = "/api/v1/signals/strat-1/sig-1/1/decision?trace=a%20b"
    async with node_a.client(token) as http:
        answer = await http.post(path, json={"decision": "approve"})
        assert answer.status_code == 307
        assert answer.headers["Location"] == "http://127.0.0.1:9999" + path
        assert answer.json()["details"] == {"partition": 21, "epoch": 2}
        assert (await http.put("/api/v1/me/settings", json={})).status_code == 307
        open_positions = await http.get("/api/v1/positions?state=open")
        assert open_positions.status_code == 307
        assert open_positions.headers["Location"].endswith("/api/v1/positions?state=open")
        # Reads Postgres answers are served by any node.
        assert (await http.get("/api/v1/positions?state=closed")).status_code == 200
        assert (await http.get("/api/v1/approvals")).status_code == 200
        assert (await http.get("/api/v1/me/settings")).status_code == 200
        # Unowned: 503 with Retry-After.
        placed(node_a).placements[user_id] = Unowned(partition=21, retry_after_ms=1_500)
        waiting = await http.post(path, json={"decision": "approve"})
        assert waiting.status_code == 503 and waiting.headers["Retry-After"] == "2"
        assert waiting.json()["code"] == "unowned"
    # No token: 401, nothing about placement.
    async with node_a.client() as anonymous:
        refused = await anonymous.post(path, json={"decision": "approve"})
        assert refused.status_code == 401 and "Location" not in refused.headers


async def test_an_admin_disabling_a_user_served_elsewhere_is_redirected(node_a: Engine) -> None:
    user_id, _ = await node_a.user("erin")
    admin = await node_a.login("admin", "admin-password-0123")
    placed(node_a).placements[user_id] = Elsewhere(
        url="http://127.0.0.1:9999", partition=1, epoch=1
    )
    async with node_a.client(admin) as http:
        answer = await http.post(f"/api/v1/users/{user_id}/disable")
    assert answer.status_code == 307
    assert answer.headers["Location"] == f"http://127.0.0.1:9999/api/v1/users/{user_id}/disable"
    assert node_a.ctx.registry.is_active(user_id)


def _terminal(device_id: str) -> PaperTerminal:
    return PaperTerminal(DEFAULT_INSTRUMENTS, lambda symbol: None, PaperConfig(), login=device_id)


async def nursery_run(ea: SimulatedEA) -> None:
    """Run ``ea`` until it is welcomed (or gives up), then close it."""
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(ea.run)
        nursery.cancel_scope.cancel()


async def test_the_simulated_ea_follows_moved_to_the_node_that_serves_it(
    nursery: trio.Nursery, node_a: Engine, pg_dsn_b: str, tmp_path: Path
) -> None:
    node_b = await start_engine(nursery, pg_dsn_b, tmp_path / "b")
    user_id, device_id, secret = await _device(node_a)
    await mirror_device(node_a, node_b, user_id, device_id)
    placed(node_a).placements[user_id] = Elsewhere(url=node_b.base_url, partition=8, epoch=3)
    ea = SimulatedEA(f"{node_a.ws_url}/ws/device", device_id, secret, _terminal(device_id))
    await nursery_run(ea)
    assert ea.moved == [Moved(url=f"{node_b.ws_url}/ws/device", partition=8, epoch=3)]
    assert ea.welcome is not None and ea.welcomed_at == f"{node_b.ws_url}/ws/device"
    assert ea.connections == 2 and not ea.gave_up
    assert node_b.ctx.counters.handshakes["ok"] == 1
    assert node_a.ctx.counters.handshakes["moved"] == 1


async def test_the_simulated_ea_gives_up_after_three_hops_in_a_loop(
    nursery: trio.Nursery, node_a: Engine, pg_dsn_b: str, tmp_path: Path
) -> None:
    node_b = await start_engine(nursery, pg_dsn_b, tmp_path / "b")
    user_id, device_id, secret = await _device(node_a)
    await mirror_device(node_a, node_b, user_id, device_id)
    # Each node believes the other serves the user: a loop.
    placed(node_a).placements[user_id] = Elsewhere(url=node_b.base_url, partition=8, epoch=3)
    placed(node_b).placements[user_id] = Elsewhere(url=node_a.base_url, partition=8, epoch=3)
    ea = SimulatedEA(f"{node_a.ws_url}/ws/device", device_id, secret, _terminal(device_id))
    await nursery_run(ea)
    assert ea.gave_up and ea.welcome is None
    assert ea.connections == 4 and len(ea.moved) == 4  # three followed, the fourth refused
    assert node_a.ctx.counters.handshakes["moved"] == 2
    assert node_b.ctx.counters.handshakes["moved"] == 2


async def test_an_unowned_answer_is_waited_for_then_the_configured_url_is_tried_again(
    node_a: Engine,
) -> None:
    user_id, device_id, secret = await _device(node_a)
    ownership = placed(node_a)
    ownership.placements[user_id] = Unowned(partition=2, retry_after_ms=200)
    ea = SimulatedEA(f"{node_a.ws_url}/ws/device", device_id, secret, _terminal(device_id))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(nursery_run, ea)
        with trio.fail_after(10):
            while not ea.moved:
                await trio.sleep(0.01)
        del ownership.placements[user_id]  # a node claimed the partition: this one
        with trio.fail_after(10):
            await ea.connected.wait()
    assert ea.welcomed_at == f"{node_a.ws_url}/ws/device"
    assert ea.moved[0] == Moved(url=None, partition=2, retry_after_ms=200)
    assert ea.connections >= 2


async def test_the_harness_devices_follow_moved(
    nursery: trio.Nursery, node_a: Engine, pg_dsn_b: str, tmp_path: Path
) -> None:
    node_b = await start_engine(nursery, pg_dsn_b, tmp_path / "b")
    user_id, device_id, secret = await _device(node_a)
    await mirror_device(node_a, node_b, user_id, device_id)
    placed(node_a).placements[user_id] = Elsewhere(url=node_b.base_url, partition=8, epoch=3)
    welcomes: list[tuple[str, str]] = []
    device = FleetDevice(
        device_id, secret.encode(), _terminal(device_id), [f"{node_a.ws_url}/ws/device"]
    )
    fleet = EaFleet(
        [device],
        on_command=lambda *_: None,
        on_welcome=lambda device, url: welcomes.append((device, url)),
    )
    ready = threading.Event()
    stop_read, stop_write = os.pipe()
    try:
        async with trio.open_nursery() as inner:
            inner.start_soon(trio.to_thread.run_sync, fleet.run, ready.set, stop_read)
            with trio.fail_after(20):
                while not ready.is_set():
                    await trio.sleep(0.01)
            os.close(stop_write)  # the fleet's loop ends when its stop pipe does
            stop_write = -1
    finally:
        os.close(stop_read)
        if stop_write >= 0:
            os.close(stop_write)
    assert welcomes == [(device_id, f"{node_b.ws_url}/ws/device")] and fleet.gone == []
    assert node_b.ctx.counters.handshakes["ok"] == 1
