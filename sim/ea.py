"""A simulated Expert Advisor over a real WebSocket: the device side of the protocol.

It does what docs/protocol.md asks of an EA: connects to ``/ws/device`` with a subprotocol,
sends a signed ``hello``, waits for the ``welcome``, sends its positions snapshot and account,
heartbeats, verifies every command's signature with the session key, executes each command id
once (a repeat is answered with the earlier ack, by the :class:`~sim.paper_terminal.PaperTerminal`)
and acks with the broker's result code. A ``moved`` answer to its hello is followed
(``protocol.redirects``). After its positions snapshot it reports the terminal's
closing deals (``send_deals``). End-to-end tests run it (the benchmarks run many EAs in one
thread instead: ``bench.ea_fleet``); ``on_command`` lets a test see each verified command and
when its frame was taken from the connection (``time.monotonic_ns()``), and
``crash_before_ack`` makes it die between executing a command and acking it (the terminal keeps
the trade; the ack is lost).
"""

from __future__ import annotations

import contextlib
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Any

import structlog
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from protocol.codec import device_client_codec
from protocol.device import (
    CloseCommand,
    DeviceError,
    Heartbeat,
    ModifyCommand,
    OpenCommand,
    PartialCloseCommand,
    Ping,
    Welcome,
)
from protocol.errors import BadSignature, TripwireError
from protocol.redirects import Moved, Redirects
from protocol.session import derive_session_key, verify_command
from protocol.signing import sign_hello
from sim.paper_terminal import PaperTerminal

__all__ = ["ServerSilent", "SimulatedCrash", "SimulatedEA"]

_COMMANDS = (OpenCommand, CloseCommand, PartialCloseCommand, ModifyCommand)


class SimulatedCrash(Exception):
    """The EA died between executing a command and sending its ack (``crash_before_ack``)."""


class ServerSilent(Exception):
    """The server answered no WebSocket ping within ``stale_after_s``: a hung node (docs/
    protocol.md, "A silent server"); the session is dropped and the EA connects again."""


