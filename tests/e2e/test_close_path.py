"""The close path's last hop: a close command made by a quote is on the EA's socket when the
quote's hand-over returns, with no task to wake in between (``gateway.wsdirect``)."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import trio
import trio.testing
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, BytesMessage, Message, Request, TextMessage

from gateway.runtime import run
from protocol.codec import device_client_codec
from protocol.common import Side
from protocol.device import CloseCommand, HelloBody, PositionsSnapshot, TerminalPosition, Welcome
from protocol.feed import Quote
from protocol.signing import sign_hello
from tests.e2e.conftest import Engine, engine_settings

JSON = device_client_codec("json")


class RawEA:
    """An EA on a plain socket, read only when the test says so (no task reads it for us)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = WSConnection(ConnectionType.CLIENT)
        self.messages: list[object] = []
        # A blocking-free view of the same socket, for reading without a checkpoint.
        self.raw = socket.socket(fileno=os.dup(stream.socket.fileno()))

    async def send(self, event: object) -> None:
        await self.stream.send_all(self.conn.send(event))  # type: ignore[arg-type]

    async def send_frame(self, message: object) -> None:
        data = JSON.encode(message)
        await self.send(
            TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        )

    def take(self, data: bytes) -> None:
        self.conn.receive_data(data)
        for event in self.conn.events():
            if isinstance(event, AcceptConnection):
                self.messages.append(event)
            elif isinstance(event, Message):
                self.messages.append(JSON.decode(event.data))

    async def next(self) -> object:
        with trio.fail_after(10):
            while not self.messages:
                self.take(await self.stream.receive_some(65536))
        return self.messages.pop(0)

    def read_now(self) -> bytes:
        """What the kernel holds for us right now, without waiting (b"" if nothing)."""
        try:
            return self.raw.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b""


async def test_a_close_is_on_the_eas_socket_when_its_quote_is_handed_over(engine) -> None:
    at_once, later = await _close_after_a_quote(engine)
    assert at_once == [7] and later == []


async def test_without_the_direct_sockets_the_close_leaves_through_the_writer(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    settings = engine_settings(tmp_path, pg_dsn, ws_direct=False)
    ctx = (await nursery.start(run, settings)).gateway
    engine = Engine(ctx, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}")
    at_once, later = await _close_after_a_quote(engine)
    assert at_once == [] and later == [7]  # Quart's path: the writer task sends it


async def _close_after_a_quote(engine: Engine) -> tuple[list[int], list[int]]:
    """Tickets of the close commands on the EA's socket right after the quote's hand-over
    (no checkpoint since), and of those that arrive afterwards."""
    node = engine.node
    user_id, token = await engine.user("alice")
    device, secret = await engine.ctx.registry.register_device(user_id, "terminal")
    now = engine.ctx.clock.now_ms()
    node.offer_quotes([Quote(symbol="XAUUSD", bid=1950.0, ask=1950.3, time_ms=now)])
    port = int(engine.ws_url.rsplit(":", 1)[1])
    ea = RawEA(await trio.open_tcp_stream("127.0.0.1", port))
    try:
        await ea.send(
            Request(host="127.0.0.1", target="/ws/device", subprotocols=["tripwire.v1.json"])
        )
        assert isinstance(await ea.next(), AcceptConnection)
        body = HelloBody(ea_build="t", account_login="42", terminal_time_ms=now)
        hello = sign_hello(device.id, secret.encode(), body, now, secrets.token_urlsafe(18))
        await ea.send_frame(hello)
        assert isinstance(await ea.next(), Welcome)
        held = TerminalPosition(
            ticket=7,
            symbol="XAUUSD",
            side=Side.BUY,
            volume=0.1,
            open_price=1950.3,
            open_time_ms=now,
            sl=1945.0,
            tp=1960.0,
        )
        snapshot = PositionsSnapshot(time_ms=now, positions=[held])
        await ea.send_frame(snapshot)
        with trio.fail_after(10):  # listed, not adopted
            while not node.users.get(user_id) or not node.users[user_id].live_positions():
                await trio.sleep(0.02)
        [found] = node.users[user_id].live_positions()
        async with engine.client(token) as http:
            adopted = await http.post(f"/api/v1/positions/{found.id}/adopt")
            assert adopted.status_code == 200, adopted.text
        with trio.fail_after(10):  # adopted: armed
            while len(node.symbols["XAUUSD"].core) < 1:
                await trio.sleep(0.02)
        # Every actor back to waiting: the idle fast paths are open.
        await trio.testing.wait_all_tasks_blocked()
        assert ea.read_now() == b""
        node.offer_quotes(
            [Quote(symbol="XAUUSD", bid=1944.0, ask=1944.3, time_ms=engine.ctx.clock.now_ms())]
        )
        # No checkpoint since the hand-over: no other task of the engine has run.
        ea.take(ea.read_now())
        at_once = [m.ticket for m in ea.messages if isinstance(m, CloseCommand)]
        ea.messages.clear()
        later = []
        if not at_once:
            message = await ea.next()
            assert isinstance(message, CloseCommand)
            later.append(message.ticket)
        return at_once, later
    finally:
        ea.raw.close()
        await ea.stream.aclose()
