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

__all__ = ["BlockingWebSocket", "host_port_target"]


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
        self.conn = WSConnection(ConnectionType.CLIENT)
        request = Request(host=f"{host}:{port}", target=target, subprotocols=subprotocols or [])
        self.sock.sendall(self.conn.send(request))
        self._messages: list[bytes] = []
        self._partial = bytearray()
        while not self._take(self._recv(), accepting=True):
            pass

    def _recv(self) -> bytes:
        data = self.sock.recv(65_536)
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
        """The next whole message (a text one as its UTF-8 bytes)."""
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
