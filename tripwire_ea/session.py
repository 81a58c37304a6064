"""The bridge's WebSocket sessions: connect, hello, serve, and reconnect for as long as it runs.

One session, as docs/protocol.md ("The session") has it: a signed hello, the welcome, then the
positions snapshot, the closing deals and the account; then commands in, acks out, a heartbeat
every ``heartbeat_s``, the terminal polled for what it did on its own. When the session ends
the bridge waits (exponential backoff with jitter, or what the close code asks: see
:func:`reconnect_delay`) and starts a new one with a new hello. A ``moved`` answer to the hello
sends the next session, at once, to the node it names (at most three in a row:
``protocol.redirects``). Every terminal call runs in one
worker thread, one at a time: the ``MetaTrader5`` package blocks, and its calls must not
interleave.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from protocol.codec import WireCodec
from protocol.device import DeviceError, DeviceMessage, Heartbeat, ServerMessage, Welcome
from protocol.redirects import Moved, Redirects
from protocol.session import derive_session_key
from protocol.signing import sign_hello
from tripwire_ea.dispatch import Dispatcher
from tripwire_ea.terminal import TerminalUnavailable

__all__ = ["Bridge", "Stop", "reconnect_delay"]

T = TypeVar("T")
log = structlog.get_logger("tripwire_ea")

_AT_ONCE = {4001}  # clock skew / stale hello: sign a new hello now
_POLICY = {1008}  # authentication failed: at least 30 s
_RESTART = {1012}  # the server restarts: 1-5 s
_REPLACED = {4003}  # another copy of this device connected: it must not fight it
STOP_CODES = {4002}  # the server no longer speaks our version: reconnecting cannot help


class Stop(Exception):
    """The bridge must stop: reconnecting cannot help (``unsupported_version``)."""


def reconnect_delay(
    close_code: int | None, attempt: int, rng: random.Random, cap_s: float
) -> float:
    """Seconds to wait before the next connection (docs/protocol.md, "Errors and close codes").

    ``attempt`` counts failures since the last session that got a welcome. The default is 1 s
    doubling up to ``cap_s``, each wait drawn between half and all of it (jitter: a server that
    restarts is not hit by every bridge in the same millisecond).
    """
    if close_code in _AT_ONCE:
        return rng.uniform(0.1, 0.5)
    if close_code in _RESTART:
        return rng.uniform(1.0, 5.0)
    base = min(cap_s, 2.0 ** min(attempt, 30))
    delay = rng.uniform(base / 2, base)
    if close_code in _POLICY:
        return max(30.0, delay)
    if close_code in _REPLACED:
        return max(60.0, delay)
    return delay


class Bridge:
    """Runs sessions against ``url`` until cancelled, or :class:`Stop`."""

    def __init__(
        self,
        url: str,
        device_id: str,
        secret: bytes,
        dispatcher: Dispatcher,
        codec: WireCodec[ServerMessage, DeviceMessage],
        *,
        encoding: str = "json",
        ea_build: str = "tripwire-ea",
        poll_s: float = 0.25,
        max_backoff_s: float = 60.0,
        clock: Callable[[], int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.device_id = device_id
        self.secret = secret
        self.dispatcher = dispatcher
        self.codec = codec
        self.encoding = encoding
        self.ea_build = ea_build
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.rng = rng or random.Random()
        self.offset_ms = 0
        """The server's clock minus ours, from the last welcome or error."""
        self.sessions = 0
        self.redirects = Redirects(url)
        """``moved`` frames followed (docs/protocol.md, "moved")."""
        self._limiter = trio.CapacityLimiter(1)
        self._send_lock = trio.Lock()
        self._terminal_up = False

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def next_url(self) -> str:
        """Where the next session connects: the configured URL, or the ``url`` of the
        ``moved`` frame that ended the last connection (``protocol.redirects``)."""
        return self.redirects.target

    async def run(self) -> None:
        """Serve, reconnecting after every end, until cancelled.

        Raises:
            Stop: the server refused our protocol version.
        """
        attempt = 0
        while True:
            code: int | None = None
            try:
                if not self._terminal_up:
                    await self._blocking(self.dispatcher.terminal.connect)
                    self._terminal_up = True
                    await self._blocking(self.dispatcher.resolve_pending)
                welcomed, code, moved = await self._session(self.next_url())
                if welcomed:
                    attempt = 0
                if moved is not None:
                    wait_ms = self.redirects.moved(moved)
                    if wait_ms is not None:
                        # Another node serves our user: go there now (or, when nobody does
                        # yet, after the wait it asks for), with a new hello. No backoff.
                        log.info("moved", url=moved.url, partition=moved.partition, in_ms=wait_ms)
                        await trio.sleep(wait_ms / 1000)
                        continue
                    log.warning("too many redirects in a row: back to the configured URL")
                else:
                    self.redirects.ended()
            except* TerminalUnavailable as group:
                self.redirects.ended()
                self._terminal_up = False
                log.warning("the terminal is unavailable", error=str(group.exceptions[0]))
            except* (OSError, HandshakeError, trio.BrokenResourceError) as group:
                self.redirects.ended()
                log.warning("cannot reach the server", error=repr(group.exceptions[0])[:200])
            if code in STOP_CODES:
                raise Stop(f"the server closed with {code}: upgrade tripwire-ea")
            delay = reconnect_delay(code, attempt, self.rng, self.max_backoff_s)
            attempt += 1
            log.info("reconnecting", in_s=round(delay, 2), close_code=code)
            await trio.sleep(delay)

    async def _session(self, url: str) -> tuple[bool, int | None, Moved | None]:
        """One connection: ``(welcomed, close code, the moved frame if the node sent one)``."""
        body = await self._blocking(self.dispatcher.terminal.hello, self.ea_build)
        ts = self.clock() + self.offset_ms
        nonce = secrets.token_urlsafe(18)
        hello = sign_hello(self.device_id, self.secret, body, ts, nonce)
        key = derive_session_key(self.secret, device_id=self.device_id, nonce=nonce, ts_ms=ts)
        welcomed, code, moved = False, None, None
        try:
            async with open_websocket_url(
                url,
                subprotocols=[f"tripwire.v1.{self.encoding}"],
                message_queue_size=256,
                max_message_size=4 * 1024 * 1024,
            ) as ws:
                await ws.send_message(self.codec.encode(hello))
                with trio.fail_after(15):
                    first = self.dispatcher.decode(await ws.get_message())
                if not isinstance(first, Welcome):
                    if isinstance(first, Moved):
                        moved = first
                    else:
                        self._refused(first)
                    with trio.move_on_after(5):
                        await ws.get_message()  # the server closes after its error or moved
                    return False, (ws.closed.code if ws.closed else None), moved
                welcomed = True
                self.redirects.welcomed()
                self.sessions += 1
                self.offset_ms = first.server_time_ms - self.clock()
                self.dispatcher.window.resize(first.command_window)
                self.dispatcher.session_key = key
                log.info("connected", session_id=first.session_id, url=url)
                for message in await self._blocking(self.dispatcher.greeting):
                    await self._send(ws, message)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat, ws, float(first.heartbeat_s))
                    nursery.start_soon(
                        self._server_alive, ws, float(first.heartbeat_s), float(first.stale_after_s)
                    )
                    nursery.start_soon(self._poll, ws)
                    while True:
                        frame = await ws.get_message()
                        for reply in await self._blocking(self.dispatcher.handle_frame, frame):
                            await self._send(ws, reply)
        except* ConnectionClosed as group:
            reason = _closed(group).reason
            code = reason.code if reason else None
            log.warning("disconnected", code=code, reason=reason.reason if reason else None)
        except* trio.TooSlowError:
            log.warning("no welcome in time")
        except* ServerSilent:
            log.warning("the server answered no ping: reconnecting", url=url)
        finally:
            self.dispatcher.session_key = None
        return welcomed, code, moved

    def _refused(self, first: ServerMessage | None) -> None:
        if isinstance(first, DeviceError):
            details = first.details or {}
            server_time = details.get("server_time_ms")
            if isinstance(server_time, int):
                self.offset_ms = server_time - self.clock()
            log.error("the server refused the hello", code=first.code, message=first.message)
        else:
            log.error("the server did not answer the hello with a welcome")

    async def _send(self, ws: Any, message: DeviceMessage) -> None:
        async with self._send_lock:
            await ws.send_message(self.codec.encode(message))

    async def _server_alive(self, ws: Any, every_s: float, stale_s: float) -> None:
        """A WebSocket ping every ``every_s``; no pong within ``stale_s`` means a hung server
        (a frozen process keeps its sockets open, so no close comes): drop the session, and
        the loop connects again (docs/protocol.md, "A silent server")."""
        while True:
            await trio.sleep(every_s)
            with trio.move_on_after(stale_s):
                await ws.ping()
                continue
            raise ServerSilent()

    async def _heartbeat(self, ws: Any, every_s: float) -> None:
        seq = 0
        while True:
            await trio.sleep(every_s)
            seq += 1
            await self._send(ws, Heartbeat(seq=seq, time_ms=self.clock()))

    async def _poll(self, ws: Any) -> None:
        while True:
            await trio.sleep(self.poll_s)
            for message in await self._blocking(self.dispatcher.poll):
                await self._send(ws, message)


class ServerSilent(Exception):
    """No pong within ``stale_after_s`` (see ``_server_alive``)."""


def _closed(group: BaseException) -> ConnectionClosed:
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    assert isinstance(found, ConnectionClosed)
    return found
