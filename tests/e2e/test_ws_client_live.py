"""``/ws/client`` keeps the account and the devices live, not only the snapshot's figures.

A position is opened and closed by hand through the REST API on a paper device; the client's
stream then carries an ``account`` delta whose balance is the old balance plus the realised
P&L (the figure the device reports), and ``device`` deltas whose ``last_seen_ms`` moves with
the device's heartbeats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from gateway.runtime import run
from protocol.client import (
    AccountDelta,
    DeviceStatus,
    PositionDelta,
    Snapshot,
    Subscribe,
)
from protocol.codec import client_client_codec
from tests.e2e.conftest import Engine, engine_settings
from tests.e2e.helpers import (
    GOLD_ASK,
    GOLD_BID,
    decision_url,
    make_signal,
    paper_device,
    post_signal,
    quote,
    wait_for,
)

CODEC = client_client_codec("json")
SUBPROTOCOLS = ["tripwire.v1.json"]


async def _next(ws: WebSocketConnection, kind: type, check: Any = lambda m: True) -> Any:
    """The next message of ``kind`` passing ``check`` (others are skipped)."""
    while True:
        message = CODEC.decode(await ws.get_message())
        if isinstance(message, kind) and check(message):
            return message


async def test_the_account_and_device_stream_live(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    settings = engine_settings(tmp_path, pg_dsn, device_heartbeat_s=1, device_stale_after_s=3)
    ctx = (await nursery.start(run, settings)).gateway
    engine = Engine(ctx, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}")
    alice, token = await engine.user("alice")
    device_id, terminal = await paper_device(engine, nursery, alice)
    quote(engine)
    core = engine.node.users[alice].core
    await wait_for(lambda: core.balance is not None)
    start = core.balance
    url = f"{engine.ws_url}/ws/client?token={token}"
    async with open_websocket_url(url, subprotocols=SUBPROTOCOLS) as ws:
        await ws.send_message(CODEC.encode(Subscribe(channels=["positions", "devices"])))
        snapshot = CODEC.decode(await ws.get_message())
        assert isinstance(snapshot, Snapshot)
        assert snapshot.account is not None and snapshot.account.balance == start
        (device,) = snapshot.devices
        first_seen = device.last_seen_ms
        assert first_seen is not None

        with trio.fail_after(20):
            # The device is heard from every second: its view moves on the stream.
            later = await _next(
                ws, DeviceStatus, lambda m: (m.device.last_seen_ms or 0) > first_seen
            )
            assert later.device.device_id == device_id and later.device.connected

            signal = make_signal([alice])
            async with engine.client() as strategy:
                assert (await post_signal(strategy, signal)).status_code == 201
            async with engine.client(token) as http:
                approved = await http.post(decision_url(signal), json={"decision": "approve"})
                assert approved.status_code == 201, approved.text
                position_id = approved.json()["approval"]["position_id"]
                await _next(
                    ws,
                    PositionDelta,
                    lambda m: m.position.id == position_id and m.position.state == "open",
                )
                quote(engine, bid=GOLD_BID - 3, ask=GOLD_ASK - 3)  # a loss, above the SL
                closing = await http.post(f"/api/v1/positions/{position_id}/close")
                assert closing.status_code == 202, closing.text
            closed = await _next(
                ws,
                PositionDelta,
                lambda m: m.position.id == position_id and m.position.state == "closed",
            )
            realised = closed.position.pl
            assert realised is not None and realised < 0
            # The paper account charges 7.00 a lot round turn, half on each deal (rounded to
            # the cent); held less than a day, no swap.
            commission = -2 * round(3.5 * closed.position.volume, 2)
            assert (closed.position.commission, closed.position.swap) == (commission, 0.0)
            net = closed.position.net_pl
            assert net == round(realised + commission, 2)
            # The device's next account report carries the new balance to the stream: the
            # trade's net (its P&L and its commission), not the price P&L alone.
            account = await _next(
                ws, AccountDelta, lambda m: m.account.balance == round(start + net, 2)
            )
    assert account.account.balance == round(terminal.balance, 2)
    assert account.account.user_id == alice
    assert account.account.equity == core.equity
