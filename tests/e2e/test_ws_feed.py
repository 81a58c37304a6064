"""``/ws/feed`` over real sockets: the feed token, hostile frames, quotes judged on arrival,
and quotes stamped in the future refused without holding back the ones after them."""

from __future__ import annotations

import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from engine.lifecycle import PositionState
from gateway.config import load_settings
from gateway.runtime import run
from protocol.closecodes import CloseCode
from protocol.codec import feed_codec
from protocol.errors import ConfigError
from protocol.feed import FeedError, Quote, QuoteBatch
from tests.e2e.conftest import FEED_TOKEN, Engine, engine_settings
from tests.e2e.helpers import (
    GOLD_ASK,
    decision_url,
    make_signal,
    paper_device,
    post_signal,
    wait_for,
)

MSGPACK = feed_codec("msgpack")
MSGPACK_ERRORS = msgspec.msgpack.Decoder(FeedError)


def _url(engine, token: str | None = FEED_TOKEN) -> str:
    return f"{engine.ws_url}/ws/feed" + (f"?token={token}" if token is not None else "")


def _batch(engine, bid: float, *, age_ms: int = 0, sent_lag_ms: int | None = None) -> bytes:
    """A batch of one XAUUSD quote ``age_ms`` old when sent, sent ``sent_lag_ms`` ago."""
    now = engine.ctx.clock.now_ms()
    sent = None if sent_lag_ms is None else now - sent_lag_ms
    time_ms = (sent if sent is not None else now) - age_ms
    quote = Quote(symbol="XAUUSD", bid=bid, ask=round(bid + 0.3, 3), time_ms=time_ms)
    return MSGPACK.encode(QuoteBatch(quotes=[quote], sent_ms=sent))


async def _until(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # polling the engine's state from outside
            await trio.sleep(0.01)


async def _closed_code(url: str, frame: bytes | None) -> int | None:
    async with open_websocket_url(url, subprotocols=["tripwire.v1.msgpack"]) as ws:
        try:
            if frame is not None:
                await ws.send_message(frame)
            with trio.fail_after(5):
                await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code
    return None


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789"])
async def test_a_publisher_without_the_feed_token_is_closed_and_counted(engine, token) -> None:
    assert await _closed_code(_url(engine, token), None) == CloseCode.POLICY_VIOLATION
    assert engine.ctx.counters.handshakes["feed_unauthorized"] == 1


async def test_quotes_reach_the_symbol_actor(engine) -> None:
    async with open_websocket_url(_url(engine), subprotocols=["tripwire.v1.msgpack"]) as ws:
        await ws.send_message(_batch(engine, 2000.0))
        await _until(lambda: engine.node.prices.get("XAUUSD") is not None)
    assert engine.node.prices.get("XAUUSD")[0] == 2000.0
    assert engine.ctx.counters.feed_quotes == 1


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xc1\x00 not msgpack", CloseCode.PROTOCOL_ERROR),
        (MSGPACK.encode(QuoteBatch(quotes=[])) + b"", None),  # a valid empty batch: kept open
        (b"\x81\xa4type\xa6quotes", CloseCode.PROTOCOL_ERROR),  # no quotes field
        (b"x" * (1_048_576 + 1), CloseCode.MESSAGE_TOO_BIG),
    ],
    ids=["garbage", "empty", "missing_field", "oversized"],
)
async def test_hostile_frames_close_the_publisher_and_nobody_else(engine, frame, code) -> None:
    async with open_websocket_url(_url(engine), subprotocols=["tripwire.v1.msgpack"]) as other:
        closed = None
        async with open_websocket_url(_url(engine), subprotocols=["tripwire.v1.msgpack"]) as ws:
            await ws.send_message(frame)
            told = []
            try:
                # Kept open: nothing comes. Closed: the error frame, then the close.
                with trio.move_on_after(0.5 if code is None else 5):
                    while True:
                        told.append(MSGPACK_ERRORS.decode(await ws.get_message()))
            except ConnectionClosed as exc:
                closed = exc.reason.code
        assert closed == code
        if code is None:
            assert told == []
        else:
            assert [t.code for t in told] == ["too_large" if code == 1009 else "malformed"]
        # The other publisher is still served.
        await other.send_message(_batch(engine, 2001.0))
        await _until(lambda: (engine.node.prices.get("XAUUSD") or (0,))[0] == 2001.0)
    if code == CloseCode.PROTOCOL_ERROR:
        assert sum(engine.ctx.counters.bad_frames.values()) == 1


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
async def test_a_broken_limit_sends_an_error_frame_with_it_then_closes(engine, encoding) -> None:
    """Each limit that closes the socket is told twice, both naming the limit: an error frame
    first, for a publisher that reads, then the close reason, for one that does not."""
    now = engine.ctx.clock.now_ms()
    quote = Quote(symbol="XAUUSD", bid=2000.0, ask=2000.3, time_ms=now)
    # Built past the model's bound (msgspec validates on decode only): what a bad feed sends.
    too_many = feed_codec(encoding).encode(QuoteBatch(quotes=[quote] * 10_001))
    oversized = b"x" * (1_048_576 + 1) if encoding == "msgpack" else "x" * (1_048_576 + 1)
    cases = [
        (too_many, CloseCode.PROTOCOL_ERROR, "malformed: Expected `array` of length <= 10000"),
        (oversized, CloseCode.MESSAGE_TOO_BIG, "too_large: over 1048576 bytes"),
    ]
    decode = msgspec.msgpack.decode if encoding == "msgpack" else msgspec.json.decode
    errors = []
    for frame, code, reason in cases:
        async with open_websocket_url(_url(engine), subprotocols=[f"tripwire.v1.{encoding}"]) as ws:
            await ws.send_message(frame)
            with trio.fail_after(5):
                errors.append(decode(await ws.get_message(), type=FeedError))
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):
                await ws.get_message()
        assert closed.value.reason.code == code
        assert (closed.value.reason.reason or "").startswith(reason)
    many, big = errors
    assert (many.code, many.fatal, many.details) == (
        "malformed",
        True,
        {"path": "$.quotes", "limit": 10_000},
    )
    assert "length <= 10000" in many.message
    assert (big.code, big.details) == (
        "too_large",
        {"size": big.details["size"], "limit": 1_048_576},
    )
    assert big.details["size"] > 1_048_576


