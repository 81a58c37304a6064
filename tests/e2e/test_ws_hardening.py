"""Hostile and unlucky device sockets over real sockets: replays across a restart, empty frames
on every socket, encrypted frames that do not open, silent devices, a device that closes as
soon as it is refused, and the nonce store falling back when Redis dies."""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import structlog
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from gateway.runtime import run
from protocol.client import Subscribe
from protocol.closecodes import CloseCode
from protocol.codec import client_client_codec, device_client_codec
from protocol.crypto import FrameCipher
from protocol.device import DeviceError, Heartbeat, HelloBody, Ping, Welcome
from protocol.feed import FeedError
from protocol.session import derive_session_key
from protocol.signing import sign_hello
from tests.e2e.conftest import FEED_TOKEN, Engine, engine_settings
from tests.fixtures.redis import RedisProcess

JSON = device_client_codec("json")
DEVICE = ["tripwire.v1.json"]


@asynccontextmanager
async def running_engine(tmp_path: Path, dsn: str, **overrides: Any) -> AsyncIterator[Engine]:
    """The real runtime with ``overrides``; leaving the block stops it at once (as a crash)."""
    settings = engine_settings(tmp_path, dsn, **overrides)
    async with trio.open_nursery() as nursery:
        ctx = (await nursery.start(run, settings)).gateway
        yield Engine(ctx, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}")
        nursery.cancel_scope.cancel()


async def _device(engine: Engine, username: str = "alice") -> tuple[str, str]:
    user_id, _ = await engine.user(username)
    device, secret = await engine.ctx.registry.register_device(user_id, "terminal")
    return device.id, secret


def _hello(
    engine: Engine, device_id: str, secret: str, *, encryption: bool = False
) -> tuple[str, bytes]:
    """A hello signed now (JSON text) and the session key it yields."""
    now = engine.ctx.clock.now_ms()
    nonce = secrets.token_urlsafe(18)
    body = HelloBody(ea_build="t", account_login="42", terminal_time_ms=now, encryption=encryption)
    frame = JSON.encode(sign_hello(device_id, secret.encode(), body, now, nonce))
    key = derive_session_key(secret.encode(), device_id=device_id, nonce=nonce, ts_ms=now)
    assert isinstance(frame, str)
    return frame, key


async def _refusal(ws: WebSocketConnection, codec: Any = JSON) -> tuple[Any, int | None, str]:
    """The first frame the server sends, then the close: (frame or None, code, reason)."""
    reply = None
    with trio.fail_after(10):
        try:
            reply = codec.decode(await ws.get_message())
            await ws.get_message()
        except ConnectionClosed as closed:
            return reply, closed.reason.code, closed.reason.reason or ""
    raise AssertionError(f"not closed after {reply!r}")


def _errors(logs: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(e["event"], e.get("error")) for e in logs if e["log_level"] in ("error", "critical")]


# -- 1. a hello replayed across a restart without Redis ------------------------------------------


async def test_a_hello_replayed_after_a_restart_without_redis_is_refused(
    pg_dsn: str, tmp_path: Path
) -> None:
    async with running_engine(tmp_path / "a", pg_dsn) as first:
        device_id, secret = await _device(first)
        captured, _ = _hello(first, device_id, secret)
        async with open_websocket_url(f"{first.ws_url}/ws/device", subprotocols=DEVICE) as ws:
            await ws.send_message(captured)
            assert isinstance(JSON.decode(await ws.get_message()), Welcome)
    # The engine is gone with its nonce memory; a new one starts on the same database, well
    # inside the captured hello's 5 s window (it is re-verified below: not expired).
    async with running_engine(tmp_path / "b", pg_dsn) as second:
        signed_ms = msgspec.json.decode(captured)["ts_ms"]
        assert second.ctx.clock.now_ms() - signed_ms < 5_000
        async with open_websocket_url(f"{second.ws_url}/ws/device", subprotocols=DEVICE) as ws:
            await ws.send_message(captured)
            reply, code, reason = await _refusal(ws)
        assert isinstance(reply, DeviceError) and reply.code == "stale_hello" and reply.fatal
        assert code == CloseCode.CLOCK_SKEW and reason == "stale_hello"
        assert reply.details is not None
        assert reply.details["not_before_ms"] > signed_ms
        assert second.ctx.counters.handshakes["stale_hello"] == 1
        # An honest EA signs a new hello and is in at once.
        fresh, _ = _hello(second, device_id, secret)
        async with open_websocket_url(f"{second.ws_url}/ws/device", subprotocols=DEVICE) as ws:
            await ws.send_message(fresh)
            assert isinstance(JSON.decode(await ws.get_message()), Welcome)
        assert second.ctx.counters.handshakes["ok"] == 1


# -- 2. empty frames on every socket ---------------------------------------------------------------


