"""``/ws/client``: a user's live view (the dashboard, an app).

The client authenticates with a JWT (``?token=`` or ``Authorization: Bearer``), sends a
``subscribe``, gets a ``snapshot`` of its positions, account and devices, then coalesced deltas,
prices a few times a second and guard alerts. A user another node serves gets a ``moved``
frame and close 4301 instead of the snapshot (``protocol.redirects``). Each client has its own
bounded buffer: a client that cannot keep up (its buffer overruns repeatedly, or a send stalls
past ``SEND_TIMEOUT_S``) is closed with 1013 "try again later"; nobody else notices.

What a connection may cost is bounded (docs/operations.md, "Limits"):

* **Symbols**: only known instruments. A subscribe naming others gets a ``not_found`` error
  frame naming them; the rest of the frame applies and the stream stays open (a client built
  against another instrument list must not reconnect in a loop). A subscribe updates the
  stream's sets in place: its cost is the frame's, not the stream's.
* **Frames**: a token bucket per connection (``client_frame_rate`` a second, bursts of
  ``client_frame_burst``); past it the client gets ``rate_limited`` and a 1013 close.
* **Time**: a stream lasts as long as its token. At ``exp`` it gets ``expired`` and a 4001
  close (as a connection presenting an expired token does), unless the client sent an ``auth``
  frame with a later-expiring token of the same user first. Disabling the user ends its streams
  at once (``unauthorized``, 1008).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from gateway.closing import close_quietly, send_quietly
from gateway.placement import Local, moved_frame
from protocol.client import (
    Authenticated,
    ClientAuth,
    ClientPing,
    Pong,
    Subscribe,
    Unsubscribe,
)
from protocol.closecodes import CloseCode, close_code_for, close_reason
from protocol.codec import (
    WireCodec,
    client_server_codec,
    encoding_of,
    negotiate,
    sniff_encoding,
)
from protocol.errors import (
    AuthError,
    Forbidden,
    NotFound,
    ProtocolError,
    RateLimited,
    SignatureExpired,
    TripwireError,
    UnexpectedMessage,
)
from protocol.redaction import client_error

if TYPE_CHECKING:
    from actors.hub import Subscription
    from gateway.auth import Identity
    from gateway.context import GatewayContext

_LOG = structlog.get_logger().bind(endpoint="ws/client")

__all__ = ["CLIENT_PATH", "SEND_TIMEOUT_S", "serve_client"]

CLIENT_PATH = "/ws/client"

SEND_TIMEOUT_S = 5.0
SUBSCRIBE_TIMEOUT_S = 10.0
_NAMED_IN_ERROR = 8
"""Unknown symbols an error message names (a frame may hold 64 of up to 32 characters)."""


class _Stream:
    """What one connection knows besides its subscription: whose it is, until when, and how
    many frames it may still send."""

    def __init__(self, identity: Identity, rate: float, burst: int) -> None:
        self.user_id = identity.user_id
        self.expires_at = identity.expires_at
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = trio.current_time()

    def take_frame(self) -> bool:
        """Spend one frame of the budget; False once it is spent (the client floods)."""
        now = trio.current_time()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


async def _close_with(
    websocket: Any, codec: WireCodec[Any, Any] | None, exc: TripwireError, code: int | None = None
) -> None:
    # A client that leaves as it reads the error races our close (gateway.closing): quietly.
    if codec is not None:
        await send_quietly(websocket, codec.encode(client_error(exc)), _LOG)
    code = close_code_for(exc) if code is None else code
    await close_quietly(websocket, code, close_reason(exc), _LOG)


def _authenticate(ctx: GatewayContext, token: str | None, header: str | None) -> Identity:
    """The identity of the connection's token, of a user who is still active."""
    identity = ctx.tokens.verify(token) if token else ctx.tokens.verify_header(header)
    if not ctx.registry.is_active(identity.user_id):
        raise AuthError("the account is disabled")
    return identity


def _quart_websocket() -> Any:
    from quart import websocket

    return websocket._get_current_object()  # type: ignore[attr-defined]