async def test_the_token_may_come_as_a_bearer_header(engine) -> None:
    url = _url(engine, None)
    headers = [(b"Authorization", f"Bearer {FEED_TOKEN}".encode())]
    async with open_websocket_url(
        url, subprotocols=["tripwire.v1.msgpack"], extra_headers=headers
    ) as ws:
        await ws.send_message(_batch(engine, 2002.0))
        await _until(lambda: (engine.node.prices.get("XAUUSD") or (0,))[0] == 2002.0)


async def test_time_in_the_nodes_buffers_does_not_make_a_quote_stale(engine) -> None:
    """A batch the node reads long after its publisher sent it (a backlog in our own socket
    buffers) is judged by ``sent_ms``; a quote that was already old when sent is refused."""
    max_age = engine.node.config.quote_limits.max_age_ms
    symbol = engine.node.symbols["XAUUSD"]
    async with open_websocket_url(_url(engine), subprotocols=["tripwire.v1.msgpack"]) as ws:
        await ws.send_message(_batch(engine, 2000.0, sent_lag_ms=max_age * 2))
        await _until(lambda: engine.node.prices.get("XAUUSD") is not None)
        assert symbol.rejected == 0
        assert engine.node.feed_lag_ms >= max_age * 2
        await ws.send_message(_batch(engine, 2000.5, age_ms=max_age + 1_000, sent_lag_ms=0))
        await _until(lambda: symbol.rejected == 1)
    assert engine.node.prices.get("XAUUSD")[0] == 2000.0


def _stamped(bid: float, time_ms: int) -> bytes:
    """A batch of one XAUUSD quote stamped ``time_ms``, with no ``sent_ms``."""
    quote = Quote(symbol="XAUUSD", bid=bid, ask=round(bid + 0.3, 3), time_ms=time_ms)
    return MSGPACK.encode(QuoteBatch(quotes=[quote]))


