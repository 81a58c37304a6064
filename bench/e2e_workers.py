"""The processes ``bench.e2e`` runs beside the engine: simulated EAs, clients, the feeder.

Each is ``python -m bench.e2e_workers ROLE --config FILE``; it prints ``ready`` on standard
output once connected, runs until its standard input closes (or its duration ends), then writes
what it observed to ``--out`` as msgpack. Times are ``time.monotonic_ns()``: the same clock in
every process of the machine, so a quote's scheduled time (feeder) and a command's arrival
(device) can be subtracted.

``devices``  simulated EAs (``sim.ea``), each holding ``positions_per_device``
             positions it reports in its snapshot, tagged as the engine's own (``tw:``), so
             the engine adopts and arms them at once, as after a restart that lost them; records
             every command's arrival and every welcome (when, and by which node), and first
             measures the raw WebSocket echo round trip against the engine process (the
             same-run baseline). With ``urls`` (several nodes of a cluster) each device starts
             at one of them picked at random, follows ``moved`` to the node that serves its
             user, and moves on to the next URL when a node refuses the connection.
``clients``  ``/ws/client`` subscribers (a JWT each); record when each position delta arrives.
``feeder``   sends quotes through ``/ws/feed`` at a constant rate, each at its scheduled time
             (one thread, a blocking socket: it waits in ``select`` with the kernel's
             precision, no trio).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import select
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import msgspec
import trio
from trio_websocket import HandshakeError, open_websocket_url
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
)

from engine.instruments import DEFAULT_INSTRUMENTS
from protocol.client import PositionDelta, PriceUpdate, Snapshot, Subscribe
from protocol.codec import client_client_codec, feed_codec
from protocol.common import Side
from protocol.device import CloseCommand, TerminalPosition
from protocol.feed import MAX_QUOTES_PER_BATCH, Quote, QuoteBatch
from protocol.ids import client_id
from protocol.redirects import Redirects
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal

__all__ = ["WorkerConfig", "main"]


class DeviceSpec(msgspec.Struct, frozen=True):
    device_id: str
    secret: str
    positions: list[tuple[int, str, str, float, float, float, float]]
    """(ticket, symbol, side, volume, open_price, sl, tp)."""


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    echo_url: str = ""
    devices: list[DeviceSpec] = msgspec.field(default_factory=list)
    tokens: list[str] = msgspec.field(default_factory=list)
    quotes: list[tuple[str, float, float]] = msgspec.field(default_factory=list)
    rate: float = 1000.0
    start_ns: int = 0
    feed_token: str = ""
    frame_ms: float = 1.0
    """The feeder sends at most one frame per ``frame_ms``, with every quote due by then."""
    echo_rounds: int = 2000
    urls: list[str] = msgspec.field(default_factory=list)
    """Devices: the nodes to start at (one picked at random per device; empty: ``url``)."""
    seed: int = 0
    """Devices: the seed of that random pick."""
    reconnect_s: float = 1.0
    """Devices: the pause before connecting again after a session ended or was refused."""


async def _until_stdin_closes() -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    while await stdin.receive_some(1024):
        pass


async def _echo_rtt(url: str, rounds: int) -> list[int]:
    """Round trips of a small frame through the engine process's raw echo server (ns)."""
    samples = []
    async with open_websocket_url(url) as ws:
        payload = b"x" * 64
        for _ in range(rounds):
            t0 = time.monotonic_ns()
            await ws.send_message(payload)
            await ws.get_message()
            samples.append(time.monotonic_ns() - t0)
    return samples


async def _loop_lag(samples: list[int], period_ns: int = 10_000_000) -> None:
    """How late this process's scheduler wakes a task that sleeps ``period_ns``: when the
    measuring EAs fall behind, their arrival stamps are late too, and this says so. Every
    10 ms: at 1 ms the probe alone kept each device process ~6 % of a core busy (at rest, 50
    EAs each: 8.0-8.6 % with it, 2.3-2.4 % now), on the cores the engine shares."""
    while True:
        due = time.monotonic_ns() + period_ns
        await trio.sleep(period_ns / 1e9)
        samples.append(max(0, time.monotonic_ns() - due))