class SimulatedEA:
    """One simulated terminal connected to a Tripwire node."""

    def __init__(
        self,
        url: str,
        device_id: str,
        secret: str | bytes,
        terminal: PaperTerminal,
        *,
        encoding: str = "msgpack",
        now_ms: Callable[[], int] | None = None,
        on_command: Callable[[Any, int], None] | None = None,
        latency_ms: float = 0.0,
        send_deals: bool = True,
        crash_before_ack: Callable[[Any], bool] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.device_id = device_id
        self.secret = secret if isinstance(secret, bytes) else secret.encode()
        self.terminal = terminal
        self.encoding = encoding
        self.now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self.on_command = on_command
        self.latency_ms = latency_ms
        self.send_deals = send_deals
        self.crash_before_ack = crash_before_ack
        self.ssl_context = ssl_context
        """For a ``wss://`` URL: the context the server's certificate is checked with (None:
        the system's default)."""
        self.crashed = False
        """True once ``crash_before_ack`` ended the connection (``run`` then returns)."""
        self.codec = device_client_codec(encoding)  # type: ignore[arg-type]
        self.welcome: Welcome | None = None
        self.errors: list[DeviceError] = []
        self.commands: list[Any] = []
        self.bad_signatures = 0
        self.connected = trio.Event()
        self.closed: tuple[int | None, str | None] | None = None
        self._ws: Any = None
        self.redirects = Redirects(url)
        """Where the next connection goes (``moved`` frames followed: ``protocol.redirects``)."""
        self.moved: list[Moved] = []
        """Every ``moved`` frame received, in order."""
        self.gave_up = False
        """True once more than three ``moved`` came in a row: ``run`` returned without a session."""
        self.connections = 0
        """Connections opened (one per hello)."""
        self.welcomed_at: str | None = None
        """The URL of the connection that got the welcome."""
        self.log = structlog.get_logger().bind(device_id=device_id, component="ea-sim")

    async def run(
        self, *, task_status: trio.TaskStatus[SimulatedEA] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect and serve until the connection closes.

        A ``moved`` answer to the hello is followed as docs/protocol.md asks
        (``protocol.redirects``): the next connection, with a new hello, goes to its ``url`` at
        once (or, with none, to ``url`` after ``retry_after_ms``); after more than three in a
        row the EA gives up (``gave_up``) and ``run`` returns.
        """
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started(self)

        while True:
            moved = await self._session(self.redirects.target, ready)
            if moved is None:
                self.redirects.ended()
                ready()
                return
            self.moved.append(moved)
            wait_ms = self.redirects.moved(moved)
            if wait_ms is None:
                self.gave_up = True
                self.log.warning("too many redirects in a row: giving up", hops=len(self.moved))
                ready()
                return
            await trio.sleep(wait_ms / 1000)

    async def _session(self, url: str, ready: Callable[[], None]) -> Moved | None:
        """One connection with a new hello; the ``moved`` frame if the node sent one."""
        nonce = secrets.token_urlsafe(18)
        ts = self.now_ms()
        hello = sign_hello(self.device_id, self.secret, self.terminal.hello(ts), ts, nonce)
        key = derive_session_key(self.secret, device_id=self.device_id, nonce=nonce, ts_ms=ts)
        self.connections += 1
        try:
            async with open_websocket_url(
                url,
                ssl_context=self.ssl_context,
                subprotocols=[f"tripwire.v1.{self.encoding}"],
                message_queue_size=4096,
                max_message_size=4 * 1024 * 1024,
            ) as ws:
                await ws.send_message(self.codec.encode(hello))
                try:
                    first = self.codec.decode(await ws.get_message())
                except TripwireError as exc:  # a broken answer: refused, as by an error
                    self.log.warning("the answer to the hello did not decode", error=exc.message)
                    ready()
                    return None
                if isinstance(first, Moved):
                    # The server closes (4301) after its moved; leaving the block closes too.
                    with trio.move_on_after(5), contextlib.suppress(ConnectionClosed):
                        await ws.get_message()
                    return first
                if not isinstance(first, Welcome):
                    if isinstance(first, DeviceError):
                        self.errors.append(first)
                    ready()
                    await ws.get_message()  # the server closes after its error
                    return None
                self.redirects.welcomed()
                self.welcome = first
                self.welcomed_at = url
                self._ws = ws
                now = self.now_ms()
                await ws.send_message(self.codec.encode(self.terminal.snapshot(now)))
                if self.send_deals:
                    await ws.send_message(self.codec.encode(self.terminal.deals(now)))
                await ws.send_message(self.codec.encode(self.terminal.account(now)))
                self.connected.set()
                ready()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat, ws, float(first.heartbeat_s))
                    nursery.start_soon(
                        self._server_alive, ws, float(first.heartbeat_s), float(first.stale_after_s)
                    )
                    while True:
                        frame = await ws.get_message()
                        arrived_ns = time.monotonic_ns()
                        message = self.codec.decode(frame)
                        if isinstance(message, _COMMANDS):
                            await self._command(ws, message, key, arrived_ns)
                        elif isinstance(message, Ping):
                            await ws.send_message(
                                self.codec.encode(Heartbeat(seq=message.seq, time_ms=self.now_ms()))
                            )
                        elif isinstance(message, DeviceError):
                            self.errors.append(message)
        except* SimulatedCrash:
            self.crashed = True  # the connection is gone without a word, as after kill -9
        except* ServerSilent:
            self.closed = (None, "server silent")
        except* ConnectionClosed as group:
            # The close surfaces from the reader or the heartbeat, inside a nursery's group.
            closed: BaseException = group
            while isinstance(closed, BaseExceptionGroup):
                closed = closed.exceptions[0]
            reason = closed.reason if isinstance(closed, ConnectionClosed) else None
            self.closed = (reason.code, reason.reason) if reason else (None, None)
        return None

    async def send(self, message: Any) -> None:
        """Send a device frame now (an ``account`` report, an event) on the live connection: a
        test decides when the terminal reports, as a real EA's timer would."""
        if self._ws is None:
            raise RuntimeError("the EA is not connected")
        await self._ws.send_message(self.codec.encode(message))

    async def _command(self, ws: Any, command: Any, key: bytes, arrived_ns: int) -> None:
        try:
            verify_command(command, key)
        except BadSignature:
            self.bad_signatures += 1
            self.log.warning("command with a bad signature refused", command_id=command.command_id)
            return
        self.commands.append(command)
        if self.on_command is not None:
            self.on_command(command, arrived_ns)
        if self.latency_ms:
            await trio.sleep(self.latency_ms / 1000)
        replies = self.terminal.handle(command, self.now_ms())
        if self.crash_before_ack is not None and self.crash_before_ack(command):
            raise SimulatedCrash(command.command_id)  # executed; its ack never leaves
        for reply in replies:
            await ws.send_message(self.codec.encode(reply))

    async def _server_alive(self, ws: Any, every_s: float, stale_s: float) -> None:
        """A WebSocket ping every ``every_s``; no pong within ``stale_s``: the server is hung
        (a frozen process keeps its sockets open, so no close ever comes): drop the session."""
        while True:
            await trio.sleep(every_s)
            with trio.move_on_after(stale_s):
                await ws.ping()
                continue
            raise ServerSilent(self.redirects.target)

    async def _heartbeat(self, ws: Any, every_s: float) -> None:
        seq = 0
        while True:
            await trio.sleep(every_s)
            seq += 1
            now = self.now_ms()
            await ws.send_message(self.codec.encode(Heartbeat(seq=seq, time_ms=now)))
            for event in self.terminal.check_prices(now):
                await ws.send_message(self.codec.encode(event))