async def serve_client(ctx: GatewayContext, ws: Any = None) -> None:
    """The ``/ws/client`` handler, on ``ws`` (``gateway.wsdirect``) or Quart's ``websocket``."""
    websocket = ws if ws is not None else _quart_websocket()
    log = structlog.get_logger().bind(endpoint="ws/client", remote=websocket.remote_addr)
    subprotocol = negotiate(websocket.requested_subprotocols)
    await websocket.accept(subprotocol=subprotocol)
    token = websocket.args.get("token")
    header = websocket.headers.get("Authorization")
    codec: WireCodec[Any, Any] | None = None
    try:
        identity = _authenticate(ctx, token, header)
        with trio.fail_after(SUBSCRIBE_TIMEOUT_S):
            first = await websocket.receive()
        encoding = encoding_of(subprotocol) if subprotocol else sniff_encoding(first)
        codec = client_server_codec(encoding, max_frame_bytes=ctx.settings.client_max_frame)
        request = codec.decode(first)
        if not isinstance(request, Subscribe):
            raise UnexpectedMessage("the first frame must be a subscribe")
    except trio.TooSlowError:
        await close_quietly(websocket, CloseCode.HANDSHAKE_TIMEOUT, "no subscribe in time", _LOG)
        return
    except TripwireError as exc:
        if isinstance(exc, AuthError):
            ctx.counters.handshake("client_" + exc.code)
        await _close_with(websocket, codec, exc)
        return
    log = log.bind(user_id=identity.user_id)
    placement = ctx.ownership.locate(identity.user_id)
    if not isinstance(placement, Local):
        # After the token verified (a stranger learns nothing of placement); the frame is in
        # the encoding the subscribe chose.
        ctx.counters.handshake("client_moved")
        frame = moved_frame(placement, CLIENT_PATH)
        log.info("client moved", url=frame.url, partition=frame.partition, epoch=frame.epoch)
        await send_quietly(websocket, codec.encode(frame), log)
        await close_quietly(websocket, CloseCode.MOVED, "moved", log)
        return
    stream = _Stream(identity, ctx.settings.client_frame_rate, ctx.settings.client_frame_burst)
    hub = ctx.node.hub
    sub, snapshot = await hub.subscribe(identity.user_id, request.channels)
    ctx.counters.clients_connected += 1
    log.info("client subscribed", channels=sorted(sub.channels))
    try:
        if not ctx.registry.is_active(identity.user_id):
            # Disabled while the subscribe was on its way: the disable found no stream to end.
            await _close_with(websocket, codec, AuthError("the account is disabled"))
            return
        _refuse_unknown(sub, hub.update(sub, symbols=request.symbols))
        await websocket.send(codec.encode(snapshot))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _write, websocket, codec, sub, nursery.cancel_scope, log, ctx.feed_first.defer
            )
            nursery.start_soon(_guard, websocket, codec, sub, stream, nursery.cancel_scope, log)
            await _read(ctx, websocket, codec, sub, stream, log)
            nursery.cancel_scope.cancel()
    finally:
        ctx.counters.clients_connected -= 1
        if sub.dropped:
            ctx.counters.clients_dropped += 1
        hub.unsubscribe(sub)


def _refuse_unknown(sub: Subscription, refused: list[str]) -> None:
    """Tell the client which symbols were not added (one error frame: repeats coalesce)."""
    if not refused:
        return
    named = ", ".join(refused[:_NAMED_IN_ERROR])
    more = f" and {len(refused) - _NAMED_IN_ERROR} more" if len(refused) > _NAMED_IN_ERROR else ""
    error = NotFound(f"not a known instrument, not subscribed: {named}{more}", reason="symbol")
    sub.buffer.offer(("error", error.code), client_error(error))


async def _guard(
    websocket: Any,
    codec: WireCodec[Any, Any],
    sub: Subscription,
    stream: _Stream,
    scope: trio.CancelScope,
    log: Any,
) -> None:
    """End the stream when its token expires or when it is ended from outside (a disabled
    user). A renewal only moves the expiry later, so sleeping until the one seen is enough."""
    reason: TripwireError
    while True:
        if sub.moved is not None:  # the user left this node: where to reconnect, then 4301
            log.info("client moved", url=sub.moved.url, partition=sub.moved.partition)
            await send_quietly(websocket, codec.encode(sub.moved), log)
            await close_quietly(websocket, CloseCode.MOVED, "moved", log)
            scope.cancel()
            return
        if sub.ended_by is not None:
            reason = sub.ended_by
            break
        left = stream.expires_at - time.time()  # exp is wall-clock time, as the token's check
        if left <= 0:
            reason = SignatureExpired("the access token has expired: log in again")
            break
        with trio.move_on_after(left):
            await sub.ended.wait()
    log.info("client stream ended", code=reason.code)
    await _close_with(websocket, codec, reason)
    scope.cancel()