class _StampedRedirects(Redirects):
    """The EA's redirect state, noting each welcome: when, and the URL that gave it."""

    def __init__(self, home: str, on_welcome: Any) -> None:
        super().__init__(home)
        self._on_welcome = on_welcome

    def welcomed(self) -> None:
        super().welcomed()
        self._on_welcome(self.target)


async def run_devices(config: WorkerConfig) -> dict[str, Any]:
    arrivals: list[tuple[str, str, int, int]] = []  # device, command id, ticket, arrival ns
    welcomes: list[tuple[str, str, int]] = []  # device, URL of the welcoming node, arrival ns
    echo = await _echo_rtt(config.echo_url, config.echo_rounds) if config.echo_url else []
    lag_ns: list[int] = []
    homes = config.urls or [config.url]
    pick = random.Random(config.seed)

    def quote_of(terminal_prices: dict[str, tuple[float, float]]) -> Any:
        return terminal_prices.get

    eas: list[SimulatedEA] = []
    gone: list[tuple[str, int | None, str | None]] = []  # device, close code, reason
    async with trio.open_nursery() as nursery:
        for spec in config.devices:
            prices: dict[str, tuple[float, float]] = {}
            terminal = PaperTerminal(
                DEFAULT_INSTRUMENTS,
                quote_of(prices),
                PaperConfig(broker_stops=False),
                login=spec.device_id,
            )
            for ticket, symbol, side, volume, open_price, sl, tp in spec.positions:
                terminal.positions[ticket] = TerminalPosition(
                    ticket=ticket,
                    symbol=symbol,
                    side=Side(side),
                    volume=volume,
                    open_price=open_price,
                    open_time_ms=0,
                    sl=sl,
                    tp=tp,
                    # The engine's tag: a found position it opened is watched at once (one
                    # without would wait, unwatched, for its user to adopt it).
                    comment=client_id(f"B{ticket}"),
                )
                prices[symbol] = (open_price, open_price)  # fills at the open: P&L is not measured

            def on_command(command: Any, arrived_ns: int, device: str = spec.device_id) -> None:
                if isinstance(command, CloseCommand):
                    arrivals.append((device, command.command_id, command.ticket, arrived_ns))

            def on_welcome(url: str, device: str = spec.device_id) -> None:
                welcomes.append((device, url, time.monotonic_ns()))

            first = pick.randrange(len(homes))
            order = homes[first:] + homes[:first]
            device = _Device(spec, terminal, order, on_command, on_welcome, config.reconnect_s)
            await nursery.start(device.keep_connected, eas, gone)
        nursery.start_soon(_loop_lag, lag_ns)
        print("ready", flush=True)
        await _until_stdin_closes()
        nursery.cancel_scope.cancel()
    return {
        "arrivals": arrivals,
        "welcomes": welcomes,
        "echo_ns": echo,
        "lag_ns": lag_ns,
        "bad_signatures": sum(ea.bad_signatures for ea in eas),
        "disconnects": gone,
    }