@pytest.mark.parametrize("subprotocols", [DEVICE, []], ids=["json", "sniffed"])
async def test_an_empty_frame_before_the_hello(engine: Engine, subprotocols: list[str]) -> None:
    with structlog.testing.capture_logs() as logs:
        async with open_websocket_url(
            f"{engine.ws_url}/ws/device", subprotocols=subprotocols
        ) as ws:
            await ws.send_message(b"")
            reply, code, reason = await _refusal(ws)
    assert isinstance(reply, DeviceError) and reply.code == "malformed" and reply.fatal
    assert (code, reason) == (CloseCode.PROTOCOL_ERROR, "malformed")
    assert engine.ctx.counters.handshakes["malformed"] == 1
    assert not _errors(logs)


async def test_an_empty_frame_in_a_session(engine: Engine) -> None:
    device_id, secret = await _device(engine)
    with structlog.testing.capture_logs() as logs:
        async with open_websocket_url(f"{engine.ws_url}/ws/device", subprotocols=DEVICE) as ws:
            await ws.send_message(_hello(engine, device_id, secret)[0])
            assert isinstance(JSON.decode(await ws.get_message()), Welcome)
            await ws.send_message(b"")
            reply, code, reason = await _refusal(ws)
    assert isinstance(reply, DeviceError) and reply.code == "malformed" and reply.fatal
    assert (code, reason) == (CloseCode.PROTOCOL_ERROR, "malformed")
    assert engine.ctx.counters.bad_frames["malformed"] == 1
    assert not _errors(logs)


@pytest.mark.parametrize("when", ["first", "subscribed"])
async def test_an_empty_frame_on_the_client_socket(engine: Engine, when: str) -> None:
    codec = client_client_codec("json")
    _, token = await engine.user("carol")
    with structlog.testing.capture_logs() as logs:
        async with open_websocket_url(
            f"{engine.ws_url}/ws/client?token={token}", subprotocols=DEVICE
        ) as ws:
            if when == "subscribed":
                await ws.send_message(codec.encode(Subscribe()))
                assert type(codec.decode(await ws.get_message())).__name__ == "Snapshot"
            await ws.send_message(b"")
            reply, code, reason = await _refusal(ws, codec)
    assert reply is not None and reply.code == "malformed"
    assert (code, reason) == (CloseCode.PROTOCOL_ERROR, "malformed")
    assert not _errors(logs)


@pytest.mark.parametrize("subprotocols", [["tripwire.v1.msgpack"], []], ids=["msgpack", "sniffed"])
async def test_an_empty_frame_on_the_feed_socket(engine: Engine, subprotocols: list[str]) -> None:
    with structlog.testing.capture_logs() as logs:
        async with open_websocket_url(
            f"{engine.ws_url}/ws/feed?token={FEED_TOKEN}", subprotocols=subprotocols
        ) as ws:
            await ws.send_message(b"")
            # An empty first frame tells no encoding: the error frame is then JSON text.
            decoder = msgspec.msgpack.Decoder if subprotocols else msgspec.json.Decoder
            reply, code, reason = await _refusal(ws, decoder(FeedError))
    assert reply == FeedError(code="malformed", message="empty frame")
    assert (code, reason) == (CloseCode.PROTOCOL_ERROR, "malformed: empty frame")
    assert engine.ctx.counters.bad_frames["feed_malformed"] == 1
    assert not _errors(logs)


# -- 3. encrypted frames that do not open; silent devices ------------------------------------------


@pytest.mark.parametrize("bad", ["forged", "text", "short"])
async def test_an_encrypted_frame_that_does_not_open_closes_with_1008(
    engine: Engine, bad: str
) -> None:
    device_id, secret = await _device(engine)
    hello, key = _hello(engine, device_id, secret, encryption=True)
    frame: bytes | str = {
        "forged": b"\x00\x00\x00\x02" + b"\x00" * 7 + b"\x01" + os.urandom(40),
        "text": '{"type":"heartbeat","seq":1,"time_ms":1}',
        "short": b"\x00\x00\x00\x02",
    }[bad]
    with structlog.testing.capture_logs() as logs:
        async with open_websocket_url(f"{engine.ws_url}/ws/device", subprotocols=DEVICE) as ws:
            await ws.send_message(hello)
            welcome = JSON.decode(await ws.get_message())
            assert isinstance(welcome, Welcome) and welcome.encryption
            device = FrameCipher(key, "device", session_id=welcome.session_id)
            await ws.send_message(frame)
            sealed: list[bytes] = []
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                while True:
                    sealed.append(await ws.get_message())
    assert closed.value.reason.code == CloseCode.POLICY_VIOLATION
    # The error frame was sealed like every frame of the session, and the EA can open it.
    errors = [
        m for m in (JSON.decode(device.open(s)) for s in sealed) if isinstance(m, DeviceError)
    ]
    assert len(errors) == 1 and errors[0].fatal
    assert errors[0].code == closed.value.reason.reason
    assert sum(engine.ctx.counters.bad_frames.values()) == 1
    assert [e["event"] for e in logs if e["event"] == "bad device frame"] == ["bad device frame"]
    assert not _errors(logs)


