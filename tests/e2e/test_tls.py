"""The engine on TLS (``TRIPWIRE_TLS_CERT``/``TRIPWIRE_TLS_KEY``): REST over https, and the tick
path over wss end to end.

A test CA (trustme) signs the engine's certificate for 127.0.0.1; every client trusts that CA
only. ``/ws/feed`` and ``/ws/device`` are served by ``gateway.wsdirect`` on the TLS stream
(no socket to read or write directly there: the session's writer sends, a read is trio's), and
REST by Hypercorn behind the same listener. A quote through the position's stop loss comes in
over wss, its close goes out over wss and the EA's ack comes back: the position is CLOSED.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
import trustme
from trio_websocket import open_websocket_url

from gateway.runtime import run
from protocol.device import CloseCommand
from protocol.feed import Quote, QuoteBatch
from tests.e2e.conftest import FEED_TOKEN, Engine, engine_settings
from tests.e2e.helpers import GOLD_ASK, GOLD_BID, wait_for
from tests.e2e.test_fills import World, connect, open_position


async def test_rest_over_https_and_the_tick_path_over_wss(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    settings = engine_settings(tmp_path, pg_dsn, tls_cert=str(cert), tls_key=str(key))
    services = await nursery.start(run, settings)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    port = settings.port
    engine = Engine(
        services.gateway,
        f"https://127.0.0.1:{port}",
        f"wss://127.0.0.1:{port}",
        services,
        verify=trusting,
    )

    # REST: https with the engine's certificate; a client that does not trust it refuses.
    user_id, token = await engine.user("tls-user")
    async with engine.client(token) as http:
        assert (await http.get("/api/v1/auth/me")).json()["username"] == "tls-user"
    async with httpx.AsyncClient(base_url=engine.base_url, timeout=10) as untrusting:
        with pytest.raises(httpx.ConnectError):
            await untrusting.get("/healthz")
    # A plain-text upgrade on the TLS port (ws:// for wss://) is closed at once: no session,
    # and no connection held until a handshake timeout.
    plain = await trio.open_tcp_stream("127.0.0.1", port)
    await plain.send_all(
        b"GET /ws/device HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(5):
        assert await plain.receive_some(1024) == b""
    await plain.aclose()

    device, secret = await engine.ctx.registry.register_device(user_id, "tls-terminal")
    world = World()
    ea = await connect(
        engine, nursery, device.id, secret, world.terminal, user_id, ssl_context=trusting
    )
    feed_url = f"{engine.ws_url}/ws/feed?token={FEED_TOKEN}"
    async with open_websocket_url(
        feed_url, ssl_context=trusting, subprotocols=["tripwire.v1.msgpack"]
    ) as feed:

        async def send(bid: float) -> None:
            now = engine.ctx.clock.now_ms()
            ask = bid + GOLD_ASK - GOLD_BID
            quote = Quote(symbol="XAUUSD", bid=bid, ask=ask, time_ms=now)
            batch = QuoteBatch(quotes=[quote], sent_ms=now)
            await feed.send_message(msgspec.msgpack.encode(batch))

        await send(GOLD_BID)
        await wait_for(lambda: engine.node.symbol("XAUUSD") is not None)
        status, pid = await open_position(engine, token, user_id)
        assert status == 201, pid
        await wait_for(lambda: world.terminal.positions)
        await wait_for(lambda: engine.node.users[user_id].core.positions[pid].state.value == "open")
        world.prices["XAUUSD"] = (GOLD_BID - 6, GOLD_ASK - 6)
        await send(GOLD_BID - 6)  # through the SL (5 below the entry), over wss
        await wait_for(lambda: any(isinstance(c, CloseCommand) for c in ea.commands))

    def closed() -> bool:
        core = engine.node.users[user_id].core
        p = core.positions.get(pid) or core.recent_closed.get(pid)
        return p is not None and p.state.value == "closed"

    await wait_for(closed)  # the EA's ack came back over wss
    assert not world.terminal.positions
    assert ea.bad_signatures == 0