class _Device:
    """One terminal, connected as an EA stays connected (see :meth:`keep_connected`)."""

    def __init__(
        self,
        spec: DeviceSpec,
        terminal: PaperTerminal,
        homes: list[str],
        on_command: Any,
        on_welcome: Any,
        reconnect_s: float,
    ) -> None:
        self.spec = spec
        self.terminal = terminal
        self.homes = homes
        """The nodes to connect to, the current one first."""
        self.on_command = on_command
        self.on_welcome = on_welcome
        self.reconnect_s = reconnect_s

    def _next_home(self) -> None:
        self.homes = self.homes[1:] + self.homes[:1]

    async def keep_connected(
        self,
        eas: list[SimulatedEA],
        gone: list[tuple[str, int | None, str | None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """When the server closes the session, note why and connect again after
        ``reconnect_s`` (same terminal: same positions, same window of executed command ids,
        so a close resent under its old id is answered, not executed). A refused connection
        (the node is down) moves on to the next node.

        A node that does not serve the device's user answers ``moved``: the EA follows it at
        once to the node that does (``sim.ea``, ``protocol.redirects``); after more than three
        in a row it gives up, which is noted like a close, and this loop starts again at its
        current node."""
        first = True
        refusals = 0
        while True:
            ea = SimulatedEA(
                self.homes[0],
                self.spec.device_id,
                self.spec.secret,
                self.terminal,
                on_command=self.on_command,
            )
            ea.redirects = _StampedRedirects(self.homes[0], self.on_welcome)
            eas.append(ea)
            refused = False
            try:
                async with trio.open_nursery() as inner:
                    await inner.start(ea.run)
                    if first:
                        task_status.started()
                        first = False
            except* (OSError, HandshakeError):
                refusals += 1
                if first and refusals >= len(self.homes):
                    raise  # no node is there at all: the harness cannot start
                refused = True
            code: int | None
            reason: str | None
            if refused:
                self._next_home()
                code, reason = None, "reconnect refused"
            else:
                code, reason = ea.closed or (None, None)
            if ea.gave_up:
                code, reason = 4301, "too many redirects in a row"
            if not first:
                gone.append((self.spec.device_id, code, reason))
            await trio.sleep(self.reconnect_s)


async def _keep_connected(
    url: str,
    spec: DeviceSpec,
    terminal: PaperTerminal,
    on_command: Any,
    eas: list[SimulatedEA],
    gone: list[tuple[str, int | None, str | None]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One terminal kept connected to ``url`` alone, reconnecting after a second
    (:meth:`_Device.keep_connected`)."""
    device = _Device(spec, terminal, [url], on_command, lambda _url: None, 1.0)
    await device.keep_connected(eas, gone, task_status=task_status)


async def run_clients(config: WorkerConfig) -> dict[str, Any]:
    deltas: list[tuple[str, int, int, str, int]] = []  # device, ticket, arrival ns, state, lag ms
    price_lag_ms: list[int] = []
    codec = client_client_codec("json")
    dropped = [0]

    async def client(token: str, ready: trio.Event) -> None:
        url = f"{config.url}/ws/client?token={token}"
        try:
            async with open_websocket_url(
                url, subprotocols=["tripwire.v1.json"], message_queue_size=8192
            ) as ws:
                await ws.send_message(codec.encode(Subscribe(channels=["positions", "prices"])))
                first = codec.decode(await ws.get_message())
                assert isinstance(first, Snapshot)
                ready.set()
                while True:
                    message = codec.decode(await ws.get_message())
                    now_ms = time.time_ns() // 1_000_000
                    if isinstance(message, PositionDelta):
                        p = message.position
                        deltas.append(
                            (
                                p.device_id or "",
                                p.ticket or 0,
                                time.monotonic_ns(),
                                p.state,
                                now_ms - p.updated_ms,
                            )
                        )
                    elif isinstance(message, PriceUpdate):
                        price_lag_ms.append(now_ms - message.time_ms)
        except Exception:
            dropped[0] += 1
            ready.set()

    async with trio.open_nursery() as nursery:
        for token in config.tokens:
            ready = trio.Event()
            nursery.start_soon(client, token, ready)
            await ready.wait()
        print("ready", flush=True)
        await _until_stdin_closes()
        nursery.cancel_scope.cancel()
    return {"deltas": deltas, "price_lag_ms": price_lag_ms, "dropped": dropped[0]}


class _Feed:
    """The feeder's WebSocket: a plain blocking socket and a wsproto client, in one thread."""

    def __init__(self, url: str) -> None:
        split = urlsplit(url)
        host, port = split.hostname or "127.0.0.1", split.port or 80
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = WSConnection(ConnectionType.CLIENT)
        target = f"{split.path}?{split.query}" if split.query else split.path
        request = Request(
            host=f"{host}:{port}", target=target, subprotocols=["tripwire.v1.msgpack"]
        )
        self.sock.sendall(self.conn.send(request))
        while not self._take(self._recv(), accepting=True):
            pass

    def _recv(self) -> bytes:
        data = self.sock.recv(65_536)
        if not data:
            raise ConnectionError("the engine closed the feed connection")
        return data

    def _take(self, data: bytes, *, accepting: bool = False) -> bool:
        """Feed wsproto; answer pings. True once the handshake was accepted (``accepting``)."""
        self.conn.receive_data(data)
        for event in self.conn.events():
            if isinstance(event, AcceptConnection):
                return True
            if isinstance(event, Ping):
                self.sock.sendall(self.conn.send(event.response()))
            elif isinstance(event, RejectConnection | CloseConnection):
                raise ConnectionError(f"the engine refused or closed the feed: {event!r}")
        return not accepting

    def wait_until(self, t_ns: int) -> None:
        """Sleep until ``t_ns`` (monotonic), answering what the engine sends meanwhile."""
        while (left := t_ns - time.monotonic_ns()) > 0:
            readable, _, _ = select.select([self.sock], [], [], left / 1e9)
            if readable:
                self._take(self._recv())

    def send(self, payload: bytes) -> None:
        self.sock.sendall(self.conn.send(BytesMessage(data=payload)))

    def close(self) -> None:
        """Close politely, waiting a little for the engine's answer."""
        with contextlib.suppress(Exception):
            self.sock.sendall(self.conn.send(CloseConnection(code=1000)))
            self.sock.settimeout(2.0)
            while self.sock.recv(65_536):
                pass
        self.sock.close()


def run_feeder(config: WorkerConfig) -> dict[str, Any]:
    """Send the quotes through ``/ws/feed``, each when it is due; no trio.

    A publisher's work per quote is a frame and a send. Through a timer thread handing each
    due quote to trio, a task and trio-websocket's send path it was ~0.2 ms of CPU a quote
    (10-12 % of a core at 500 quotes/s, on the two cores the engine shares), and the hand-over
    made quotes late. Here one thread waits for each due time in ``select`` on the socket
    (answering the engine's pings meanwhile), frames with wsproto and sends.
    """
    codec = feed_codec("msgpack")
    feed = _Feed(f"{config.url}/ws/feed?token={config.feed_token}")
    start_ns = time.monotonic_ns() + 500_000_000  # once connected: no start-up lateness
    # The schedule's origin first: a harness measures windows of the run from it.
    print(f"start_ns {start_ns}", flush=True)
    print("ready", flush=True)
    period_ns = int(1e9 / config.rate)
    frame_ns = int(config.frame_ms * 1e6)
    late_ns: list[int] = []
    quotes = config.quotes
    i, next_frame = 0, 0
    try:
        while i < len(quotes):
            # One frame per ``frame_ms`` at most, carrying every quote due by then. At the
            # default (1 ms) each quote leaves when it is due, as a real publisher sends it:
            # holding quotes back would count against the engine.
            feed.wait_until(max(start_ns + i * period_ns, next_frame))
            now = time.monotonic_ns()
            j, last = i + 1, min(len(quotes), i + MAX_QUOTES_PER_BATCH)
            while j < last and start_ns + j * period_ns <= now:
                j += 1
            now_ms = time.time_ns() // 1_000_000
            batch = QuoteBatch(
                quotes=[Quote(symbol=s, bid=b, ask=a, time_ms=now_ms) for s, b, a in quotes[i:j]],
                sent_ms=now_ms,
            )
            frame = codec.encode(batch)
            assert isinstance(frame, bytes)  # msgpack
            feed.send(frame)
            sent_ns = time.monotonic_ns()
            late_ns.extend(sent_ns - (start_ns + k * period_ns) for k in range(i, j))
            next_frame = now + frame_ns
            i = j
    finally:
        feed.close()
    return {"sent": len(quotes), "start_ns": start_ns, "late_ns": late_ns}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A bench.e2e worker process.")
    parser.add_argument("role", choices=["devices", "clients", "feeder"])
    parser.add_argument("--config", required=True, help="msgpack WorkerConfig file")
    parser.add_argument("--out", required=True, help="where to write what was observed")
    args = parser.parse_args(argv)
    with open(args.config, "rb") as fh:
        config = msgspec.msgpack.decode(fh.read(), type=WorkerConfig)
    if args.role == "feeder":
        result = run_feeder(config)
    else:
        run = {"devices": run_devices, "clients": run_clients}[args.role]
        result = trio.run(run, config)
    with open(args.out, "wb") as fh:
        fh.write(msgspec.msgpack.encode(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
