"""Ending a WebSocket from a handler when the peer may be leaving at the same moment.

A handler that refuses a peer sends an error frame and then a close frame. A peer that closes
as soon as it reads the error (an EA told ``replayed`` does) races the second send: Hypercorn's
connection task, seeing the peer's close or EOF, shuts the TCP stream down (``send_eof``) on its
own, outside the lock that orders its sends, and a send of ours that starts while it is at it
fails with ``trio.BusyResourceError`` ("another task is currently sending data"). A peer that
is already gone gives ``BrokenResourceError`` or ``ClosedResourceError`` instead. None of these
is a server fault: the connection is over either way, so they are logged at debug level and
swallowed here, never left to reach the app's "unexpected error" handler (tests/e2e reproduce
the race with an EA in another process).
"""

from __future__ import annotations

from typing import Any, Final

import trio

__all__ = ["PEER_GONE", "close_quietly", "send_quietly"]

PEER_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError)
"""What a send or close raises when the connection is going or gone under us."""

CLOSE_TIMEOUT_S: Final = 1.0
"""How long a refusal waits to hand over its last frames (a peer that does not read)."""


async def send_quietly(ws: Any, data: bytes | str, log: Any) -> bool:
    """Send ``data`` unless the connection is going away; True if it was handed over."""
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        try:
            await ws.send(data)
        except PEER_GONE as exc:
            log.debug("peer gone before a frame could be sent", error=repr(exc))
            return False
        return True
    return False


async def close_quietly(ws: Any, code: int, reason: str, log: Any) -> None:
    """Close with ``code`` and ``reason``, unless the connection is closed or going already."""
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        try:
            await ws.close(code, reason)
        except PEER_GONE as exc:
            log.debug("peer gone before the close frame", code=code, error=repr(exc))
        except RuntimeError as exc:  # Quart: "Cannot close websocket multiple times"
            log.debug("websocket already closed", code=code, error=str(exc))
