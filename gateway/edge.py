"""The ASGI layer in front of the app: connections per client address, and closing after an
early answer.

* **Per-address limits.** At most ``max_http`` HTTP requests in flight and ``max_ws`` open
  WebSockets per client address (0: no limit; loopback is not exempt). One more request is
  answered ``429 {"code": "rate_limited"}`` with ``Retry-After: 1`` before the app sees it; one
  more WebSocket upgrade gets the same as its HTTP answer, so the handshake fails clearly.
* **An early answer closes the connection.** A handler may answer before the request body has
  arrived (a 401 on a POST, a 413). The connection cannot carry another request until that body
  is read, so the answer says ``Connection: close`` and the server closes it.
* **The last write of an answer is shielded.** Quart-Trio cancels a request's tasks as soon as
  the server reports the stream closed, which it does *inside* the final ``send``: Hypercorn's
  bookkeeping after the answer (closing a ``Connection: close`` socket, re-arming the keep-alive
  timer) was cancelled half-way, so such sockets stayed open forever.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
import trio

__all__ = ["EdgeGuard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LAST_WRITE_S = 10.0
"""How long the shielded last write of an answer may take (a peer that does not read)."""

_REFUSAL = msgspec.json.encode(
    {"code": "rate_limited", "message": "too many connections from your address; try again"}
)
_REFUSAL_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_REFUSAL)).encode()),
    (b"retry-after", b"1"),
]


class EdgeGuard:
    """ASGI middleware: per-address limits and a clean end to every HTTP answer."""

    def __init__(self, app: ASGIApp, *, max_http: int, max_ws: int) -> None:
        self.app = app
        self.max_http = max_http
        self.max_ws = max_ws
        self.http_in_flight: Counter[str] = Counter()
        self.ws_open: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        """Refusals by kind (``http``, ``websocket``), for metrics and tests."""

    def admit_websocket(self, address: str) -> bool:
        """Count a WebSocket opened outside the ASGI app (``gateway.front``); False (and
        counted as refused) past the per-address limit."""
        if self.max_ws and self.ws_open[address] >= self.max_ws:
            self.refused["websocket"] += 1
            return False
        self.ws_open[address] += 1
        return True

    def release_websocket(self, address: str) -> None:
        """That WebSocket ended."""
        self.ws_open[address] -= 1
        if self.ws_open[address] <= 0:
            del self.ws_open[address]

    @staticmethod
    def refusal() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The HTTP answer to an upgrade past the limit: status, headers, body."""
        return 429, list(_REFUSAL_HEADERS), _REFUSAL

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            counts, limit = self.http_in_flight, self.max_http
        elif kind == "websocket":
            counts, limit = self.ws_open, self.max_ws
        else:  # lifespan
            await self.app(scope, receive, send)
            return
        address = str((scope.get("client") or ("",))[0])
        if limit and counts[address] >= limit:
            self.refused[kind] += 1
            await _refuse(kind, send)
            return
        counts[address] += 1
        try:
            if kind == "http":
                await _serve_http(self.app, scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            counts[address] -= 1
            if counts[address] <= 0:
                del counts[address]


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _serve_http(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    # A request without a body is complete at once (the server's end-of-body message may
    # reach the app only after its answer has started).
    body_complete = not _has_body(scope)

    async def receiving() -> Message:
        nonlocal body_complete
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body_complete = True
        return message

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and not body_complete:
            headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            # Shielded from the request's cancellation, but not forever: a peer that stops
            # reading must not hold the task (and its connection) past LAST_WRITE_S.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + LAST_WRITE_S):
                await send(message)
            return
        await send(message)

    await app(scope, receiving, sending)


async def _refuse(kind: str, send: Send) -> None:
    """Answer 429 without reading the request (and close: its body, if any, is unread)."""
    if kind == "http":
        headers = [*_REFUSAL_HEADERS, (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": _REFUSAL})
    else:
        headers = _REFUSAL_HEADERS
        await send({"type": "websocket.http.response.start", "status": 429, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": _REFUSAL})