async def _write(
    websocket: Any,
    codec: WireCodec[Any, Any],
    sub: Subscription,
    scope: trio.CancelScope,
    log: Any,
    defer: Callable[[], Awaitable[None]],
) -> None:
    """Send what the hub buffered; drop the client when it falls behind.

    On a direct socket (``gateway.wsdirect``) a batch (a burst's deltas) leaves in one write,
    one frame per message; through Quart each message is a send of its own. A quote already
    at the node is read first (``defer``: ``gateway.feed_first``).
    """
    send_many = getattr(websocket, "send_many", None)
    while True:
        batch = await sub.buffer.get_batch()
        await defer()
        if sub.dropped:
            log.info("slow client dropped", overruns=sub.buffer.overruns)
            await close_quietly(websocket, CloseCode.TRY_AGAIN_LATER, "too slow: reconnect", log)
            scope.cancel()
            return
        with trio.move_on_after(SEND_TIMEOUT_S) as stalled:
            if send_many is not None:
                await send_many([codec.encode(message) for message in batch])
            else:
                for message in batch:
                    await websocket.send(codec.encode(message))
                    stalled.deadline = trio.current_time() + SEND_TIMEOUT_S
        if stalled.cancelled_caught:
            sub.buffer.closed = True
            log.info("stalled client dropped")
            await close_quietly(websocket, CloseCode.TRY_AGAIN_LATER, "too slow: reconnect", log)
            scope.cancel()
            return


def _renew(ctx: GatewayContext, stream: _Stream, token: str) -> Authenticated:
    """Run the stream on ``token`` from now on.

    Raises:
        AuthError: the token does not verify, has expired, or its user is disabled.
        Forbidden: the token is another user's, or expires no later than the current one.
    """
    fresh = ctx.tokens.verify(token)
    if fresh.user_id != stream.user_id:
        raise Forbidden("the token is for another user")
    if not ctx.registry.is_active(fresh.user_id):
        raise AuthError("the account is disabled")
    if fresh.expires_at <= stream.expires_at:
        raise Forbidden("the token does not expire later than the stream's")
    stream.expires_at = fresh.expires_at
    return Authenticated(expires_at_ms=fresh.expires_at * 1000)


async def _read(
    ctx: GatewayContext,
    websocket: Any,
    codec: WireCodec[Any, Any],
    sub: Subscription,
    stream: _Stream,
    log: Any,
) -> None:
    """Serve pings, (un)subscriptions and renewals until the client goes away."""
    hub = ctx.node.hub
    while True:
        frame = await websocket.receive()
        if not stream.take_frame():
            ctx.counters.bad_frame("client_" + RateLimited.code)
            log.info("flooding client closed")
            limit = RateLimited(
                "too many frames: reconnect and send fewer",
                limit=ctx.settings.client_frame_burst,
            )
            await _close_with(websocket, codec, limit, CloseCode.TRY_AGAIN_LATER)
            return
        try:
            message = codec.decode(frame)
        except ProtocolError as exc:
            ctx.counters.bad_frame("client_" + exc.code)
            log.info("bad client frame", code=exc.code)
            await _close_with(websocket, codec, exc)
            return
        if isinstance(message, ClientPing):
            pong = Pong(seq=message.seq, time_ms=ctx.clock.now_ms())
            sub.buffer.offer(("pong", message.seq), pong)
        elif isinstance(message, Subscribe):
            _refuse_unknown(sub, hub.update(sub, message.channels, message.symbols))
        elif isinstance(message, Unsubscribe):
            sub.channels.difference_update(message.channels)
        elif isinstance(message, ClientAuth):
            try:
                sub.buffer.offer(("auth",), _renew(ctx, stream, message.token))
            except (AuthError, Forbidden) as exc:  # the stream keeps its current token
                log.info("client token renewal refused", code=exc.code)
                sub.buffer.offer(("error", exc.code), client_error(exc))
