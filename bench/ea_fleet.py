"""Many simulated EAs in one thread: the device side of the harnesses (``bench.e2e_workers``).

A real EA is a terminal of its own, on its own machine. A harness runs fifty in one process on
the two cores the engine uses too, and as trio tasks on trio-websocket (``sim.ea``) they were
the slowest part of a burst: from the engine's last send of a burst of ~20 closes to its
arrival took 3.8 ms at p50, 10.6 ms at p90 (bench.e2e, 100 devices, 10,000 positions,
500 quotes/s), the EAs of a process taking each frame through a reader task, a channel and
a lock, one after the other. Here each EA is a plain socket with a wsproto client, and one
thread waits on all of them with ``selectors``: every ready connection is read before any
command is verified, executed and acked.

A command's arrival is when the device's kernel received its frame (``SO_TIMESTAMPNS``, on the
monotonic clock: ``bench.wsclient.KernelStamps``): the device has the command then, and how
soon this process reads it depends on the cores it shares with the engine, which a real EA, on
its own machine, does not. :attr:`EaFleet.read_lag_ns` says how much later it was read.

Each EA does what docs/protocol.md asks, as ``sim.ea`` does: the subprotocol, a signed hello,
the welcome, its positions snapshot, closing deals and account, a heartbeat every
``heartbeat_s`` (with the terminal's price events), a heartbeat for every ``ping``, WebSocket
pings answered, every command verified with the session key (a bad signature is counted and
refused) and executed once by its :class:`~sim.paper_terminal.PaperTerminal`, which acks.
``moved`` is followed (``protocol.redirects``); an ended session connects again after
``reconnect_s``; a refused connection moves on to the device's next node. Not done: TLS and the
silent-server check (the harnesses end nodes with kill -9, and the kernel closes their sockets).
"""

from __future__ import annotations

import heapq
import itertools
import os
import secrets
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
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
)

from bench.wsclient import KernelStamps, host_port_target
from protocol.codec import device_client_codec
from protocol.device import (
    CloseCommand,
    DeviceError,
    Heartbeat,
    ModifyCommand,
    OpenCommand,
    PartialCloseCommand,
    Welcome,
)
from protocol.device import Ping as AppPing
from protocol.errors import BadSignature, TripwireError
from protocol.redirects import Moved, Redirects
from protocol.session import derive_session_key, verify_command
from protocol.signing import sign_hello
from sim.paper_terminal import PaperTerminal

__all__ = ["EaFleet", "FleetDevice"]

_COMMANDS = (OpenCommand, CloseCommand, PartialCloseCommand, ModifyCommand)
_LOG = structlog.get_logger().bind(component="ea-fleet")


@dataclass
class FleetDevice:
    """One terminal and where it connects."""

    device_id: str
    secret: bytes
    terminal: PaperTerminal
    homes: list[str]
    """The nodes to connect to, the current one first (a refusal moves on to the next)."""
    redirects: Redirects = field(init=False)
    started: bool = False
    """Its first session has settled (welcomed, or refused with an error)."""
    refusals: int = 0
    """Connections refused in a row."""

    def __post_init__(self) -> None:
        self.redirects = Redirects(self.homes[0])


class _Session:
    """One connection of one device, from the upgrade to the close."""

    def __init__(self, device: FleetDevice, url: str, sock: socket.socket) -> None:
        self.device = device
        self.url = url
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.key = b""
        self.ended = False
        self.moved: Moved | None = None
        self.closed: tuple[int | None, str | None] = (None, None)
        self.partial = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