async def test_a_silent_device_is_pinged_then_closed_with_4004_and_an_answering_one_stays(
    pg_dsn: str, tmp_path: Path
) -> None:
    async with running_engine(
        tmp_path, pg_dsn, device_heartbeat_s=1, device_stale_after_s=3
    ) as engine:
        device_id, secret = await _device(engine)
        url = f"{engine.ws_url}/ws/device"
        async with open_websocket_url(url, subprotocols=DEVICE) as ws:
            await ws.send_message(_hello(engine, device_id, secret)[0])
            welcome = JSON.decode(await ws.get_message())
            assert isinstance(welcome, Welcome)
            assert (welcome.heartbeat_s, welcome.stale_after_s) == (1, 3)
            pings = 0
            with trio.fail_after(20), pytest.raises(ConnectionClosed) as closed:
                while True:  # the server ends this loop by closing
                    pings += isinstance(JSON.decode(await ws.get_message()), Ping)
        assert closed.value.reason.code == CloseCode.HEARTBEAT_TIMEOUT
        assert pings >= 1 and engine.ctx.counters.device_timeouts == 1

        async with open_websocket_url(url, subprotocols=DEVICE) as ws:
            await ws.send_message(_hello(engine, device_id, secret)[0])
            welcome = JSON.decode(await ws.get_message())
            answered = 0
            with trio.fail_after(30):
                # Answering only pings, for more than twice stale_after_s of otherwise silence.
                while answered < 7:
                    message = JSON.decode(await ws.get_message())
                    if isinstance(message, Ping):
                        answered += 1
                        await ws.send_message(JSON.encode(Heartbeat(seq=answered, time_ms=1)))
            actor = engine.node.devices[device_id]
            assert actor.session is not None and actor.session.session_id == welcome.session_id
            assert engine.ctx.counters.device_timeouts == 1


# -- 4. a device that closes as soon as it is refused -------------------------------------------


async def test_a_device_closing_right_after_its_refusal_is_no_server_error(
    engine: Engine,
) -> None:
    """The EA runs in another process (tests/e2e/replay_client.py), so its close reaches the
    engine at any moment, as in production: before the fix, a few rounds in 40 met the server
    closing and ended in an "unexpected error" (trio.BusyResourceError)."""
    rounds = 40
    device_id, secret = await _device(engine)
    hello, _ = _hello(engine, device_id, secret)
    url, port = f"{engine.ws_url}/ws/device", engine.ctx.settings.port
    with structlog.testing.capture_logs() as logs:
        async with open_websocket_url(url, subprotocols=DEVICE) as ws:
            await ws.send_message(hello)
            assert isinstance(JSON.decode(await ws.get_message()), Welcome)
        with trio.fail_after(120):
            done = await trio.run_process(
                [sys.executable, "-m", "tests.e2e.replay_client", str(port), str(rounds)],
                stdin=hello.encode(),
                capture_stdout=True,
            )
        await trio.testing.wait_all_tasks_blocked()  # the last handler has finished its close
    replies = done.stdout.decode().splitlines()
    assert len(replies) == rounds
    assert all(JSON.decode(reply).code == "replayed" for reply in replies)
    assert engine.ctx.counters.handshakes["replayed"] == rounds
    assert not _errors(logs)


# -- 5. nonce checks that fall back to the in-process cache -------------------------------------


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    assert match is not None, name
    return float(match.group(1))


async def test_nonce_checks_without_redis_are_counted_and_older_hellos_refused(
    pg_dsn: str, tmp_path: Path, redis_server: RedisProcess
) -> None:
    name = "tripwire_nonce_checks_degraded_total"
    async with running_engine(tmp_path, pg_dsn, redis_url=redis_server.url) as engine:
        device_id, secret = await _device(engine)
        url = f"{engine.ws_url}/ws/device"
        async with httpx.AsyncClient(base_url=engine.base_url, timeout=10) as http:
            async with open_websocket_url(url, subprotocols=DEVICE) as ws:
                await ws.send_message(_hello(engine, device_id, secret)[0])
                assert isinstance(JSON.decode(await ws.get_message()), Welcome)
            assert _metric((await http.get("/metrics")).text, name) == 0
            signed_before, _ = _hello(engine, device_id, secret)
            await trio.sleep(0.01)  # the outage starts strictly after that hello's ts_ms
            redis_server.kill()
            # Redis may have known this nonce (another node): the memory cannot vouch for it.
            async with open_websocket_url(url, subprotocols=DEVICE) as ws:
                await ws.send_message(signed_before)
                reply, code, _ = await _refusal(ws)
            assert isinstance(reply, DeviceError) and reply.code == "stale_hello"
            assert code == CloseCode.CLOCK_SKEW
            # Signed during the outage: the memory has seen every such nonce, so it decides.
            async with open_websocket_url(url, subprotocols=DEVICE) as ws:
                await ws.send_message(_hello(engine, device_id, secret)[0])
                assert isinstance(JSON.decode(await ws.get_message()), Welcome)
            assert _metric((await http.get("/metrics")).text, name) == 2
