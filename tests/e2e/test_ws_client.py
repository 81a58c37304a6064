"""``/ws/client`` over real sockets: what a stream may cost and how long it may live.

A stream's symbols stay within the known instruments however many subscribes name others, a
flood of frames is closed, a closed stream leaves nothing in the hub, a stream ends when its
token expires unless the client renews it first, and disabling a user ends its streams and its
devices' sessions at once.
"""

from __future__ import annotations

import contextlib
import gc
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from actors.hub import Subscription
from gateway.runtime import run
from protocol.client import (
    Authenticated,
    ClientAuth,
    ClientError,
    ClientPing,
    Pong,
    PriceUpdate,
    Snapshot,
    Subscribe,
)
from protocol.closecodes import CloseCode
from protocol.codec import client_client_codec, feed_codec
from protocol.feed import Quote, QuoteBatch
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperTerminal
from tests.e2e.conftest import ADMIN_PASSWORD, FEED_TOKEN, Engine, engine_settings
from tests.e2e.helpers import wait_for

CODEC = client_client_codec("json")
FEED_CODEC = feed_codec("msgpack")
SUBPROTOCOLS = ["tripwire.v1.json"]


async def _engine(nursery: trio.Nursery, pg_dsn: str, tmp_path: Path, **overrides: Any) -> Engine:
    settings_ = engine_settings(tmp_path, pg_dsn, **overrides)
    ctx = (await nursery.start(run, settings_)).gateway
    return Engine(ctx, f"http://127.0.0.1:{settings_.port}", f"ws://127.0.0.1:{settings_.port}")


def _url(engine: Engine, token: str) -> str:
    return f"{engine.ws_url}/ws/client?token={token}"


async def _subscribe(ws: WebSocketConnection, **fields: Any) -> list[Any]:
    """Send the first subscribe; returns the snapshot and anything the server said with it."""
    await ws.send_message(CODEC.encode(Subscribe(**fields)))
    snapshot = CODEC.decode(await ws.get_message())
    assert isinstance(snapshot, Snapshot), snapshot
    return [snapshot, *await _until_pong(ws, 1_000_000)]


async def _until_pong(ws: WebSocketConnection, seq: int) -> list[Any]:
    """Ping and read up to the pong: everything sent before the ping has been handled then."""
    await ws.send_message(CODEC.encode(ClientPing(seq=seq)))
    seen: list[Any] = []
    with trio.fail_after(10):
        while True:
            message = CODEC.decode(await ws.get_message())
            if isinstance(message, Pong) and message.seq == seq:
                return seen
            seen.append(message)


async def _until_closed(ws: WebSocketConnection, timeout: float = 15) -> tuple[list[Any], int]:
    """Everything the server sends until it closes, and the close code."""
    seen: list[Any] = []
    with trio.fail_after(timeout):
        try:
            while True:
                seen.append(CODEC.decode(await ws.get_message()))
        except ConnectionClosed as closed:
            return seen, closed.reason.code


def _errors(messages: list[Any]) -> list[str]:
    return [m.code for m in messages if isinstance(m, ClientError)]


def _live(engine: Engine, user_id: str) -> tuple[Any, ...]:
    """The user's subscriptions, read from the hub's own structure (what a close must empty)."""
    return tuple(engine.node.hub._subs.get(user_id, ()))


async def _flood(engine: Engine, ws: WebSocketConnection) -> tuple[list[Any], int]:
    """Pings far faster than ``client_frame_rate`` refills, until the server closes."""
    for seq in range(engine.ctx.settings.client_frame_burst * 5):
        try:
            await ws.send_message(CODEC.encode(ClientPing(seq=seq)))
        except ConnectionClosed:
            break
    return await _until_closed(ws)


# -- subscriptions are bounded -------------------------------------------------------------

SYMBOL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.#-+!"


