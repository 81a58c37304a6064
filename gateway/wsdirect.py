"""A WebSocket served straight on its socket with wsproto: the device and feed endpoints.

``/ws/device`` and ``/ws/feed`` carry the tick path: a feed frame in, close commands out. Through
Quart-Trio and Hypercorn every frame crossed three tasks each way (the connection's reader,
Quart's message pump, the handler; on the way out the handler, Hypercorn's stream, its locked
socket writer), and each crossing waits for a turn of the scheduler. With a hundred busy
sessions a turn takes milliseconds, so a frame waited many of them (``bench.e2e``'s hops). Here
one task reads the socket, parses with wsproto and hands the message to the handler in the same
task; a send is framed here (:func:`data_frame`) and written by the sending task, and
:meth:`send_many` writes a whole batch of frames (a burst's closes for one device) with one
``send_all``. When nothing else is being written, :meth:`send_many_nowait` writes to the
kernel at once from synchronous code: the tick path puts a close on the wire in the call stack
of the quote that made it. On the way in, whole single data frames (a feed batch, an ack)
are unmasked here and only the rest (control frames, fragments, anything to refuse) goes
through wsproto (:meth:`_frames`); the socket is read when trio says it is readable, without
trio's stream around it (:meth:`_read`).

:class:`DirectWebSocket` has the surface of Quart's ``websocket`` that the handlers use
(``accept``, ``receive``, ``send``, ``close``, ``requested_subprotocols``, ``remote_addr``,
``headers``, ``args``), so ``gateway.ws_device`` and ``gateway.ws_feed`` serve either.
Behaviour kept from the Hypercorn path: a message over ``max_message`` bytes is refused before
it is buffered (here :meth:`DirectWebSocket.receive` raises ``FrameTooLarge``, so the handler
sends its error frame, with the limit, before it closes with 1009), a ping is answered, the
server pings every ``ping_interval_s``, a peer's close is answered, a handler that fails closes
with 1011.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog
import trio
from wsproto import WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from gateway.closing import CLOSE_TIMEOUT_S, PEER_GONE
from protocol.closecodes import CloseCode
from protocol.errors import FrameTooLarge

__all__ = ["DirectWebSocket", "data_frame", "parse_upgrade", "serve_upgraded"]

MAX_RECV = 1 << 16

Handler = Callable[["DirectWebSocket"], Awaitable[None]]


def data_frame(message: str | bytes) -> bytes:
    """``message`` as one server data frame: final, unmasked, uncompressed (RFC 6455, 5.2),
    text for ``str``. What wsproto makes of a whole message on a connection with no extension,
    in a tenth of its time (~0.26 against ~2.7 us for a close command, timeit): every close,
    ping and stream update leaves through here."""
    if isinstance(message, str):
        payload, first = message.encode(), 0x81
    else:
        payload, first = message, 0x82
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65_536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


class _Headers:
    """Request headers, looked up without regard to case (as Quart's)."""

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self._map = {k.decode("latin1").lower(): v.decode("latin1") for k, v in pairs}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._map.get(name.lower(), default)


def parse_upgrade(head: bytes) -> tuple[WSConnection, Request] | None:
    """A wsproto server connection and its handshake request, if ``head`` is a valid WebSocket
    upgrade (None otherwise: the bytes go to the HTTP server as they are)."""
    conn = WSConnection(ConnectionType.SERVER)
    try:
        conn.receive_data(head)
        event = next(iter(conn.events()), None)
    except RemoteProtocolError:
        return None
    return (conn, event) if isinstance(event, Request) else None


class DirectWebSocket:
    """One server-side WebSocket on a trio stream (see the module doc)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: WSConnection,
        request: Request,
        remote_addr: str,
        *,
        max_message: int,
        fast_frames: bool = True,
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.requested_subprotocols = list(request.subprotocols)
        self.remote_addr = remote_addr
        split = urlsplit(request.target)
        self.path = split.path
        self.args = dict(parse_qsl(split.query))
        self.headers = _Headers(list(request.extra_headers))
        self.max_message = max_message
        self.accepted = False
        self.closed = False
        """True once a close frame was sent (or the connection ended): nothing more is sent."""
        self._ended = False
        """True once the peer closed or the stream ended: nothing more is received."""
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        """The socket under a plain stream, read directly (:meth:`_read`); None under TLS."""
        self._fd = self._sock.fileno() if self._sock is not None else -1
        """The socket's descriptor for :meth:`send_many_nowait` (-1: TLS, not available)."""
        self._backlog = b""
        """Bytes :meth:`send_many_nowait` could not hand to the kernel: the next write's first."""
        self._messages: deque[str | bytes] = deque()
        self._too_large: FrameTooLarge | None = None
        """Set once a message went over ``max_message``: what :meth:`receive` raises then."""
        self._parts: list[str | bytes] = []
        self._size = 0
        self._lock = trio.Lock()
        self._fast = fast_frames
        """Whole data frames are parsed here, not by wsproto (see :meth:`_frames`). False when
        wsproto may hold bytes we did not give it a frame at a time (the upgrade's head came
        with more), or once a frame this path does not take whole was handed over."""
        self._rx = bytearray()
        """Bytes read that :meth:`_frames` has not yet taken (a frame not yet complete)."""
        self._in_fragments = False
        """wsproto holds the first frames of a fragmented message (its rest goes there too)."""

    # -- the handler's side ------------------------------------------------------------------

    async def accept(self, subprotocol: str | None = None) -> None:
        if not self.accepted:
            self.accepted = True
            await self._write(self.conn.send(AcceptConnection(subprotocol=subprotocol)))

    def fileno(self) -> int:
        """The socket's descriptor (-1 under TLS): ``gateway.feed_first`` polls a feed's."""
        return self._fd

    @property
    def buffered(self) -> bool:
        """Whole messages read and not yet returned by :meth:`receive`."""
        return bool(self._messages)

    async def receive(self) -> str | bytes:
        """The next message; raises ``trio.BrokenResourceError`` once the peer has closed.

        Raises:
            FrameTooLarge: the peer's next message is over ``max_message`` bytes (nothing more
                is read: the handler answers with its error frame and closes with 1009).
        """
        while not self._messages:
            if self._too_large is not None:
                raise self._too_large
            if self._ended:
                raise trio.BrokenResourceError("the peer closed the websocket")
            await self._read()
        return self._messages.popleft()

    async def send(self, data: str | bytes) -> None:
        """Send one message (text for ``str``); ``trio.ClosedResourceError`` once closed."""
        await self.send_many([data])

    async def send_many(self, messages: list[str | bytes]) -> None:
        """Send several messages, one frame each, in one write."""
        if self.closed:
            raise trio.ClosedResourceError("the websocket is closed")
        await self._write(self._framed(messages))

    def can_send_nowait(self) -> bool:
        """May :meth:`send_many_nowait` be called now (nothing else is being written)?"""
        return self._fd >= 0 and not self.closed and not self._lock.locked() and not self._backlog

    def send_many_nowait(self, messages: list[str | bytes]) -> bool:
        """Frame ``messages`` and hand them to the kernel now, in the caller's task; only when
        :meth:`can_send_nowait`. True: all written. False: some bytes wait in a backlog and
        the caller must make a task call :meth:`flush` (they are already framed: the next
        write sends them first, so order holds).

        This is the tick path's last step: a close command leaves in the call stack of the
        quote that made it, with no task to wake and no scheduler turn to wait for.
        """
        out = self._framed(messages)
        try:
            written = os.write(self._fd, out)
        except BlockingIOError:
            written = 0
        except OSError:
            written = 0  # the peer is gone: the flush's write reports it
        if written < len(out):
            self._backlog = out[written:]
            return False
        return True

    def _framed(self, messages: list[str | bytes]) -> bytes:
        conn = self.conn
        if conn.state is not ConnectionState.OPEN:  # wsproto refuses it, with its error
            return b"".join(
                conn.send(TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m))
                for m in messages
            )
        return b"".join(map(data_frame, messages))

    async def flush(self) -> None:
        """Write what :meth:`send_many_nowait` left in the backlog."""
        await self._write(b"")

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame once (later calls do nothing)."""
        if self.closed:
            return
        self.closed = True
        if self.conn.state is ConnectionState.OPEN:
            await self._write(self.conn.send(CloseConnection(code=code, reason=reason)))

    # -- the connection ----------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        # Writers (the device writer, a reader answering a ping, a close) take turns; the lock
        # is taken without a scheduler turn when free (the common case).
        lock = self._lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            if self._backlog:
                data, self._backlog = self._backlog + data, b""
            await self.stream.send_all(data)
        finally:
            lock.release()

    async def _read(self) -> None:
        # trio's receive_some tries a recv first (on an idle connection a failed syscall),
        # waits, reads, then passes through the scheduler once more: on this path a frame is
        # one wait and one recv (the cluster's Redis connection measured the same cut).
        sock = self._sock
        data: bytes | bytearray
        if sock is None:
            data = await self.stream.receive_some(MAX_RECV)
        else:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = os.read(self._fd, MAX_RECV)
            except BlockingIOError:
                return  # woken with nothing to read: the caller waits again
            except OSError as exc:
                raise trio.BrokenResourceError(f"reading the websocket failed: {exc}") from exc
        if not data:
            self._ended = True
            self.closed = True
            return
        if self._fast:
            await self._frames(data)
        else:
            await self._wsproto(data)

    async def _wsproto(self, data: bytes | bytearray) -> bool:
        """Feed wsproto and take its events; False once the connection is being failed."""
        conn = self.conn
        # wsproto declares ``bytes`` but only extends a bytearray with it: any buffer does.
        conn.receive_data(data)  # type: ignore[arg-type]
        try:
            # Lazily: a ping before a close in the same read is answered while still open.
            for event in conn.events():
                if not await self._on_event(event):
                    return False
        except RemoteProtocolError:
            await self._fail(CloseCode.PROTOCOL_ERROR, "websocket protocol error")
            return False
        return True

    async def _frames(self, data: bytes | bytearray) -> None:
        """Take the whole frames in what was read, in order.

        The tick path's frames (a feed batch in, a device's ack in) are single, masked data
        frames. wsproto parses each through a generator, an event object and its byte-at-a-time
        header reads: that was about a sixth of the engine's CPU in ``bench.e2e``. Such a frame
        is unmasked and queued here; any other frame (a ping, a close, a fragment, anything
        wsproto would refuse) goes to wsproto whole, so its state stays at a frame boundary.
        A frame over ``max_message``, unmasked, with reserved bits or text that is not UTF-8
        hands everything from it on to wsproto, for good: the failure is then wsproto's, with
        its close code, as before.
        """
        rx = self._rx
        rx += data
        n = len(rx)
        pos = 0
        messages = self._messages
        while n - pos >= 2 and not self._ended:
            b0, b1 = rx[pos], rx[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(rx[head : head + 2], "big")
                head += 2
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(rx[head : head + 8], "big")
                head += 8
            if not b1 & 0x80 or b0 & 0x70 or length > self.max_message:
                await self._hand_over(pos)
                return
            end = head + 4 + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if b0 & 0x80 and opcode in {1, 2} and not self._in_fragments:
                key = bytes(rx[head : head + 4]) * ((length >> 2) + 1)
                payload = (
                    int.from_bytes(rx[head + 4 : end], "little")
                    ^ int.from_bytes(key[:length], "little")
                ).to_bytes(length, "little")
                if opcode == 2:
                    messages.append(payload)
                else:
                    try:
                        messages.append(payload.decode())
                    except UnicodeDecodeError:
                        await self._hand_over(pos)
                        return
                pos = end
                continue
            if opcode <= 2:  # a fragment (or a protocol error wsproto will report)
                self._in_fragments = not b0 & 0x80
            frame = bytes(rx[pos:end])
            pos = end
            if not await self._wsproto(frame):
                rx.clear()
                return
        del rx[:pos]

    async def _hand_over(self, pos: int) -> None:
        """wsproto reads everything from ``pos`` on, and all that follows."""
        self._fast = False
        rest = bytes(self._rx[pos:])
        self._rx.clear()
        await self._wsproto(rest)

    async def _on_event(self, event: object) -> bool:
        """Take one wsproto event; False once the connection is being failed."""
        conn = self.conn
        if isinstance(event, Message):
            self._size += len(event.data)
            if self._size > self.max_message:
                # Not buffered, and nothing more read: the handler is told (receive raises) and
                # sends its own error frame, in its encoding, before the close it makes.
                self._too_large = FrameTooLarge(
                    f"over {self.max_message} bytes", size=self._size, limit=self.max_message
                )
                self._ended = True
                self._parts, self._size = [], 0
                return False
            self._parts.append(event.data)
            if event.message_finished:
                parts, self._parts, self._size = self._parts, [], 0
                if len(parts) == 1:
                    self._messages.append(parts[0])
                elif isinstance(parts[0], str):
                    self._messages.append("".join(parts))  # type: ignore[arg-type]
                else:
                    self._messages.append(b"".join(parts))  # type: ignore[arg-type]
        elif isinstance(event, Ping):
            if not self.closed and conn.state is ConnectionState.OPEN:
                await self._write(conn.send(event.response()))
        elif isinstance(event, CloseConnection):
            self._ended = True
            if conn.state is ConnectionState.REMOTE_CLOSING:
                self.closed = True
                await self._write(conn.send(event.response()))
        return True

    async def _fail(self, code: int, reason: str) -> None:
        self._ended = True
        self._messages.clear()
        await self.close(code, reason)

    async def _linger(self) -> None:
        """After our close frame: read until the peer's answer or the end (bounded)."""
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            while not self._ended:
                await self._read()

    async def _ping(self, every_s: float) -> None:
        while not self.closed:
            await trio.sleep(every_s)
            if self.closed:
                return
            await self._write(self.conn.send(Ping()))


