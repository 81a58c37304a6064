"""``/ws/device`` over real sockets: the signed handshake, hostile input, sessions, commands."""

from __future__ import annotations

import secrets

import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from actors.messages import DecideSignal, Reply
from engine.lifecycle import PositionState
from gateway.services import accept_signal
from protocol.closecodes import CloseCode
from protocol.codec import device_client_codec
from protocol.common import Side
from protocol.device import DeviceError, Heartbeat, HelloBody, Welcome
from protocol.feed import Quote
from protocol.signals import Signal
from protocol.signing import sign_hello
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal

JSON = device_client_codec("json")


async def _device(engine, username: str = "alice") -> tuple[str, str, str]:
    user_id, _ = await engine.user(username)
    device, secret = await engine.ctx.registry.register_device(user_id, "terminal")
    return user_id, device.id, secret


def _hello(
    engine, device_id: str, secret: str, *, ts_shift_ms: int = 0, nonce: str | None = None
) -> bytes | str:
    now = engine.ctx.clock.now_ms() + ts_shift_ms
    body = HelloBody(ea_build="t", account_login="42", terminal_time_ms=now)
    hello = sign_hello(device_id, secret.encode(), body, now, nonce or secrets.token_urlsafe(18))
    return JSON.encode(hello)


async def _first_reply(url: str, frame: bytes | str):
    """Send one frame; return (first decoded reply or None, close code)."""
    async with open_websocket_url(url, subprotocols=["tripwire.v1.json"]) as ws:
        await ws.send_message(frame)
        reply = None
        try:
            reply = JSON.decode(await ws.get_message())
            await ws.get_message()  # the server closes after a refusal
        except ConnectionClosed as closed:
            return reply, closed.reason.code
        return reply, None


async def test_a_signed_hello_gets_a_welcome(engine) -> None:
    _, device_id, secret = await _device(engine)
    async with open_websocket_url(
        f"{engine.ws_url}/ws/device", subprotocols=["tripwire.v1.json"]
    ) as ws:
        assert ws.subprotocol == "tripwire.v1.json"
        await ws.send_message(_hello(engine, device_id, secret))
        welcome = JSON.decode(await ws.get_message())
        assert isinstance(welcome, Welcome) and welcome.session_id.startswith("s-")
    assert engine.ctx.counters.handshakes["ok"] == 1


@pytest.mark.parametrize(
    ("case", "code", "close"),
    [
        ("expired", "expired", CloseCode.CLOCK_SKEW),
        ("wrong_secret", "bad_signature", CloseCode.POLICY_VIOLATION),
        ("unknown_device", "bad_signature", CloseCode.POLICY_VIOLATION),
        ("not_a_hello", "unexpected_message", CloseCode.PROTOCOL_ERROR),
        ("garbage", "malformed", None),
    ],
)
async def test_refused_handshakes_are_answered_closed_and_counted(
    engine, case, code, close
) -> None:
    _, device_id, secret = await _device(engine)
    frame: bytes | str
    if case == "expired":
        frame = _hello(engine, device_id, secret, ts_shift_ms=-60_000)
    elif case == "wrong_secret":
        frame = _hello(engine, device_id, "x" * 43)
    elif case == "unknown_device":
        frame = _hello(engine, "ghost-device", secret)
    elif case == "not_a_hello":
        frame = JSON.encode(Heartbeat(seq=1, time_ms=1))
    else:
        frame = '{"type": "hello", "device_id": 12, "nonce": [}'
    reply, closed = await _first_reply(f"{engine.ws_url}/ws/device", frame)
    assert isinstance(reply, DeviceError) and reply.code == code and reply.fatal
    if close is not None:
        assert closed == close
    else:
        assert closed in (CloseCode.PROTOCOL_ERROR, CloseCode.UNSUPPORTED_DATA)
    assert engine.ctx.counters.handshakes[code] >= 1


async def test_a_replayed_hello_is_refused(engine) -> None:
    _, device_id, secret = await _device(engine)
    frame = _hello(engine, device_id, secret, nonce="same-nonce-0123456789")
    async with open_websocket_url(
        f"{engine.ws_url}/ws/device", subprotocols=["tripwire.v1.json"]
    ) as ws:
        await ws.send_message(frame)
        assert isinstance(JSON.decode(await ws.get_message()), Welcome)
    reply, closed = await _first_reply(f"{engine.ws_url}/ws/device", frame)
    assert isinstance(reply, DeviceError) and reply.code == "replayed"
    assert engine.ctx.counters.handshakes["replayed"] == 1


async def test_an_oversized_frame_is_told_with_its_limit_then_closed_with_1009(engine) -> None:
    limit = engine.ctx.settings.device_max_frame
    huge = "x" * (limit + 10)
    async with open_websocket_url(
        f"{engine.ws_url}/ws/device", subprotocols=["tripwire.v1.json"]
    ) as ws:
        await ws.send_message(huge)
        with trio.fail_after(5):
            told = msgspec.json.decode(await ws.get_message())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert told["type"] == "error" and told["code"] == "too_large" and told["fatal"] is True
    assert told["details"]["limit"] == limit
    assert closed.value.reason.code == CloseCode.MESSAGE_TOO_BIG