async def test_subscribe_floods_stay_within_the_instruments(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    """Thousands of subscribes of random symbols: the stream's set is exactly the known ones
    named, each frame naming others gets a ``not_found`` error, and the stream stays open."""
    engine = await _engine(nursery, pg_dsn, tmp_path, client_frame_burst=1_000_000)
    user_id, token = await engine.user("flood")
    instruments = sorted(engine.node.instruments)
    symbol = st.one_of(st.sampled_from(instruments), st.text(SYMBOL_CHARS, min_size=1, max_size=32))
    frame = st.lists(symbol, max_size=16)
    sent = {"frames": 0}

    async with open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws:
        await _subscribe(ws, channels=["prices"])
        (sub,) = _live(engine, user_id)
        named: set[str] = set()

        async def send(frames: list[list[str]], seq: int) -> list[Any]:
            for symbols in frames:
                await ws.send_message(CODEC.encode(Subscribe(channels=["prices"], symbols=symbols)))
            return await _until_pong(ws, seq)

        @settings(max_examples=60, database=None, deadline=None)
        @given(frames=st.lists(frame, min_size=40, max_size=60))
        def check(frames: list[list[str]]) -> None:
            sent["frames"] += len(frames)
            replies = trio.from_thread.run(send, frames, sent["frames"])
            named.update(s for symbols in frames for s in symbols if s in engine.node.instruments)
            assert sub.symbols == named
            unknown = any(s not in engine.node.instruments for f in frames for s in f)
            # Errors not yet sent coalesce: at least one per batch with an unknown symbol.
            assert set(_errors(replies)) == ({"not_found"} if unknown else set()), replies

        await trio.to_thread.run_sync(check)
        assert sent["frames"] >= 2_000
        assert sub.symbols <= set(instruments) and sub.channels == {"prices"}
        assert _live(engine, user_id) == (sub,)


async def test_an_unknown_symbol_is_an_error_not_a_close(engine) -> None:
    user_id, token = await engine.user("alice")
    async with open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws:
        replies = await _subscribe(ws, channels=["prices"], symbols=["XAUUSD", "NOPE.x"])
        (error,) = [m for m in replies if isinstance(m, ClientError)]
        assert error.code == "not_found" and "NOPE.x" in error.message
        (sub,) = _live(engine, user_id)
        assert sub.symbols == {"XAUUSD"}
        await ws.send_message(CODEC.encode(Subscribe(channels=["alerts"], symbols=["EURUSD"])))
        assert _errors(await _until_pong(ws, 7)) == []  # still open, still served
        assert sub.symbols == {"XAUUSD", "EURUSD"}
        assert sub.channels == {"prices", "alerts"}


async def test_a_flood_of_frames_is_closed(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    """Past the burst a frame is refused, with ``rate_limited`` and a 1013. (The budget here is
    five frames and a refill every 100 s, so the sixth frame is over it however slow the
    machine; a client that kept sending past the close could lose the error to a TCP reset.)"""
    engine = await _engine(nursery, pg_dsn, tmp_path, client_frame_rate=0.01, client_frame_burst=5)
    user_id, token = await engine.user("alice")
    _, other = await engine.user("bob")
    async with (
        open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws,
        open_websocket_url(_url(engine, other), subprotocols=SUBPROTOCOLS) as calm,
    ):
        await ws.send_message(CODEC.encode(Subscribe()))
        await calm.send_message(CODEC.encode(Subscribe()))
        for seq in range(6):
            await ws.send_message(CODEC.encode(ClientPing(seq=seq)))
        seen, code = await _until_closed(ws)
        assert code == CloseCode.TRY_AGAIN_LATER
        assert _errors(seen) == ["rate_limited"]
        assert [m.seq for m in seen if isinstance(m, Pong)] == [0, 1, 2, 3, 4]
        assert isinstance(CODEC.decode(await calm.get_message()), Snapshot)
        assert await _until_pong(calm, 1) == []  # its own budget: still served
    assert engine.ctx.counters.bad_frames["client_rate_limited"] == 1
    await wait_for(lambda: not _live(engine, user_id))


async def _price_pushed(engine: Engine, ws: WebSocketConnection, bid: float) -> PriceUpdate:
    """Publish an XAUUSD quote at ``bid`` on ``/ws/feed``; the stream's next price update."""
    url = f"{engine.ws_url}/ws/feed?token={FEED_TOKEN}"
    async with open_websocket_url(url, subprotocols=["tripwire.v1.msgpack"]) as feed:
        quote = Quote(symbol="XAUUSD", bid=bid, ask=bid + 0.3, time_ms=engine.ctx.clock.now_ms())
        await feed.send_message(FEED_CODEC.encode(QuoteBatch(quotes=[quote])))
        with trio.fail_after(10):
            while True:
                message = CODEC.decode(await ws.get_message())
                if isinstance(message, PriceUpdate) and message.bid == bid:
                    return message


@pytest.mark.parametrize("ending", ["client closes", "bad frame"])
async def test_a_closed_stream_leaves_nothing_in_the_hub(engine, ending: str) -> None:
    """Nothing keeps a closed stream's subscription, the price push that last served it
    included (its loop held the last one it visited, for good once no stream was left)."""
    user_id, token = await engine.user("alice")
    hub = engine.node.hub
    async with open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws:
        await _subscribe(ws, channels=["prices", "positions"], symbols=["XAUUSD", "NOPE"])
        gone = weakref.ref(_live(engine, user_id)[0])
        update = await _price_pushed(engine, ws, 2000.0)
        assert update.symbol == "XAUUSD" and update.ask == 2000.3
        if ending == "bad frame":
            await ws.send_message('{"type": "subscribe", "channels": ["nope"]}')
            await _until_closed(ws)
    await wait_for(lambda: not _live(engine, user_id))
    assert user_id not in hub._subs and hub.clients == 0
    await wait_for(lambda: engine.ctx.counters.clients_connected == 0)
    gc.collect()
    assert gone() is None


async def test_prices_reach_a_stream_opened_after_the_last_one_closed(engine) -> None:
    """With no stream left the price push waits for the next subscribe: it must wake for it."""
    user_id, token = await engine.user("alice")
    for bid in (2000.0, 2001.0):
        async with open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws:
            await _subscribe(ws, channels=["prices"], symbols=["XAUUSD"])
            assert (await _price_pushed(engine, ws, bid)).bid == bid
        await wait_for(lambda: not _live(engine, user_id))


async def test_flooded_streams_leave_nothing_behind(engine) -> None:
    """Streams closed for flooding are forgotten by the hub too: none of them stays alive."""
    user_id, token = await engine.user("alice")
    hub = engine.node.hub
    for _ in range(5):
        async with open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws:
            await _subscribe(ws, channels=["prices"], symbols=["XAUUSD"])
            await _flood(engine, ws)
        await wait_for(lambda: not _live(engine, user_id))
        assert user_id not in hub._subs and hub.clients == 0
    await wait_for(lambda: engine.ctx.counters.clients_connected == 0)
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is Subscription and o.user_id == user_id]
    assert alive == []


# -- a stream lives as long as its token -----------------------------------------------------


def _short_token(engine: Engine, user_id: str, seconds: int = 3) -> tuple[str, int]:
    """A token of ``user_id`` that expires in about ``seconds``."""
    tokens = engine.ctx.tokens
    return tokens.issue(user_id, "user", now_s=time.time() - tokens.ttl_s + seconds)


async def _sleep_past(expires_at: int) -> None:
    await trio.sleep(max(0.0, expires_at - time.time()) + 1.0)


async def test_a_stream_ends_when_its_token_expires(engine) -> None:
    user_id, _ = await engine.user("alice")
    token, expires = _short_token(engine, user_id)
    async with open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws:
        await _subscribe(ws)
        seen, code = await _until_closed(ws, timeout=expires - time.time() + 10)
        assert time.time() >= expires
    assert code == CloseCode.CLOCK_SKEW  # 4001, as for a connection with an expired token
    assert _errors(seen) == ["expired"]
    await wait_for(lambda: not _live(engine, user_id))


async def test_a_renewed_stream_outlives_its_first_token(engine) -> None:
    user_id, fresh = await engine.user("alice")
    _, mallory = await engine.user("mallory")
    token, expires = _short_token(engine, user_id)
    later = engine.ctx.tokens.verify(fresh).expires_at
    async with open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws:
        await _subscribe(ws)
        refused = {
            "another user's": mallory,
            "not a token": "not.a.token",
            "no later": _short_token(engine, user_id, seconds=2)[0],
        }
        for name, bad in refused.items():
            await ws.send_message(CODEC.encode(ClientAuth(token=bad)))
            replies = await _until_pong(ws, 1)
            assert _errors(replies) in (["forbidden"], ["bad_signature"]), (name, replies)
        await ws.send_message(CODEC.encode(ClientAuth(token=fresh)))
        (ok,) = await _until_pong(ws, 2)
        assert isinstance(ok, Authenticated) and ok.expires_at_ms == later * 1000
        await _sleep_past(expires)
        assert await _until_pong(ws, 3) == []  # past the first token's expiry, still served
    # A stream that was not renewed in time is not saved by a late one.
    token, expires = _short_token(engine, user_id, seconds=2)
    async with open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws:
        await _subscribe(ws)
        _, code = await _until_closed(ws, timeout=expires - time.time() + 10)
    assert code == CloseCode.CLOCK_SKEW


# -- disabling a user ends what it has open ---------------------------------------------------


async def test_disabling_a_user_ends_its_tokens_streams_and_devices(
    engine, nursery: trio.Nursery
) -> None:
    alice, token = await engine.user("alice")
    _, bob_token = await engine.user("bob")
    record, secret = await engine.ctx.registry.register_device(alice, "MT5")
    terminal = PaperTerminal(engine.node.instruments, lambda symbol: None)
    ea = SimulatedEA(engine.ws_url + "/ws/device", record.id, secret, terminal, encoding="json")
    await nursery.start(ea.run)
    assert ea.welcome is not None, ea.errors
    admin = await engine.login("admin", ADMIN_PASSWORD)
    async with (
        engine.client(token) as http,
        engine.client(admin) as as_admin,
        engine.client(bob_token) as as_bob,
        open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws,
        open_websocket_url(_url(engine, bob_token), subprotocols=SUBPROTOCOLS) as bob_ws,
    ):
        await _subscribe(ws)
        await _subscribe(bob_ws)
        assert (await http.get("/api/v1/me/settings")).status_code == 200

        refused = await as_bob.post(f"/api/v1/users/{alice}/disable")
        assert refused.status_code == 403
        admin_id = engine.ctx.registry.by_name["admin"]
        assert (await as_admin.post(f"/api/v1/users/{admin_id}/disable")).status_code == 409
        assert (await as_admin.post("/api/v1/users/u-nobody/disable")).status_code == 404

        disabled = await as_admin.post(f"/api/v1/users/{alice}/disable")
        assert disabled.status_code == 200, disabled.text
        assert disabled.json()["disabled"] is True
        for method, path, body in [
            ("GET", "/api/v1/me/settings", None),
            ("GET", "/api/v1/positions", None),
            ("POST", "/api/v1/devices", {"name": "another"}),
            ("PUT", "/api/v1/me/settings", {}),
        ]:
            response = await http.request(method, path, json=body)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["code"] == "unauthorized"

        seen, code = await _until_closed(ws)
        assert code == CloseCode.POLICY_VIOLATION and _errors(seen) == ["unauthorized"]
        await wait_for(lambda: ea.closed)
        assert ea.closed[0] == CloseCode.POLICY_VIOLATION
        assert await _until_pong(bob_ws, 1) == []  # somebody else's stream is untouched
        assert (await as_bob.get("/api/v1/me/settings")).status_code == 200

    async with open_websocket_url(_url(engine, token), subprotocols=SUBPROTOCOLS) as ws:
        # The server refuses on the handshake's token, before reading a frame: its close may
        # arrive before this subscribe leaves (the stream is served on its socket, no hops).
        with contextlib.suppress(ConnectionClosed):
            await ws.send_message(CODEC.encode(Subscribe()))
        await _until_closed(ws)
        assert ws.closed is not None  # refused before any frame: only the close says why
        assert (ws.closed.code, ws.closed.reason) == (CloseCode.POLICY_VIOLATION, "unauthorized")
    again = SimulatedEA(engine.ws_url + "/ws/device", record.id, secret, terminal, encoding="json")
    await nursery.start(again.run)
    assert again.welcome is None and [e.code for e in again.errors] == ["bad_signature"]
    async with engine.client() as http:
        login = await http.post(
            "/api/v1/auth/login", json={"username": "alice", "password": "password-0123"}
        )
        assert login.status_code == 401
    row = await engine.ctx.db.fetchval("SELECT disabled_at FROM users WHERE id = $1", alice)
    assert row is not None
    audit = await engine.ctx.db.fetch(
        "SELECT outcome, detail FROM audit_log WHERE action = 'user.disable' ORDER BY id"
    )
    assert [r["outcome"] for r in audit] == ["409:conflict", "404:not_found", "200"]
    assert audit[-1]["detail"]["streams_closed"] == 1
    assert audit[-1]["detail"]["sessions_closed"] == 1


async def test_a_user_disabled_during_a_device_handshake_gets_no_session(
    engine, nursery: trio.Nursery
) -> None:
    """The disable request ends the sessions open when it runs; a handshake already past its
    checks opens its session just after. The gateway checks again once the session is open."""
    alice, _ = await engine.user("alice")
    record, secret = await engine.ctx.registry.register_device(alice, "MT5")
    actor = engine.node.device(record.id)
    opening = actor.open_session

    async def disabled_meanwhile(*args: Any, **kwargs: Any) -> Any:
        await engine.ctx.registry.set_disabled(alice, True)  # the race, made certain
        assert not await actor.end_session(CloseCode.POLICY_VIOLATION, "user disabled")
        return await opening(*args, **kwargs)

    actor.open_session = disabled_meanwhile
    terminal = PaperTerminal(engine.node.instruments, lambda symbol: None)
    ea = SimulatedEA(engine.ws_url + "/ws/device", record.id, secret, terminal, encoding="json")
    nursery.start_soon(ea.run)
    await wait_for(lambda: ea.closed)
    assert ea.closed is not None and ea.closed[0] == CloseCode.POLICY_VIOLATION
    await wait_for(lambda: actor.session is None)
