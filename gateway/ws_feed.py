"""``/ws/feed``: an upstream publisher pushes quote batches into the node.

Only a publisher holding the feed token (``TRIPWIRE_FEED_TOKEN``, compared in constant time,
``?token=`` or ``Authorization: Bearer``) may connect; with no token configured the endpoint is
closed. Frames are :class:`~protocol.feed.QuoteBatch` (JSON or msgpack, by subprotocol). A
malformed frame (an empty one included), or one over a limit, gets one error frame
(:class:`~protocol.feed.FeedError`, the limit in its details) and then the close, with the
matching code and a reason naming what was wrong, the broken limit included (for a publisher
that reads no frames): a feed that sends garbage is not trusted to send prices.
Quotes for symbols the node does not trade are counted and ignored; the symbol actors validate
the rest. A batch's ``sent_ms`` (the publisher's clock) is taken as the quotes' arrival when it
is earlier than the node's own time: see :meth:`~actors.node.Node.offer_quotes`.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from actors import tracing
from gateway.auth import bearer_token
from gateway.closing import close_quietly, send_quietly
from gateway.wsdirect import DirectWebSocket
from protocol.closecodes import CloseCode, close_code_for, truncate_reason
from protocol.codec import encoding_of, feed_codec, negotiate, sniff_encoding
from protocol.errors import DecodeError, ProtocolError
from protocol.feed import MAX_QUOTES_PER_BATCH, FeedError, QuoteBatch
from protocol.redaction import peer_error

if TYPE_CHECKING:
    from gateway.context import GatewayContext

__all__ = ["serve_feed"]


def _quart_websocket() -> Any:
    from quart import websocket

    return websocket._get_current_object()  # type: ignore[attr-defined]


def _token_ok(expected: str | None, presented: str | None) -> bool:
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def _feed_reason(exc: ProtocolError) -> str:
    """The close reason of a bad feed frame: its code and what was wrong, the limit it broke
    included (``malformed: Expected `array` of length <= 10000 - at `$.quotes```), for a
    publisher that reads no frames (the error frame before it says the same). It holds the
    feed token, so it may see the message a device or a client is not shown."""
    return truncate_reason(f"{exc.code}: {exc.message}" if exc.message else exc.code)


def _feed_error(exc: ProtocolError, encoding: str) -> str | bytes:
    """The error frame of a bad feed frame, in the connection's encoding (JSON text when it is
    not known yet). A batch of too many quotes gets the count's limit in its details too."""
    code, message, details = peer_error(exc)
    details = dict(details or {})
    if isinstance(exc, DecodeError) and details.get("path") == "$.quotes" and "length" in message:
        details["limit"] = MAX_QUOTES_PER_BATCH
    error = FeedError(code=code, message=message, details=details or None)
    if encoding == "msgpack":
        return msgspec.msgpack.encode(error)
    return msgspec.json.encode(error).decode()


async def serve_feed(ctx: GatewayContext, ws: Any = None) -> None:
    """The ``/ws/feed`` handler, on ``ws`` (``gateway.wsdirect``) or Quart's ``websocket``."""
    websocket = ws if ws is not None else _quart_websocket()
    log = structlog.get_logger().bind(endpoint="ws/feed", remote=websocket.remote_addr)
    subprotocol = negotiate(websocket.requested_subprotocols)
    await websocket.accept(subprotocol=subprotocol)
    header = websocket.headers.get("Authorization", "")
    presented = websocket.args.get("token") or bearer_token(header)
    if not _token_ok(ctx.settings.feed_token, presented):
        ctx.counters.handshake("feed_unauthorized")
        await close_quietly(websocket, CloseCode.POLICY_VIOLATION, "unauthorized", log)
        return
    log.info("feed publisher connected")
    # Its quotes are read before other connections' bookkeeping (gateway.feed_first).
    direct = isinstance(websocket, DirectWebSocket)
    if direct:
        ctx.feed_first.add(websocket)
    try:
        await _read_quotes(ctx, websocket, subprotocol, log)
    finally:
        if direct:
            ctx.feed_first.remove(websocket)


async def _read_quotes(
    ctx: GatewayContext, websocket: Any, subprotocol: str | None, log: Any
) -> None:
    """Offer every quote batch the publisher sends; a bad frame ends the connection."""
    codec = None
    while True:
        try:
            # Over the transport's size limit: raised here (gateway.wsdirect).
            frame = await websocket.receive()
            trace = tracing.TRACE
            if trace is not None:
                trace.frame_ns = tracing.now_ns()
            # The first frame may not tell its encoding (empty, or neither): that is a bad
            # frame like any other, so the sniffing is inside the try.
            if codec is None:
                encoding = encoding_of(subprotocol) if subprotocol else sniff_encoding(frame)
                codec = feed_codec(encoding, max_frame_bytes=ctx.settings.device_max_frame)
            batch = codec.decode(frame)
        except ProtocolError as exc:
            ctx.counters.bad_frame("feed_" + exc.code)
            log.info("bad feed frame", code=exc.code, reason=exc.message)
            if codec is not None:
                encoding = codec.encoding
            else:
                encoding = encoding_of(subprotocol) if subprotocol else "json"
            await send_quietly(websocket, _feed_error(exc, encoding), log)
            await close_quietly(websocket, close_code_for(exc), _feed_reason(exc), log)
            return
        if isinstance(batch, QuoteBatch):
            ctx.counters.feed_quotes += ctx.offer_quotes(batch.quotes, batch.sent_ms)
            if trace is not None:
                trace.handled(tracing.FEED, trace.frame_ns)
