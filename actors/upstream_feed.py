"""The upstream feed's client: follows a quote publisher over WebSocket (trio-websocket),
reconnecting with backoff, and hands each :class:`~protocol.feed.QuoteBatch` to a sink
(``Node.offer_quotes``). The simulated feeds (the replayed days, a random walk) are in
:mod:`sim.price_feed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from protocol.codec import feed_codec
from protocol.errors import ProtocolError
from protocol.feed import Quote, QuoteBatch

__all__ = ["StampedQuoteSink", "websocket_feed"]

StampedQuoteSink = Callable[[Sequence[Quote], int | None], object]
"""Takes a batch of quotes with its ``sent_ms`` and must not block (``Node.offer_quotes`` judges
arrival by it)."""


async def websocket_feed(
    sink: StampedQuoteSink,
    url: str,
    encoding: str = "msgpack",
    max_backoff: float = 10.0,
    connections: int | None = None,
) -> None:
    """Follow an upstream quote feed, reconnecting with capped exponential backoff.

    Malformed frames are logged and skipped (the feed is not trusted more than a device); a
    close or a network error leads to a reconnect. ``connections`` bounds the attempts (tests).
    """
    log = structlog.get_logger().bind(feed=url)
    codec = feed_codec(encoding)  # type: ignore[arg-type]
    backoff = 0.1
    attempts = 0
    while connections is None or attempts < connections:
        attempts += 1
        try:
            async with open_websocket_url(url, subprotocols=[f"tripwire.v1.{encoding}"]) as ws:
                log.info("feed connected")
                backoff = 0.1
                while True:
                    frame = await ws.get_message()
                    try:
                        batch = codec.decode(frame)
                    except ProtocolError as exc:
                        log.warning("bad feed frame skipped", code=exc.code, error=exc.message)
                        continue
                    if isinstance(batch, QuoteBatch):
                        sink(batch.quotes, batch.sent_ms)
        except (ConnectionClosed, HandshakeError, OSError) as exc:
            log.warning("feed disconnected; reconnecting", error=str(exc), backoff_s=backoff)
        await trio.sleep(backoff)
        backoff = min(max_backoff, backoff * 2)
