"""A WebSocket client on a plain blocking socket and wsproto, for the harness's own ends.

The feeder and the echo probe each hold one connection and do one thing at a time, so they
need no event loop: a frame is one ``wsproto`` call and one ``sendall``, and a wait is a
``select`` with the kernel's precision. Through trio and trio-websocket the same work cost a
task switch and a lock per frame, on the two cores the engine shares.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from urllib.parse import urlsplit

from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
)

__all__ = ["BlockingWebSocket", "KernelStamps", "host_port_target"]

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux: stamp each received packet (``SCM_TIMESTAMPNS``, the same number), in ns of the
realtime clock; Python names it only on some builds."""


class KernelStamps:
    """When the kernel received what a socket read returns, on the monotonic clock.

    The device's end of the latency is when the command reached the device: its kernel has the
    frame (for loopback, inside the engine's ``send``). When the harness's process then reads it
    depends on the harness sharing the cores, which a real EA, a terminal on its own machine,
    does not. The kernel stamps in realtime; :meth:`resync` keeps the offset to the monotonic
    clock current (call it every few ms: clock slewing moves it by up to ~0.5 ms a second).
    """

    ANCILLARY = socket.CMSG_SPACE(16)

    def __init__(self) -> None:
        self.offset_ns = 0
        self.resync()

    def resync(self) -> None:
        self.offset_ns = time.time_ns() - time.monotonic_ns()

    @staticmethod
    def enable(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def recv(self, sock: socket.socket, size: int) -> tuple[bytes, int]:
        """Read up to ``size`` bytes; (data, when the kernel received the last of them). The
        stamp is the read's own time when the kernel gave none."""
        data, ancillary, _flags, _address = sock.recvmsg(size, self.ANCILLARY)
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                return data, seconds * 1_000_000_000 + nanoseconds - self.offset_ns
        return data, time.monotonic_ns()


def host_port_target(url: str) -> tuple[str, int, str]:
    """``ws://host:port/path?query`` as (host, port, request target)."""
    split = urlsplit(url)
    target = f"{split.path}?{split.query}" if split.query else split.path
    return split.hostname or "127.0.0.1", split.port or 80, target or "/"


class BlockingWebSocket:
    """One client connection; the engine's pings are answered while waiting or receiving."""

    def __init__(self, url: str, subprotocols: list[str] | None = None) -> None:
        host, port, target = host_port_target(url)
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        KernelStamps.enable(self.sock)
        self.stamps = KernelStamps()
        self.received_ns = 0
        """When the kernel received the last bytes read (``KernelStamps``)."""
        self.conn = WSConnection(ConnectionType.CLIENT)
        request = Request(host=f"{host}:{port}", target=target, subprotocols=subprotocols or [])
        self.sock.sendall(self.conn.send(request))
        self._messages: list[bytes] = []
        self._partial = bytearray()
        while not self._take(self._recv(), accepting=True):
            pass

    def _recv(self) -> bytes:
        data, self.received_ns = self.stamps.recv(self.sock, 65_536)
        if not data:
            raise ConnectionError("the engine closed the connection")
        return data

    def _take(self, data: bytes, *, accepting: bool = False) -> bool:
        """Feed wsproto; answer pings; keep whole messages. True once the handshake was
        accepted (``accepting``)."""
        self.conn.receive_data(data)
        for event in self.conn.events():
            if isinstance(event, AcceptConnection):
                return True
            if isinstance(event, Ping):
                self.sock.sendall(self.conn.send(event.response()))
            elif isinstance(event, Message):
                data = event.data
                self._partial += data if isinstance(data, bytes) else data.encode()
                if event.message_finished:
                    self._messages.append(bytes(self._partial))
                    self._partial.clear()
            elif isinstance(event, RejectConnection | CloseConnection):
                raise ConnectionError(f"the engine refused or closed the connection: {event!r}")
        return not accepting

    def wait_until(self, t_ns: int) -> None:
        """Sleep until ``t_ns`` (monotonic), answering what the engine sends meanwhile."""
        while (left := t_ns - time.monotonic_ns()) > 0:
            readable, _, _ = select.select([self.sock], [], [], left / 1e9)
            if readable:
                self._take(self._recv())

    def send(self, payload: bytes) -> None:
        self.sock.sendall(self.conn.send(BytesMessage(data=payload)))

    def receive(self) -> bytes:
        """The next whole message (a text one as its UTF-8 bytes); ``received_ns`` says when
        the kernel had its last bytes."""
        while not self._messages:
            self._take(self._recv())
        return self._messages.pop(0)

    def close(self) -> None:
        """Close politely, waiting a little for the engine's answer."""
        with contextlib.suppress(Exception):
            self.sock.sendall(self.conn.send(CloseConnection(code=1000)))
            self.sock.settimeout(2.0)
            while self.sock.recv(65_536):
                pass
        self.sock.close()