class EaFleet:
    """The EAs of one harness process and the one loop that serves them all.

    Args:
        devices: the terminals.
        on_command: called with every command that verified and the monotonic ns the kernel
            received its frame at, before the terminal executes it.
        on_welcome: called with a device's id and the URL of the node that welcomed it.
        reconnect_s: the pause before a device connects again after its session ended.
        connecting: at most this many first connections in flight at start.
    """

    LAG_PERIOD_NS = 10_000_000
    """How often the loop-lag probe asks to be woken (see :attr:`lag_ns`)."""

    def __init__(
        self,
        devices: list[FleetDevice],
        *,
        on_command: Callable[[str, Any, int], None],
        on_welcome: Callable[[str, str], None],
        reconnect_s: float = 1.0,
        connecting: int = 10,
    ) -> None:
        self.devices = devices
        self.on_command = on_command
        self.on_welcome = on_welcome
        self.reconnect_s = reconnect_s
        self.codec = device_client_codec("msgpack")
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._due: list[tuple[_Session, Any, int]] = []
        self._waiting = list(reversed(devices))
        """Devices not yet connected for the first time (popped from the end)."""
        self._connecting = connecting
        self.gone: list[tuple[str, int | None, str | None]] = []
        """(device, close code, reason) of every session that ended after the device started."""
        self.bad_signatures = 0
        self.lag_ns: list[int] = []
        """How late the loop woke for the probe's timer."""
        self.read_lag_ns: list[int] = []
        """Per command: from the kernel's receipt of its frame to this process reading it."""
        self.stamps = KernelStamps()
        self.stopped = False

    # -- the loop ------------------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None], stop_fd: int) -> None:
        """Connect every device, call ``on_ready`` once each has started, and serve until
        ``stop_fd`` reaches its end (the harness closes the worker's standard input)."""
        self.selector.register(stop_fd, selectors.EVENT_READ, lambda: self._stop_read(stop_fd))
        for _ in range(self._connecting):
            self._connect_next()
        first_probe = time.monotonic_ns() + self.LAG_PERIOD_NS
        self._at(first_probe, lambda: self._probe_lag(first_probe))
        announced = False
        while not self.stopped:
            timeout = None
            if self._timers:
                timeout = max(0.0, (self._timers[0][0] - time.monotonic_ns()) / 1e9)
            for key, _ in self.selector.select(timeout):
                key.data()
            self._execute_due()
            now = time.monotonic_ns()
            while self._timers and self._timers[0][0] <= now:
                heapq.heappop(self._timers)[2]()
            if not announced and all(d.started for d in self.devices):
                announced = True
                on_ready()
        for key in list(self.selector.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()

    def _stop_read(self, fd: int) -> None:
        if not os.read(fd, 1024):
            self.stopped = True

    def _at(self, due_ns: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (due_ns, next(self._order), action))

    def _after(self, seconds: float, action: Callable[[], None]) -> None:
        self._at(time.monotonic_ns() + int(seconds * 1e9), action)

    def _probe_lag(self, due_ns: int) -> None:
        self.stamps.resync()
        now = time.monotonic_ns()
        self.lag_ns.append(max(0, now - due_ns))
        next_due = now + self.LAG_PERIOD_NS
        self._at(next_due, lambda: self._probe_lag(next_due))

    # -- connections ---------------------------------------------------------------------------

    def _connect_next(self) -> None:
        if self._waiting:
            self._connect(self._waiting.pop())

    def _connect(self, device: FleetDevice) -> None:
        url = device.redirects.target
        host, port, target = host_port_target(url)
        try:
            sock = socket.create_connection((host, port), timeout=5.0)
        except OSError:
            device.refusals += 1
            if not device.started and device.refusals >= len(device.homes):
                raise  # no node is there at all: the harness cannot start
            if device.started:
                self.gone.append((device.device_id, None, "reconnect refused"))
            device.homes = device.homes[1:] + device.homes[:1]
            device.redirects = Redirects(device.homes[0])
            self._after(self.reconnect_s, lambda: self._connect(device))
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        KernelStamps.enable(sock)
        session = _Session(device, url, sock)
        request = Request(
            host=f"{host}:{port}", target=target, subprotocols=["tripwire.v1.msgpack"]
        )
        session.send(session.ws.send(request))
        self.selector.register(sock, selectors.EVENT_READ, lambda: self._readable(session))

    def _readable(self, session: _Session) -> None:
        try:
            data, arrived_ns = self.stamps.recv(session.sock, 262_144)
        except OSError:
            data, arrived_ns = b"", 0
        if not data:
            self._end(session)
            return
        session.ws.receive_data(data)
        try:
            for event in session.ws.events():
                if isinstance(event, Message):
                    chunk = event.data
                    session.partial += chunk if isinstance(chunk, bytes) else chunk.encode()
                    if event.message_finished:
                        frame = bytes(session.partial)
                        session.partial.clear()
                        self._message(session, frame, arrived_ns)
                elif isinstance(event, Ping):
                    session.send(session.ws.send(event.response()))
                elif isinstance(event, AcceptConnection):
                    self._hello(session)
                elif isinstance(event, CloseConnection):
                    session.closed = (event.code, event.reason or None)
                    if session.ws.state is not ConnectionState.CLOSED:
                        session.send(session.ws.send(event.response()))
                    self._end(session)
                    return
                elif isinstance(event, RejectConnection | RejectData):
                    session.closed = (None, "handshake refused")
                    self._end(session)
                    return
        except OSError:
            self._end(session)

    def _hello(self, session: _Session) -> None:
        device = session.device
        nonce = secrets.token_urlsafe(18)
        ts = time.time_ns() // 1_000_000
        hello = sign_hello(device.device_id, device.secret, device.terminal.hello(ts), ts, nonce)
        session.key = derive_session_key(
            device.secret, device_id=device.device_id, nonce=nonce, ts_ms=ts
        )
        self._send(session, hello)

    def _send(self, session: _Session, message: Any) -> None:
        frame = self.codec.encode(message)
        assert isinstance(frame, bytes)  # msgpack
        session.send(session.ws.send(BytesMessage(data=frame)))

    def _message(self, session: _Session, frame: bytes, arrived_ns: int) -> None:
        try:
            message = self.codec.decode(frame)
        except TripwireError as exc:
            _LOG.warning("a frame did not decode", device_id=session.device.device_id, error=exc)
            return
        if isinstance(message, _COMMANDS):
            self._due.append((session, message, arrived_ns))
            self.read_lag_ns.append(max(0, time.monotonic_ns() - arrived_ns))
        elif isinstance(message, AppPing):
            self._send(session, Heartbeat(seq=message.seq, time_ms=time.time_ns() // 1_000_000))
        elif isinstance(message, Welcome):
            self._welcome(session, message)
        elif isinstance(message, Moved):
            session.moved = message  # the close (4301) follows
        elif isinstance(message, DeviceError):
            _LOG.warning("device error", device_id=session.device.device_id, code=message.code)

    def _welcome(self, session: _Session, welcome: Welcome) -> None:
        device = session.device
        device.redirects.welcomed()
        device.refusals = 0
        self.on_welcome(device.device_id, session.url)
        now = time.time_ns() // 1_000_000
        self._send(session, device.terminal.snapshot(now))
        self._send(session, device.terminal.deals(now))
        self._send(session, device.terminal.account(now))
        if not device.started:
            device.started = True
            self._connect_next()
        self._after(float(welcome.heartbeat_s), lambda: self._heartbeat(session, 1, welcome))

    def _heartbeat(self, session: _Session, seq: int, welcome: Welcome) -> None:
        if session.ended:
            return
        now = time.time_ns() // 1_000_000
        try:
            self._send(session, Heartbeat(seq=seq, time_ms=now))
            for event in session.device.terminal.check_prices(now):
                self._send(session, event)
        except OSError:
            self._end(session)
            return
        self._after(float(welcome.heartbeat_s), lambda: self._heartbeat(session, seq + 1, welcome))

    def _execute_due(self) -> None:
        """Every command read in this pass, in arrival order: verified, executed, acked."""
        due, self._due = self._due, []
        for session, command, arrived_ns in due:
            if session.ended:
                continue
            try:
                verify_command(command, session.key)
            except BadSignature:
                self.bad_signatures += 1
                _LOG.warning("command with a bad signature refused", command_id=command.command_id)
                continue
            self.on_command(session.device.device_id, command, arrived_ns)
            try:
                for reply in session.device.terminal.handle(command, time.time_ns() // 1_000_000):
                    self._send(session, reply)
            except OSError:
                self._end(session)

    def _end(self, session: _Session) -> None:
        """The session is over: follow its ``moved``, or connect again after ``reconnect_s``."""
        if session.ended:
            return
        session.ended = True
        self.selector.unregister(session.sock)
        session.sock.close()
        device = session.device
        if session.moved is not None:
            wait_ms = device.redirects.moved(session.moved)
            if wait_ms is not None:
                self._after(wait_ms / 1000, lambda: self._connect(device))
                return
            session.closed = (4301, "too many redirects in a row")
        if device.started:
            self.gone.append((device.device_id, *session.closed))
        else:
            device.started = True  # refused with an error: it settled without a session
            self._connect_next()
        device.redirects = Redirects(device.homes[0])
        self._after(self.reconnect_s, lambda: self._connect(device))
