"""``/ws/client``: a user's live view (the dashboard, an app).

The client authenticates with a JWT (``?token=`` or ``Authorization: Bearer``), sends a
``subscribe``, gets a ``snapshot`` of its positions, account and devices, then coalesced deltas,
prices a few times a second and guard alerts. Each client has its own bounded buffer: a client
that cannot keep up (its buffer overruns repeatedly, or a send stalls past ``SEND_TIMEOUT_S``)
is closed with 1013 "try again later"; nobody else notices.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import structlog
import trio
from quart import websocket

from protocol.client import ClientPing, Pong, Subscribe, Unsubscribe
from protocol.closecodes import CloseCode, close_code_for, close_reason
from protocol.codec import (
    WireCodec,
    client_server_codec,
    encoding_of,
    negotiate,
    sniff_encoding,
)
from protocol.errors import AuthError, ProtocolError, TripwireError, UnexpectedMessage
from protocol.redaction import client_error

if TYPE_CHECKING:
    from actors.hub import Subscription
    from gateway.context import GatewayContext

__all__ = ["SEND_TIMEOUT_S", "serve_client"]

SEND_TIMEOUT_S = 5.0
SUBSCRIBE_TIMEOUT_S = 10.0


async def _close_with(codec: WireCodec[Any, Any] | None, exc: TripwireError) -> None:
    if codec is not None:
        with contextlib.suppress(Exception):
            await websocket.send(codec.encode(client_error(exc)))
    await websocket.close(close_code_for(exc), close_reason(exc))


async def serve_client(ctx: GatewayContext) -> None:
    """The ``/ws/client`` handler."""
    log = structlog.get_logger().bind(endpoint="ws/client", remote=websocket.remote_addr)
    subprotocol = negotiate(websocket.requested_subprotocols)
    await websocket.accept(subprotocol=subprotocol)
    token = websocket.args.get("token")
    header = websocket.headers.get("Authorization")
    codec: WireCodec[Any, Any] | None = None
    try:
        identity = ctx.tokens.verify(token) if token else ctx.tokens.verify_header(header)
        with trio.fail_after(SUBSCRIBE_TIMEOUT_S):
            first = await websocket.receive()
        encoding = encoding_of(subprotocol) if subprotocol else sniff_encoding(first)
        codec = client_server_codec(encoding, max_frame_bytes=ctx.settings.client_max_frame)
        request = codec.decode(first)
        if not isinstance(request, Subscribe):
            raise UnexpectedMessage("the first frame must be a subscribe")
    except trio.TooSlowError:
        await websocket.close(CloseCode.HANDSHAKE_TIMEOUT, "no subscribe in time")
        return
    except TripwireError as exc:
        if isinstance(exc, AuthError):
            ctx.counters.handshake("client_" + exc.code)
        await _close_with(codec, exc)
        return
    log = log.bind(user_id=identity.user_id)
    sub, snapshot = await ctx.node.hub.subscribe(
        identity.user_id, request.channels, request.symbols
    )
    ctx.counters.clients_connected += 1
    log.info("client subscribed", channels=sorted(sub.channels))
    try:
        await websocket.send(codec.encode(snapshot))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write, ctx, codec, sub, nursery.cancel_scope, log)
            await _read(ctx, codec, sub, log)
            nursery.cancel_scope.cancel()
    finally:
        ctx.counters.clients_connected -= 1
        if sub.dropped:
            ctx.counters.clients_dropped += 1
        ctx.node.hub.unsubscribe(sub)


async def _write(
    ctx: GatewayContext,
    codec: WireCodec[Any, Any],
    sub: Subscription,
    scope: trio.CancelScope,
    log: Any,
) -> None:
    """Send what the hub buffered; drop the client when it falls behind."""
    while True:
        batch = await sub.buffer.get_batch()
        if sub.dropped:
            log.info("slow client dropped", overruns=sub.buffer.overruns)
            await websocket.close(CloseCode.TRY_AGAIN_LATER, "too slow: reconnect")
            scope.cancel()
            return
        for message in batch:
            with trio.move_on_after(SEND_TIMEOUT_S) as stalled:
                await websocket.send(codec.encode(message))
            if stalled.cancelled_caught:
                sub.buffer.closed = True
                log.info("stalled client dropped")
                await websocket.close(CloseCode.TRY_AGAIN_LATER, "too slow: reconnect")
                scope.cancel()
                return


async def _read(
    ctx: GatewayContext, codec: WireCodec[Any, Any], sub: Subscription, log: Any
) -> None:
    """Serve pings and (un)subscriptions until the client goes away."""
    while True:
        frame = await websocket.receive()
        try:
            message = codec.decode(frame)
        except ProtocolError as exc:
            ctx.counters.bad_frame("client_" + exc.code)
            log.info("bad client frame", code=exc.code)
            await _close_with(codec, exc)
            return
        if isinstance(message, ClientPing):
            sub.buffer.offer(
                ("pong", message.seq), Pong(seq=message.seq, time_ms=ctx.clock.now_ms())
            )
        elif isinstance(message, Subscribe | Unsubscribe):
            channels = set(sub.channels)
            if isinstance(message, Subscribe):
                channels |= set(message.channels)
                sub.symbols = sub.symbols | frozenset(message.symbols)
            else:
                channels -= set(message.channels)
            sub.channels = frozenset(channels)
