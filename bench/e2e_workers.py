"""The processes ``bench.e2e`` runs beside the engine: simulated EAs, clients, the feeder.

Each is ``python -m bench.e2e_workers ROLE --config FILE``; it prints ``ready`` on standard
output once connected, runs until its standard input closes (or its duration ends), then writes
what it observed to ``--out`` as msgpack. Times are ``time.monotonic_ns()``: the same clock in
every process of the machine, so a quote's scheduled time (feeder) and a command's arrival
(device) can be subtracted.

``devices``  simulated EAs (``bench.ea_fleet``: one thread serves them all), each holding
             ``positions_per_device`` positions it reports in its snapshot, tagged as the
             engine's own (``tw:``), so the engine adopts and arms them at once, as after a
             restart that lost them; records every command's arrival and every welcome (when,
             and by which node), and first measures the raw WebSocket echo round trip against
             the engine process (the same-run baseline, on the EAs' client stack). With
             ``urls`` (several nodes of a cluster) each device starts at one of them picked at
             random, follows ``moved`` to the node that serves its user, and moves on to the
             next URL when a node refuses the connection.
``clients``  ``/ws/client`` subscribers (a JWT each); record when each position delta arrives.
``feeder``   sends quotes through ``/ws/feed`` at a constant rate, each at its scheduled time
             (``bench.wsclient``: one thread, a blocking socket; it waits in ``select`` with
             the kernel's precision, no trio).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any

import msgspec
import trio
from trio_websocket import open_websocket_url

from bench.ea_fleet import EaFleet, FleetDevice
from bench.wsclient import BlockingWebSocket
from engine.instruments import DEFAULT_INSTRUMENTS
from protocol.client import PositionDelta, PriceUpdate, Snapshot, Subscribe
from protocol.codec import client_client_codec, feed_codec
from protocol.common import Side
from protocol.device import CloseCommand, TerminalPosition
from protocol.feed import MAX_QUOTES_PER_BATCH, Quote, QuoteBatch
from protocol.ids import client_id
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
    nice: int = 0
    """Added to the worker's nice value at start (see ``bench.e2e --harness-nice``)."""
    cpus: list[int] = msgspec.field(default_factory=list)
    """The CPUs the worker runs on (empty: any; see ``bench.e2e --pin``)."""


async def _until_stdin_closes() -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    while await stdin.receive_some(1024):
        pass


def _echo_rtt(url: str, rounds: int) -> list[int]:
    """Round trips of a small frame through the engine process's raw echo server (ns), on the
    same client stack as the EAs (a blocking socket and wsproto), to the kernel's receipt of
    the answer, as a command's arrival is stamped (``bench.ea_fleet``)."""
    samples = []
    ws = BlockingWebSocket(url)
    try:
        payload = b"x" * 64
        for _ in range(rounds):
            ws.stamps.resync()
            t0 = time.monotonic_ns()
            ws.send(payload)
            ws.receive()
            samples.append(ws.received_ns - t0)
    finally:
        ws.close()
    return samples


def _terminal(spec: DeviceSpec) -> PaperTerminal:
    """The spec's terminal, holding its positions, each tagged as the engine's own."""
    prices: dict[str, tuple[float, float]] = {}
    terminal = PaperTerminal(
        DEFAULT_INSTRUMENTS, prices.get, PaperConfig(broker_stops=False), login=spec.device_id
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
            # The engine's tag: a found position it opened is watched at once (one without
            # would wait, unwatched, for its user to adopt it).
            comment=client_id(f"B{ticket}"),
        )
        prices[symbol] = (open_price, open_price)  # fills at the open: P&L is not measured
    return terminal


def run_devices(config: WorkerConfig) -> dict[str, Any]:
    """The EAs of this process (``bench.ea_fleet``), one thread serving them all."""
    arrivals: list[tuple[str, str, int, int]] = []  # device, command id, ticket, arrival ns
    welcomes: list[tuple[str, str, int]] = []  # device, URL of the welcoming node, arrival ns
    echo = _echo_rtt(config.echo_url, config.echo_rounds) if config.echo_url else []
    homes = config.urls or [config.url]
    pick = random.Random(config.seed)
    devices = []
    for spec in config.devices:
        first = pick.randrange(len(homes))
        order = homes[first:] + homes[:first]
        devices.append(FleetDevice(spec.device_id, spec.secret.encode(), _terminal(spec), order))

    def on_command(device: str, command: Any, arrived_ns: int) -> None:
        if isinstance(command, CloseCommand):
            arrivals.append((device, command.command_id, command.ticket, arrived_ns))

    def on_welcome(device: str, url: str) -> None:
        welcomes.append((device, url, time.monotonic_ns()))

    fleet = EaFleet(
        devices, on_command=on_command, on_welcome=on_welcome, reconnect_s=config.reconnect_s
    )
    fleet.run(lambda: print("ready", flush=True), sys.stdin.fileno())
    return {
        "arrivals": arrivals,
        "welcomes": welcomes,
        "echo_ns": echo,
        "lag_ns": fleet.lag_ns,
        "read_lag_ns": fleet.read_lag_ns,
        "bad_signatures": fleet.bad_signatures,
        "disconnects": fleet.gone,
    }


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


def run_feeder(config: WorkerConfig) -> dict[str, Any]:
    """Send the quotes through ``/ws/feed``, each when it is due; no trio.

    A publisher's work per quote is a frame and a send. Through a timer thread handing each
    due quote to trio, a task and trio-websocket's send path it was ~0.2 ms of CPU a quote
    (10-12 % of a core at 500 quotes/s, on the two cores the engine shares), and the hand-over
    made quotes late. Here one thread waits for each due time in ``select`` on the socket
    (answering the engine's pings meanwhile), frames with wsproto and sends.
    """
    codec = feed_codec("msgpack")
    feed = BlockingWebSocket(
        f"{config.url}/ws/feed?token={config.feed_token}", ["tripwire.v1.msgpack"]
    )
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
    if config.nice:
        os.nice(config.nice)
    if config.cpus:
        os.sched_setaffinity(0, config.cpus)
    if args.role == "clients":
        result = trio.run(run_clients, config)
    else:
        result = {"devices": run_devices, "feeder": run_feeder}[args.role](config)
    with open(args.out, "wb") as fh:
        fh.write(msgspec.msgpack.encode(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