async def test_no_hello_in_time_is_closed(engine) -> None:
    engine.ctx.settings = msgspec.structs.replace(engine.ctx.settings, handshake_timeout_s=0.3)
    async with open_websocket_url(
        f"{engine.ws_url}/ws/device", subprotocols=["tripwire.v1.json"]
    ) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == CloseCode.HANDSHAKE_TIMEOUT


async def test_malformed_frame_mid_session_and_second_hello(engine) -> None:
    _, device_id, secret = await _device(engine)
    for bad in (
        '{"type":"ack","command_id":"x","retcode":"nan"}',
        _hello(engine, device_id, secret),
    ):
        async with open_websocket_url(
            f"{engine.ws_url}/ws/device", subprotocols=["tripwire.v1.json"]
        ) as ws:
            await ws.send_message(_hello(engine, device_id, secret))
            assert isinstance(JSON.decode(await ws.get_message()), Welcome)
            await ws.send_message(bad)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    message = JSON.decode(await ws.get_message())
                    if isinstance(message, DeviceError):
                        assert message.code in ("malformed", "unexpected_message")
        assert closed.value.reason.code == CloseCode.PROTOCOL_ERROR
    # The engine keeps serving: a good session still works afterwards.
    async with open_websocket_url(
        f"{engine.ws_url}/ws/device", subprotocols=["tripwire.v1.json"]
    ) as ws:
        await ws.send_message(_hello(engine, device_id, secret))
        assert isinstance(JSON.decode(await ws.get_message()), Welcome)


async def test_a_second_connection_replaces_the_first(engine) -> None:
    _, device_id, secret = await _device(engine)
    url = f"{engine.ws_url}/ws/device"
    async with open_websocket_url(url, subprotocols=["tripwire.v1.json"]) as first:
        await first.send_message(_hello(engine, device_id, secret))
        assert isinstance(JSON.decode(await first.get_message()), Welcome)
        async with open_websocket_url(url, subprotocols=["tripwire.v1.json"]) as second:
            await second.send_message(_hello(engine, device_id, secret))
            assert isinstance(JSON.decode(await second.get_message()), Welcome)
            with pytest.raises(ConnectionClosed) as closed:
                await first.get_message()
            assert closed.value.reason.code == CloseCode.REPLACED


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_commands_reach_the_ea_signed_and_the_close_lands(engine, nursery, encoding) -> None:
    node = engine.node
    user_id, device_id, secret = await _device(engine)
    node.offer_quotes(
        [Quote(symbol="XAUUSD", bid=1950.0, ask=1950.3, time_ms=engine.ctx.clock.now_ms())]
    )
    prices = {"XAUUSD": (1950.0, 1950.3)}
    terminal = PaperTerminal(node.instruments, prices.get, PaperConfig(broker_stops=False))
    ea = SimulatedEA(f"{engine.ws_url}/ws/device", device_id, secret, terminal, encoding=encoding)
    await nursery.start(ea.run)
    with trio.fail_after(5):
        while not node.devices[device_id].core.ready:
            await trio.sleep(0.02)
    signal = Signal(
        strategy_id="s",
        signal_id="g",
        audience=[user_id],
        symbol="XAUUSD",
        side=Side.BUY,
        entry=1950.3,
        sl=1945.0,
        tp=1960.0,
        created_at_ms=engine.ctx.clock.now_ms(),
    )
    await accept_signal(engine.ctx, signal)
    decided = Reply()  # at the quote offered above
    node.user(user_id).deliver(DecideSignal(signal, "approve", "a-1", "", "", None, decided))
    approval = await decided.wait()
    pid = approval.position_id
    with trio.fail_after(5):
        while node.users[user_id].core.positions[pid].state is not PositionState.OPEN:
            await trio.sleep(0.02)
    prices["XAUUSD"] = (1944.0, 1944.3)
    node.offer_quotes(
        [Quote(symbol="XAUUSD", bid=1944.0, ask=1944.3, time_ms=engine.ctx.clock.now_ms())]
    )
    with trio.fail_after(5):
        while pid not in node.users[user_id].core.recent_closed:
            await trio.sleep(0.02)
    closed = node.users[user_id].core.recent_closed[pid]
    assert closed.state is PositionState.CLOSED and closed.close_price == 1_944_000
    assert ea.bad_signatures == 0
    assert [type(c).__name__ for c in ea.commands] == ["OpenCommand", "CloseCommand"]
    assert not terminal.positions
    # The projection put it all in Postgres: the position closed, both commands acked.
    await engine.ctx.journal.flush()
    row = await engine.ctx.db.fetchrow(
        "SELECT state, close_reason FROM positions WHERE id = $1", pid
    )
    assert (row["state"], row["close_reason"]) == ("closed", "sl")
    kinds = await engine.ctx.db.fetch(
        "SELECT kind, category FROM commands WHERE position_id = $1 ORDER BY issued_at", pid
    )
    assert [(k["kind"], k["category"]) for k in kinds] == [("open", "done"), ("close", "done")]
    assert engine.ctx.journal.projection_errors == 0
