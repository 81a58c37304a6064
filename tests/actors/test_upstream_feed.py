"""The upstream feed client against a real trio-websocket server on 127.0.0.1."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from actors.upstream_feed import websocket_feed
from protocol.codec import feed_codec
from protocol.feed import Quote, QuoteBatch

CODEC = feed_codec("msgpack")


def _batch(bid: float, sent_ms: int | None) -> bytes:
    quote = Quote(symbol="XAUUSD", bid=bid, ask=bid + 0.3, time_ms=1_700_000_000_000)
    return CODEC.encode(QuoteBatch(quotes=[quote], sent_ms=sent_ms))


async def test_batches_reach_the_sink_with_sent_ms_and_garbage_is_skipped(nursery) -> None:
    connections = 0

    async def publisher(request: WebSocketRequest) -> None:
        nonlocal connections
        connections += 1
        ws = await request.accept()
        await ws.send_message(_batch(2000.0, 1_700_000_000_010))
        await ws.send_message(b"\xc1 not msgpack")  # skipped, the connection stays
        await ws.send_message(_batch(2001.0, None))
        await ws.aclose()  # the client reconnects

    server = await nursery.start(
        functools.partial(serve_websocket, publisher, "127.0.0.1", 0, ssl_context=None)
    )
    port = server.port
    received: list[tuple[float, int | None]] = []

    def sink(quotes: Sequence[Quote], sent_ms: int | None) -> None:
        received.extend((q.bid, sent_ms) for q in quotes)

    with trio.fail_after(10):
        await websocket_feed(sink, f"ws://127.0.0.1:{port}", max_backoff=0.05, connections=2)
    assert connections == 2
    assert received == [(2000.0, 1_700_000_000_010), (2001.0, None)] * 2
