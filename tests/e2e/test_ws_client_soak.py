"""200 idle ``/ws/client`` connections at once: every one is served its snapshot and stays
connected while ``/healthz`` keeps answering 200, and after they close the engine lets go of
every task and object they held (their memory is given back to the allocator).

The 2,000-connection soak with memory per connection and latency is ``bench.soak_clients``.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from gateway.runtime import run
from protocol.client import Snapshot, Subscribe
from protocol.codec import client_client_codec
from tests.e2e.conftest import Engine, engine_settings

CLIENTS = 200
CODEC = client_client_codec("json")


@pytest.fixture
async def roomy_engine(nursery: trio.Nursery, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine whose per-address WebSocket limit lets all :data:`CLIENTS` in from loopback."""
    settings = engine_settings(tmp_path, pg_dsn, max_ws_per_address=CLIENTS + 10)
    ctx = (await nursery.start(run, settings)).gateway
    yield Engine(ctx, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}")


def live_objects() -> Counter[str]:
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


async def one_round(engine, http, token: str) -> tuple[Counter[str], list[int]]:
    """Open :data:`CLIENTS` connections, idle, close them; the objects alive while they were
    all open, and the ``/healthz`` statuses seen meanwhile."""
    hub = engine.node.hub
    opened = trio.Semaphore(0)
    closing = trio.Event()
    dropped: list[str] = []
    healthz: list[int] = []

    async def client(k: int) -> None:
        url = f"{engine.ws_url}/ws/client?token={token}"
        async with open_websocket_url(url, subprotocols=["tripwire.v1.json"]) as ws:
            await ws.send_message(CODEC.encode(Subscribe()))
            assert isinstance(CODEC.decode(await ws.get_message()), Snapshot)
            opened.release()
            async with trio.open_nursery() as idle:

                async def drain() -> None:
                    try:
                        while True:
                            await ws.get_message()
                    except ConnectionClosed as exc:
                        dropped.append(f"{k}: {exc.reason}")

                idle.start_soon(drain)
                await closing.wait()
                idle.cancel_scope.cancel()
            await ws.aclose()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for k in range(CLIENTS):
                nursery.start_soon(client, k)
            for _ in range(CLIENTS):
                await opened.acquire()
                if len(healthz) < CLIENTS // 4:  # asked while the others connect
                    healthz.append((await http.get("/healthz")).status_code)
            during = live_objects()
            for _ in range(20):  # and while they idle
                healthz.append((await http.get("/healthz")).status_code)
                await trio.sleep(0.05)
            assert hub.clients == CLIENTS and not dropped, dropped
            closing.set()
        while hub.clients:  # the server side notices each close
            await trio.sleep(0.05)
    return during, healthz


def tasks() -> int:
    """Every task of this trio run (the engine's and the test's)."""
    count, stack = 0, [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def test_idle_clients_stay_and_leave_nothing_behind(roomy_engine: Engine) -> None:
    engine = roomy_engine
    _, token = await engine.user("alice")
    async with engine.client() as http:
        assert (await http.get("/healthz")).status_code == 200
        idle_tasks = tasks()
        before = live_objects()
        during, healthz = await one_round(engine, http, token)
        assert set(healthz) == {200}
        # Hypercorn ends a closed WebSocket's tasks at its next ping tick (the engine pings
        # every 20 s): until then they hold what the connection held. Then they let go.
        with trio.fail_after(60):
            while tasks() > idle_tasks:
                await trio.sleep(0.5)
        after = live_objects()
    held = sum(during.values()) - sum(before.values())
    left = sum(after.values()) - sum(before.values())
    assert held > CLIENTS * 50, held  # what the connections held...
    assert left < held * 0.05, (left, held, (after - before).most_common(10))  # ...is gone