async def test_a_quote_from_the_future_is_refused_and_the_next_genuine_one_fires(
    engine, nursery
) -> None:
    """The regression: a quote a year ahead was accepted, every genuine quote after it was
    then "out of order", and the price froze with the SLs under it. Refused now (as is a
    microsecond stamp), it fires nothing, and the genuine quotes after it move the price and
    fire the SL."""
    year_ms = 365 * 86_400_000
    alice, token = await engine.user("alice")
    await paper_device(engine, nursery, alice)
    symbol = engine.node.symbols["XAUUSD"]
    clock = engine.ctx.clock

    def price() -> float:
        return engine.node.prices.get("XAUUSD")[0]

    async with (
        open_websocket_url(_url(engine), subprotocols=["tripwire.v1.msgpack"]) as ws,
        engine.client(token) as http,
    ):
        await ws.send_message(_batch(engine, 2000.0))
        await _until(lambda: engine.node.prices.get("XAUUSD") is not None)
        signal = make_signal([alice])  # a buy, SL 5 under the entry
        assert (await post_signal(http, signal)).status_code == 201
        decided = await http.post(decision_url(signal), json={"decision": "approve"})
        assert decided.status_code == 201, decided.text
        position_id = decided.json()["approval"]["position_id"]

        def state() -> PositionState | None:
            position = engine.node.state.positions.get(position_id)
            return None if position is None else position.state

        await _until(lambda: state() is PositionState.OPEN)

        through_sl = GOLD_ASK - 8
        await ws.send_message(_stamped(through_sl, clock.now_ms() + year_ms))
        await ws.send_message(_stamped(through_sl, clock.now_ms() * 1000))  # microseconds
        await _until(lambda: symbol.rejections.get("future", 0) == 2)
        assert price() == 2000.0 and state() is PositionState.OPEN

        await ws.send_message(_batch(engine, 2000.2))
        await _until(lambda: price() == 2000.2)
        await ws.send_message(_batch(engine, through_sl))

        async def closed() -> list[dict]:
            listed = (await http.get("/api/v1/positions", params={"state": "closed"})).json()
            return [p for p in listed["positions"] if p["id"] == position_id]

        (history,) = await wait_for(closed)
        assert history["close_reason"] == "sl"
    assert symbol.rejected == 2

    async with engine.client() as http:
        metrics = (await http.get("/metrics")).text
    assert 'tripwire_quotes_rejected_total{reason="future"} 2.0' in metrics.splitlines()


async def test_the_operator_sets_how_far_ahead_a_quote_may_be(nursery, pg_dsn, tmp_path) -> None:
    """``TRIPWIRE_QUOTE_MAX_AHEAD_MS`` reaches the symbol actors: at 60 s, a quote 30 s ahead
    (a publisher's clock that far off) is acted on, one 61 s ahead is refused."""
    settings = engine_settings(tmp_path, pg_dsn, quote_max_ahead_ms=60_000)
    ctx = (await nursery.start(run, settings)).gateway
    engine = Engine(ctx, "", f"ws://127.0.0.1:{settings.port}")
    symbol = engine.node.symbols["XAUUSD"]
    async with open_websocket_url(_url(engine), subprotocols=["tripwire.v1.msgpack"]) as ws:
        await ws.send_message(_stamped(2000.0, ctx.clock.now_ms() + 30_000))
        await _until(lambda: engine.node.prices.get("XAUUSD") is not None)
        await ws.send_message(_stamped(2000.5, ctx.clock.now_ms() + 61_000))
        await _until(lambda: symbol.rejected == 1)
    assert symbol.rejections == {"future": 1}
    assert engine.node.prices.get("XAUUSD")[0] == 2000.0
    for bad in ("0", "60001", "soon"):
        with pytest.raises(ConfigError, match="TRIPWIRE_QUOTE_MAX_AHEAD_MS"):
            load_settings({"TRIPWIRE_QUOTE_MAX_AHEAD_MS": bad})
