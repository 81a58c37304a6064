"""A device that replays one hello again and again from its own process, closing at once.

``python -m tests.e2e.replay_client PORT COUNT`` reads the hello frame (JSON text) on standard
input. Each round: connect to ``/ws/device``, send the hello, read the first frame the server
sends and answer it at once with a close frame, then shut the socket. Blocking sockets in a
separate process, so the close reaches the engine whenever the kernel delivers it, not in step
with the engine's scheduler (an EA in another process, as in production). Prints one line per
round: the first frame's text, or ``-`` if the server sent none.
"""

from __future__ import annotations

import contextlib
import socket
import sys

import wsproto
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    RejectConnection,
    Request,
    TextMessage,
)


def _round(port: int, hello: str) -> str:
    conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            conn.send(
                Request(host="127.0.0.1", target="/ws/device", subprotocols=["tripwire.v1.json"])
            )
        )
        for _ in range(1000):  # bounded: a few frames at most are expected
            data = sock.recv(65536)
            if not data:
                return "-"
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, AcceptConnection):
                    sock.sendall(conn.send(TextMessage(data=hello)))
                elif isinstance(event, Message):
                    # The server may have closed already: then there is nothing to close.
                    with contextlib.suppress(OSError):
                        sock.sendall(conn.send(CloseConnection(code=1000)))
                        sock.shutdown(socket.SHUT_WR)
                    return str(event.data)
                elif isinstance(event, CloseConnection | RejectConnection):
                    return "-"
    return "-"


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    hello = sys.stdin.read()
    for _ in range(count):
        print(_round(port, hello), flush=True)


if __name__ == "__main__":
    main()
