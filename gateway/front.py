"""The front door: one listening port, the tick path's WebSockets served direct, the rest by
Hypercorn.

Each accepted connection's first request head is read here. A WebSocket upgrade to one of the
``direct`` paths (``/ws/device``, ``/ws/feed``, ``/ws/client``) is served on its socket by
:mod:`gateway.wsdirect`; anything else (REST, the dashboard, HTTP/2) is handed
to Hypercorn's connection server with the bytes read so far put back in front of the stream,
so it sees the connection as if it had accepted it. The per-address WebSocket limit of
:class:`~gateway.edge.EdgeGuard` counts both kinds of WebSocket alike.

Why: ``bench.e2e`` traced a close's hops, and through Quart-Trio and Hypercorn a quote's frame
and each close command crossed several tasks, each crossing a turn of the scheduler (see
``gateway.wsdirect``). A client stream's deltas (a burst's, several a close) cost a Hypercorn
send each that way; direct, a batch of them is one write. The other endpoints keep everything
Quart gives them.

What Hypercorn's own ``serve`` did is done here: the app's lifespan (Quart's startup and
shutdown), TLS, a graceful stop on ``shutdown_trigger`` (connections get ``graceful_timeout``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from gateway.edge import EdgeGuard
from gateway.wsdirect import (
    DirectWebSocket,
    Handler,
    parse_upgrade,
    refuse_upgrade,
    serve_upgraded,
)

__all__ = ["serve_front"]

MAX_HEAD = 16 * 1024
"""A request head longer than this is not ours: Hypercorn answers it."""


class _Replay(trio.abc.Stream):
    """A stream whose first reads return ``prefix`` (what the front door read already)."""

    def __init__(
        self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream], prefix: bytes
    ) -> None:
        self._stream = stream
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:  # socket, do_handshake, selected_alpn_protocol...
        return getattr(self._stream, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # A TLS stream has no half-close: Hypercorn takes the AttributeError to mean just that.
        stream = self._stream
        if isinstance(stream, trio.SSLStream):
            raise AttributeError("a TLS stream has no send_eof")
        await stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _read_head(stream: Any, timeout_s: float) -> bytes:
    """The bytes of the first request head (more if they came with it; less if the peer is
    slow or the head is not a WebSocket upgrade's)."""
    head = b""
    with trio.move_on_after(timeout_s):
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            data = await stream.receive_some(MAX_HEAD)
            if not data:
                break
            head += data
            if not head.startswith(b"GET "[: len(head)]):
                break  # not a GET: no upgrade, Hypercorn's at once
    return head


def _peer(stream: Any) -> str:
    socket = getattr(stream, "socket", None) or stream.transport_stream.socket
    try:
        return str(socket.getpeername()[0])
    except OSError:
        return ""


async def serve_front(
    app: Any,
    config: Config,
    *,
    host: str,
    port: int,
    direct: Mapping[str, Handler],
    max_message: int,
    edge: EdgeGuard | None,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (ASGI) on ``host:port`` with the ``direct`` WebSocket paths taken off
    the HTTP stack, until ``shutdown_trigger`` returns."""
    log = structlog.get_logger().bind(component="front")
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    ping_s = config.websocket_ping_interval or 0.0

    async def connection(stream: Any) -> None:
        try:
            if isinstance(stream, trio.SSLStream):
                with trio.fail_after(config.ssl_handshake_timeout):
                    await stream.do_handshake()
            head = await _read_head(stream, config.keep_alive_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        upgrade = parse_upgrade(head) if head.startswith(b"GET ") else None
        handler = None
        if upgrade is not None:
            target = upgrade[1].target.split("?", 1)[0]
            handler = direct.get(target)
        if upgrade is None or handler is None:
            state = ConnectionState(lifespan_state.copy())
            # Hypercorn annotates an SSLStream but serves plain SocketStreams too (its own
            # serve passes both); _Replay forwards the rest (socket, do_handshake...).
            replay = _Replay(stream, head)
            await TCPServer(asgi, config, context, state, replay).run()  # type: ignore[arg-type]
            return
        conn, request = upgrade
        address = _peer(stream)
        if edge is not None and not edge.admit_websocket(address):
            await refuse_upgrade(stream, conn, *edge.refusal())
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        try:
            # Bytes after the head are frames wsproto already holds: it parses them all then.
            ws = DirectWebSocket(
                stream,
                conn,
                request,
                address,
                max_message=max_message,
                fast_frames=head.endswith(b"\r\n\r\n"),
            )
            await serve_upgraded(ws, handler, ping_interval_s=ping_s, log=log)
        finally:
            if edge is not None:
                edge.release_websocket(address)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners: list[Any] = await trio.open_tcp_listeners(port, host=host)
            ssl_context = config.create_ssl_context()
            if ssl_context is not None:
                listeners = [
                    trio.SSLListener(listener, ssl_context, https_compatible=True)
                    for listener in listeners
                ]
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        functools.partial(
                            trio.serve_listeners,
                            connection,
                            listeners,
                            handler_nursery=server_nursery,
                        )
                    )
                    task_status.started()
                    await shutdown_trigger()
                    nursery.cancel_scope.cancel()
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
