"""``/ws/device``: where Expert Advisors connect.

A session (docs/protocol.md has the whole story for EA authors):

1. The WebSocket is accepted with the subprotocol the EA offered (``tripwire.v1.json`` or
   ``tripwire.v1.msgpack``); with none, the first frame's type decides.
2. The first frame must be a signed ``hello`` within the handshake timeout. It is verified
   against the device's secrets (several may be valid during a rotation), its timestamp must be
   inside the window and its nonce new (the nonce cache is shared through Redis when several
   nodes run). Any failure is answered with an ``error`` frame and the matching close code, and
   counted by reason; the device learns no more than that (an unknown device and a wrong secret
   get the same answer).
3. The device actor opens the session (replacing any other of the same device) and sends the
   ``welcome``; from then on frames are decoded and handed to the actor, commands leave signed
   with the session key, and, if the EA asked for it, every frame after the welcome is
   AES-GCM sealed.

A malformed frame gets an ``error`` frame and the connection is closed with the matching code;
an oversized one is refused by the server with 1009 before it is buffered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
import trio
from quart import websocket

from protocol.closecodes import CloseCode, close_code_for, close_reason
from protocol.codec import (
    WireCodec,
    device_server_codec,
    encoding_of,
    negotiate,
    negotiate_version,
    sniff_encoding,
)
from protocol.crypto import FrameCipher
from protocol.device import Command, Hello, ServerMessage, Welcome
from protocol.errors import (
    ProtocolError,
    ReplayDetected,
    TripwireError,
    UnexpectedMessage,
    UnknownPrincipal,
)
from protocol.nonces import nonce_key, replay_ttl_ms
from protocol.redaction import device_error, for_log
from protocol.session import sign_command
from protocol.signing import verify_hello

if TYPE_CHECKING:
    from gateway.context import GatewayContext

__all__ = ["WebSocketDeviceLink", "serve_device"]

_COMMANDS = Command.__args__  # type: ignore[attr-defined]


class WebSocketDeviceLink:
    """Sends server messages to one EA: encoded, commands signed, frames sealed if asked."""

    def __init__(
        self, ws: Any, codec: WireCodec[Any, Any], session_key: bytes, cipher: FrameCipher | None
    ) -> None:
        self.ws = ws
        self.codec = codec
        self.session_key = session_key
        self.cipher = cipher
        self.sent = 0

    async def send(self, message: ServerMessage) -> None:
        if isinstance(message, _COMMANDS):
            message = sign_command(message, self.session_key)
        data = self.codec.encode(message)
        if self.cipher is not None and not isinstance(message, Welcome):
            data = self.cipher.seal(data)
        await self.ws.send(data)
        self.sent += 1

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)


async def _refuse(
    ctx: GatewayContext, codec: WireCodec[Any, Any] | None, exc: TripwireError, log: Any
) -> None:
    """Tell the EA why (an error frame), close with the matching code, count it."""
    ctx.counters.handshake(exc.code)
    log.info("device refused", code=exc.code, reason=exc.message)
    if codec is not None:
        try:
            await websocket.send(codec.encode(device_error(exc, fatal=True)))
        except Exception as send_failed:  # the peer may already be gone
            log.debug("could not send the error frame", error=str(send_failed))
    await websocket.close(close_code_for(exc), close_reason(exc))


async def serve_device(ctx: GatewayContext) -> None:
    """The ``/ws/device`` handler."""
    remote = websocket.remote_addr or ""
    log = structlog.get_logger().bind(endpoint="ws/device", remote=remote)
    subprotocol = negotiate(websocket.requested_subprotocols)
    await websocket.accept(subprotocol=subprotocol)
    codec: WireCodec[Any, Any] | None = None
    settings = ctx.settings
    try:
        with trio.fail_after(settings.handshake_timeout_s):
            first = await websocket.receive()
    except trio.TooSlowError:
        ctx.counters.handshake("handshake_timeout")
        await websocket.close(CloseCode.HANDSHAKE_TIMEOUT, "no hello in time")
        return
    try:
        encoding = encoding_of(subprotocol) if subprotocol else sniff_encoding(first)
        codec = device_server_codec(encoding, max_frame_bytes=settings.device_max_frame)
        hello = codec.decode(first)
        if not isinstance(hello, Hello):
            raise UnexpectedMessage("the first frame must be a hello")
        negotiate_version(hello.v)
        secrets = ctx.registry.device_secrets(hello.device_id)
        now = ctx.clock.now_ms()
        verified = verify_hello(hello, secrets, now, settings.handshake_window_ms)
        fresh = await ctx.nonces.check_and_add(
            nonce_key(hello.device_id, hello.nonce),
            now,
            replay_ttl_ms(settings.handshake_window_ms),
        )
        if not fresh:
            raise ReplayDetected("this hello was already used")
        if ctx.registry.device_owner(hello.device_id) is None:
            raise UnknownPrincipal("unknown device")
    except TripwireError as exc:
        await _refuse(ctx, codec, exc, log)
        return
    device_id = verified.device_id
    log = log.bind(device_id=device_id)
    ctx.counters.handshake("ok")
    await _run_session(ctx, codec, verified, log)


async def _run_session(
    ctx: GatewayContext, codec: WireCodec[Any, Any], verified: Any, log: Any
) -> None:
    actor = ctx.node.device(verified.device_id)
    ws = websocket._get_current_object()  # type: ignore[attr-defined]
    link = WebSocketDeviceLink(ws, codec, verified.session_key, None)
    session = await actor.open_session(verified.body, link)
    cipher = None
    if verified.body.encryption:
        # One cipher for both directions (it keeps a counter for each). The welcome left in
        # clear; nothing else can have left yet: commands wait for the device's snapshot.
        cipher = FrameCipher(verified.session_key, "server", session_id=session.session_id)
        link.cipher = cipher
    ctx.counters.devices_connected += 1
    log.info("device connected", session_id=session.session_id, encoding=codec.encoding)
    try:
        while not session.closed.is_set():
            frame = await websocket.receive()
            try:
                if cipher is not None:
                    frame = cipher.open(frame if isinstance(frame, bytes) else frame.encode())
                message = codec.decode(frame)
                if isinstance(message, Hello):
                    raise UnexpectedMessage("hello is only valid as the first frame")
            except ProtocolError as exc:
                ctx.counters.bad_frame(exc.code)
                log.warning("bad device frame", code=exc.code, reason=exc.message)
                await link.send(device_error(exc, fatal=True))
                await websocket.close(close_code_for(exc), close_reason(exc))
                return
            ctx.counters.device_frames += 1
            if ctx.settings.log_frames:
                log.debug("device frame", frame=for_log(message))
            actor.inbound(session, message)
    finally:
        ctx.counters.devices_connected -= 1
        actor.close_session(session)
        log.info("device disconnected", session_id=session.session_id)
