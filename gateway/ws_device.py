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
   A hello signed before the nonce memory could have seen it (a restart without Redis, a
   Redis outage) is refused as ``stale_hello``: see ``protocol.nonces``.
3. If another node serves the device's user (``ctx.ownership``), the EA gets a ``moved`` frame
   naming it and close 4301 (``protocol.redirects``), only now that the hello has verified.
4. The device actor opens the session (replacing any other of the same device) and sends the
   ``welcome``; from then on frames are decoded and handed to the actor, commands leave signed
   with the session key, and, if the EA asked for it, every frame after the welcome is
   AES-GCM sealed.

A malformed frame (an empty one included) gets an ``error`` frame and the connection is closed
with the matching code; an oversized one is refused by the server with 1009 before it is
buffered. On an encrypted session a frame that does not open (forged, replayed, not binary)
gets an error frame and close 1008. A device silent for ``heartbeat_s`` is pinged, one silent
for ``stale_after_s`` is closed with 4004 (both as the welcome announced).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
import trio

from actors import tracing
from gateway.closing import CLOSE_TIMEOUT_S, PEER_GONE, close_quietly, send_quietly
from gateway.placement import Elsewhere, Local, Unowned, moved_frame
from protocol.closecodes import CloseCode, close_code_for, close_reason
from protocol.codec import (
    Frame,
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
    DecodeError,
    FrameTooLarge,
    PeerError,
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

__all__ = ["DEVICE_PATH", "WebSocketDeviceLink", "serve_device"]

DEVICE_PATH = "/ws/device"

_COMMANDS = Command.__args__


class WebSocketDeviceLink:
    """Sends server messages to one EA: encoded, commands signed, frames sealed if asked.

    Two tasks send on a session: the device actor's writer (commands, pings) and the reader
    (an error frame before a close). A lock makes each send, sealing included, one step: with
    encryption the frames reach the wire in counter order (the EA refuses a lower counter),
    and a close never interleaves with a frame. After :meth:`close` nothing more is sent.
    """

    def __init__(
        self,
        ws: Any,
        codec: WireCodec[Any, Any],
        session_key: bytes,
        cipher: FrameCipher | None,
        log: Any = None,
    ) -> None:
        self.ws = ws
        self.codec = codec
        self.session_key = session_key
        self.cipher = cipher
        self.sent = 0
        self.closed = False
        self.log = log if log is not None else structlog.get_logger()
        self._lock = trio.Lock()

    async def send(self, message: ServerMessage) -> None:
        """Send one message; raises ``trio.ClosedResourceError`` once the link is closed (and
        whatever the transport raises when the peer is gone)."""
        await self.send_many([message])

    async def send_many(self, messages: list[ServerMessage]) -> None:
        """Send several messages in order, one frame each, under one hold of the lock.

        The writer hands over a whole outbox batch (a burst's closes for this device): taking
        the lock once instead of per frame saves a scheduler round per frame, and a round is
        what a frame waits for when many sessions are busy (``bench.e2e``'s ``writer`` hop).
        """
        signed = [
            sign_command(m, self.session_key) if isinstance(m, _COMMANDS) else m for m in messages
        ]
        async with self._lock:
            if self.closed:
                raise trio.ClosedResourceError("the device link is closed")
            frames = self._frames(signed)
            send_many = getattr(self.ws, "send_many", None)
            if send_many is not None:  # gateway.wsdirect: the frames leave in one write
                await send_many(frames)
            else:
                for data in frames:
                    await self.ws.send(data)
            self.sent += len(frames)

    def send_many_nowait(self, messages: list[ServerMessage]) -> int:
        """Send now, in the caller's task, if the transport can (``gateway.wsdirect``) and no
        send is under way: 0 nothing was sent (queue the messages for the writer), 1 all were
        handed to the kernel, 2 they were, partly through a backlog: the writer must call
        :meth:`flush`. Frames are sealed only once they are sure to leave, so the cipher's
        counters reach the wire in order."""
        ws = self.ws
        can = getattr(ws, "can_send_nowait", None)
        if can is None or self.closed or self._lock.locked() or not can():
            return 0
        signed = [
            sign_command(m, self.session_key) if isinstance(m, _COMMANDS) else m for m in messages
        ]
        frames = self._frames(signed)
        self.sent += len(frames)
        return 1 if ws.send_many_nowait(frames) else 2

    def _frames(self, signed: list[ServerMessage]) -> list[bytes | str]:
        """Encoded (and sealed, on an encrypted session) frames, in order."""
        frames: list[bytes | str] = []
        for message in signed:
            data = self.codec.encode(message)
            if self.cipher is not None and not isinstance(message, Welcome):
                data = self.cipher.seal(data)
            frames.append(data)
        return frames

    async def flush(self) -> None:
        """Write what :meth:`send_many_nowait` left behind."""
        async with self._lock:
            if not self.closed:
                await self.ws.flush()

    async def close(self, code: int, reason: str) -> None:
        """Close once (later calls do nothing); a peer already leaving is not an error."""
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            async with self._lock:
                if self.closed:
                    return
                self.closed = True
                await close_quietly(self.ws, code, reason, self.log)


async def _refuse(
    ctx: GatewayContext,
    websocket: Any,
    codec: WireCodec[Any, Any] | None,
    exc: TripwireError,
    log: Any,
) -> None:
    """Tell the EA why (an error frame), close with the matching code, count it.

    When the first frame did not even tell the encoding (empty, or neither JSON nor msgpack,
    on a connection that offered no subprotocol) the error frame is JSON: a text frame anyone
    can read.
    """
    ctx.counters.handshake(exc.code)
    log.info("device refused", code=exc.code, reason=exc.message)
    codec = codec or device_server_codec("json")
    await send_quietly(websocket, codec.encode(device_error(exc, fatal=True)), log)
    await close_quietly(websocket, close_code_for(exc), close_reason(exc), log)


async def _redirect(
    ctx: GatewayContext,
    websocket: Any,
    codec: WireCodec[Any, Any],
    placement: Elsewhere | Unowned,
    log: Any,
) -> None:
    """Tell the EA which node serves its user (a ``moved`` frame), close with 4301, count it."""
    ctx.counters.handshake("moved")
    frame = moved_frame(placement, DEVICE_PATH)
    log.info("device moved", url=frame.url, partition=frame.partition, epoch=frame.epoch)
    await send_quietly(websocket, codec.encode(frame), log)
    await close_quietly(websocket, CloseCode.MOVED, "moved", log)


def _quart_websocket() -> Any:
    from quart import websocket

    return websocket._get_current_object()  # type: ignore[attr-defined]


async def serve_device(ctx: GatewayContext, ws: Any = None) -> None:
    """The ``/ws/device`` handler, on ``ws`` (``gateway.wsdirect``) or Quart's ``websocket``."""
    websocket = ws if ws is not None else _quart_websocket()
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
        await close_quietly(websocket, CloseCode.HANDSHAKE_TIMEOUT, "no hello in time", log)
        return
    except FrameTooLarge as exc:  # over the transport's limit (gateway.wsdirect)
        told = device_server_codec(encoding_of(subprotocol)) if subprotocol else None
        await _refuse(ctx, websocket, told, exc, log)
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
        # signed_ms: a memory that cannot have seen this hello's first use refuses it
        # (stale_hello) rather than take it for new: see protocol.nonces.
        fresh = await ctx.nonces.check_and_add(
            nonce_key(hello.device_id, hello.nonce),
            now,
            replay_ttl_ms(settings.handshake_window_ms),
            signed_ms=hello.ts_ms,
        )
        if not fresh:
            raise ReplayDetected("this hello was already used")
        owner = ctx.registry.device_owner(hello.device_id)
        if owner is None:
            raise UnknownPrincipal("unknown device")
    except TripwireError as exc:
        await _refuse(ctx, websocket, codec, exc, log)
        return
    device_id = verified.device_id
    log = log.bind(device_id=device_id)
    placement = ctx.ownership.locate(owner)
    if not isinstance(placement, Local):
        # Only now, after the signature and the nonce: a stranger learns nothing of placement.
        await _redirect(ctx, websocket, codec, placement, log)
        return
    ctx.counters.handshake("ok")
    await _run_session(ctx, websocket, codec, verified, log)


def _sealed(frame: Frame) -> bytes | bytearray | memoryview:
    """The bytes of a frame on an encrypted session, which must be a non-empty binary frame."""
    if not frame or isinstance(frame, str):
        raise DecodeError("an encrypted session takes sealed binary frames", reason="frame_type")
    return frame


async def _end_on_bad_frame(
    ctx: GatewayContext, link: WebSocketDeviceLink, exc: PeerError, code: int, log: Any
) -> None:
    """Count and log a bad frame, tell the EA (an error frame), close with ``code``."""
    ctx.counters.bad_frame(exc.code)
    log.warning("bad device frame", code=exc.code, reason=exc.message, close_code=int(code))
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        try:
            await link.send(device_error(exc, fatal=True))
        except PEER_GONE as gone:
            log.debug("could not send the error frame", error=repr(gone))
    await link.close(code, close_reason(exc))


async def _run_session(
    ctx: GatewayContext, websocket: Any, codec: WireCodec[Any, Any], verified: Any, log: Any
) -> None:
    actor = ctx.node.device(verified.device_id)
    link = WebSocketDeviceLink(websocket, codec, verified.session_key, None, log)
    session = await actor.open_session(verified.body, link)
    if ctx.registry.device_owner(verified.device_id) is None:
        # Revoked, or its user disabled, while this handshake was under way: the request that
        # did it ended the sessions open then, and this one was not open yet. Now it is, so
        # whatever disables next ends it too; this check closes the gap before.
        log.info("device refused after its handshake: revoked or its user disabled meanwhile")
        await actor.end_session(CloseCode.POLICY_VIOLATION, "device or user disabled")
        actor.close_session(session)
        return
    cipher = None
    if verified.body.encryption:
        # One cipher for both directions (it keeps a counter for each). The welcome left in
        # clear; nothing else can have left yet: commands wait for the device's snapshot.
        cipher = FrameCipher(verified.session_key, "server", session_id=session.session_id)
        link.cipher = cipher
    ctx.counters.devices_connected += 1
    log.info("device connected", session_id=session.session_id, encoding=codec.encoding)
    # Dead-peer detection, with the periods the welcome announced: after heartbeat_s without
    # a frame the server pings (the EA answers with a heartbeat), after stale_after_s without
    # one it closes with 4004. TCP alone can take many minutes to notice a peer that vanished
    # (a terminal frozen, a NAT entry dropped), and until then the device looks connected.
    config = ctx.node.config
    ping_every_s = float(config.heartbeat_s)
    dead_after_s = config.device_stale_ms / 1000
    heard = trio.current_time()
    next_ping = heard + ping_every_s
    pings = 0
    feed_first = ctx.feed_first
    try:
        while not session.closed.is_set():
            frame: Frame = None
            received = False
            with trio.move_on_at(min(next_ping, heard + dead_after_s)):
                try:
                    frame = await websocket.receive()
                except FrameTooLarge as exc:  # over the transport's limit (gateway.wsdirect)
                    await _end_on_bad_frame(ctx, link, exc, close_code_for(exc), log)
                    return
                received = True
            if not received:
                now = trio.current_time()
                if now >= heard + dead_after_s:
                    ctx.counters.device_timeouts += 1
                    log.info("device silent: closing", silent_s=round(now - heard, 1))
                    await link.close(CloseCode.HEARTBEAT_TIMEOUT, "no frame within stale_after_s")
                    return
                pings += 1
                actor.ping(session, pings)
                next_ping = now + ping_every_s
                continue
            heard = trio.current_time()
            next_ping = heard + ping_every_s
            # An ack can wait for a quote that is already here (gateway.feed_first).
            await feed_first.defer()
            trace = tracing.TRACE
            read_ns = tracing.now_ns() if trace is not None else 0
            # A frame that does not open ends an encrypted session with 1008, whatever the
            # reason (forged, replayed, reordered, truncated, not binary): docs/protocol.md.
            close_code: int | None = CloseCode.POLICY_VIOLATION if cipher is not None else None
            try:
                if cipher is not None:
                    frame = cipher.open(_sealed(frame))
                    close_code = None
                message = codec.decode(frame)
                if isinstance(message, Hello):
                    raise UnexpectedMessage("hello is only valid as the first frame")
            except PeerError as exc:
                code = close_code if close_code is not None else close_code_for(exc)
                await _end_on_bad_frame(ctx, link, exc, code, log)
                return
            ctx.counters.device_frames += 1
            if ctx.settings.log_frames:
                log.debug("device frame", frame=for_log(message))
            actor.inbound(session, message)
            if trace is not None:
                trace.handled(tracing.DEVICE, read_ns)
    finally:
        ctx.counters.devices_connected -= 1
        actor.close_session(session)
        log.info("device disconnected", session_id=session.session_id)
