"""Client streams: snapshot then deltas; a slow client is dropped, the others keep up."""

from __future__ import annotations

import math
from types import SimpleNamespace

import trio
import trio.testing

from actors.config import NodeConfig
from actors.hub import ClientHub, Subscription
from protocol.client import PositionDelta, Snapshot
from protocol.errors import AuthError
from protocol.redirects import Moved
from tests.actors.test_commands import open_position


async def test_snapshot_then_coalesced_deltas_and_slow_client_dropped(
    harness, device, autojump_clock
) -> None:
    node = harness.node
    await device.connect()
    hub = node.hub
    fast, snap = await hub.subscribe("u1", ["positions", "alerts", "devices"])
    slow, _ = await hub.subscribe("u1", ["positions"])
    assert isinstance(snap, Snapshot) and snap.devices[0].connected
    received: list = []

    async def read_fast() -> None:
        while True:
            batch = await fast.buffer.get_batch()
            if not batch:
                return
            received.extend(batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_fast)
        pid = await open_position(harness, device)
        await trio.sleep(0.1)
        assert any(
            isinstance(m, PositionDelta) and m.position.id == pid and m.position.state == "open"
            for m in received
        )
        # Flood the slow client (it never reads) past its buffer, repeatedly.
        capacity = node.config.client_capacity
        for i in range(capacity * (node.config.client_max_overruns + 1)):
            slow.buffer.offer(
                ("x", i),
                PositionDelta(position=snap.positions[0]) if snap.positions else received[-1],
            )
        assert slow.dropped
        # The fast client is unaffected: a new change still reaches it at once.
        before = len(received)
        harness.quote(1944.0, 1944.3)
        await trio.sleep(0.1)
        assert len(received) > before
        nursery.cancel_scope.cancel()
    hub.unsubscribe(slow)
    assert hub.dropped == 1


def test_a_moved_user_s_streams_get_the_frame_once_and_an_earlier_end_stands() -> None:
    frame = Moved(url="ws://127.0.0.1:9/ws/client", partition=3, epoch=2)
    moved = Subscription("u1", ["positions"], capacity=8, max_overruns=1)
    moved.move(frame)
    moved.move(Moved(url=None, partition=3, retry_after_ms=500))  # the first answer stands
    moved.end(AuthError("disabled"))
    assert moved.ended.is_set() and moved.moved == frame and moved.ended_by is None

    ended = Subscription("u1", ["positions"], capacity=8, max_overruns=1)
    ended.end(AuthError("disabled"))
    ended.move(frame)  # already ending for another reason: it is not sent elsewhere
    assert ended.moved is None and ended.ended_by is not None


async def test_the_price_push_sets_no_timer_while_no_client_is_connected() -> None:
    """Idle, the push waits for a subscribe instead of waking every ``price_push_ms`` (that
    a subscribe wakes it is shown over real sockets: tests/e2e/test_ws_client.py)."""
    hub = ClientHub(SimpleNamespace(config=NodeConfig()))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.push_prices)
        await trio.testing.wait_all_tasks_blocked()
        assert trio.lowlevel.current_statistics().seconds_to_next_deadline == math.inf
        nursery.cancel_scope.cancel()