async def refuse_upgrade(
    stream: trio.abc.Stream,
    conn: WSConnection,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    """Answer an upgrade with an HTTP error (the handshake fails clearly)."""
    data = conn.send(RejectConnection(status_code=status, headers=headers, has_body=True))
    data += conn.send(RejectData(data=body))
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        with contextlib.suppress(*PEER_GONE):
            await stream.send_all(data)


async def serve_upgraded(
    ws: DirectWebSocket, handler: Handler, *, ping_interval_s: float, log: Any = None
) -> None:
    """Run ``handler`` on ``ws`` (with the server's pings beside it), then end the
    connection: a close frame if the handler left none (1011 if it failed), the peer's answer
    awaited briefly, the stream closed."""
    log = log if log is not None else structlog.get_logger().bind(path=ws.path)
    try:
        async with trio.open_nursery() as nursery:
            if ping_interval_s > 0:
                nursery.start_soon(_quiet, ws._ping(ping_interval_s))
            try:
                await handler(ws)
            except PEER_GONE as exc:
                log.debug("websocket peer gone", error=repr(exc))
            except ExceptionGroup as group:
                # A handler's nursery (a client stream's reader beside its writer) reports the
                # peer leaving as a group: that is no failure either.
                if group.split(PEER_GONE)[1] is not None:
                    log.exception("websocket handler failed")
                    await _quiet(ws.close(CloseCode.INTERNAL_ERROR, "internal error"))
                else:
                    log.debug("websocket peer gone", error=repr(group))
            except Exception:
                log.exception("websocket handler failed")
                await _quiet(ws.close(CloseCode.INTERNAL_ERROR, "internal error"))
            if ws.accepted:
                await _quiet(ws.close(CloseCode.NORMAL, ""))
                await _quiet(ws._linger())
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
            await ws.stream.aclose()


async def _quiet(step: Awaitable[None]) -> None:
    with contextlib.suppress(*PEER_GONE):
        await step
