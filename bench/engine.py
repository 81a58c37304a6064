"""Engine harness: the actors in one process, no sockets.

    python -m bench.engine --positions 100000 --devices 1000 --rate 1000 --json out.json

A node with ``--devices`` users (one device each, connected through in-process links) and
``--positions`` open XAUUSD positions, SL/TP spread around the market, recovered from state as
after a restart. Three measurements:

``tick_to_outbox_us``  quotes from the real XAUUSD day at a constant ``--rate``; latency from each
                       quote's SCHEDULED send time (no coordinated omission: a late send counts
                       against us) to the moment its close commands sit in the device outboxes,
                       one sample per user a quote fired. p50/p99/p999 in microseconds, and the
                       split of each sample: ``offered_late_*``, how late the feed could offer
                       the quote (the loop busy with earlier bursts), ``after_offer_*``, the
                       rest (its own burst).
``max_quotes_per_s``   quotes offered as fast as the symbol actor takes them, at the full book.
``storm_100k_s``       one gap quote crossing 100,000 levels at once: seconds until every close
                       command is in an outbox. During it: ``storm_first_frame_ms``, until the
                       first close reaches a device link (the socket, in production), and
                       ``storm_loop_stall_ms``, the longest the event loop went without running
                       a task that sleeps 1 ms in a loop (what every other symbol, heartbeat and
                       request waited). ``--dispatch-budget-ms`` sets the slice in which a symbol
                       actor hands out fired triggers before it lets other tasks run, and
                       ``--fire-step`` how many crossed levels it fires per step.

Same-run baseline: ``hop_us``, a bare trio memory-channel round trip between two tasks
divided by two, i.e. one task hop, the unit the hot path is built from (two hops: feed -> symbol
actor -> user actor). The journal is in memory here (the durable journal is measured by
``bench.persistence``).
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np
import trio
import trio.lowlevel

from actors import gc_policy
from actors.directory import StaticDirectory
from actors.node import MemoryJournal, Node, NodeConfig
from bench.common import (
    base_parser,
    machine,
    open_positions,
    percentiles,
    print_table,
    run_harness,
    write_json,
)
from engine.instruments import DEFAULT_INSTRUMENTS
from engine.quotes import QuoteLimits
from engine.records import PositionSaved
from engine.state import EngineState
from persistence.logs import configure_logging
from protocol.device import HelloBody, PositionsSnapshot, SymbolSpec, TerminalPosition
from protocol.feed import Quote
from protocol.results import classify
from sim.market_data import load_ticks

GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]


class _Link:
    """An in-process device link that takes frames and counts them."""

    def __init__(self) -> None:
        self.frames = 0
        self.first_at: float | None = None
        """perf_counter of the first frame since :meth:`watch` (None: none yet)."""
        self._watching = False

    def watch(self) -> None:
        self.first_at, self._watching = None, True

    async def send(self, message: object) -> None:
        self.frames += 1
        if self._watching and self.first_at is None:
            self.first_at = time.perf_counter()

    async def close(self, code: int, reason: str) -> None:
        pass


def _positions(n: int, devices: int, entry: int, storm: bool) -> EngineState:
    state = EngineState()
    for p in open_positions(n, devices, entry, seed=5, all_buy=storm):
        state.apply(PositionSaved(position=p))
    return state


async def _start(
    nursery: trio.Nursery,
    n: int,
    devices: int,
    entry: int,
    storm: bool = False,
    budget_ms: float | None = None,
    fire_step: int | None = None,
) -> tuple[Node, list[_Link]]:
    """A running node with ``n`` positions armed and every device connected and reconciled."""
    state = _positions(n, devices, entry, storm)
    directory = StaticDirectory(devices={f"d{d}": f"u{d}" for d in range(devices)})
    # The replayed day is hours old; quotes are stamped "now", so staleness never bites.
    config = NodeConfig(
        quote_limits=QuoteLimits(max_age_ms=60_000, max_jump=0.5), quote_inbox=1 << 20
    )
    if budget_ms is not None:
        config = msgspec.structs.replace(config, dispatch_budget_ms=budget_ms)
    if fire_step is not None:
        config = msgspec.structs.replace(config, fire_step=fire_step)
    node = Node(
        journal=MemoryJournal(),
        directory=directory,
        state=state,
        config=config,
        instruments={"XAUUSD": GOLD},
        classify=classify,
    )
    await nursery.start(node.run)
    by_device: dict[str, list[TerminalPosition]] = {}
    for p in state.positions.values():
        assert p.ticket is not None and p.open_price is not None
        by_device.setdefault(p.device_id, []).append(
            TerminalPosition(
                ticket=p.ticket,
                symbol="XAUUSD",
                side=p.side,
                volume=p.volume,
                open_price=GOLD.to_price(p.open_price),
                open_time_ms=0,
                comment=p.client_id,
            )
        )
    links = []
    spec = SymbolSpec(name="XAUUSD", digits=GOLD.digits, contract_size=GOLD.contract_size)
    for d in range(devices):
        actor = node.device(f"d{d}")
        link = _Link()
        body = HelloBody(ea_build="bench", account_login=str(d), terminal_time_ms=0, symbols=[spec])
        session = await actor.open_session(body, link)
        actor.inbound(session, PositionsSnapshot(time_ms=0, positions=by_device.get(f"d{d}", [])))
        links.append(link)
    symbol = node.symbols["XAUUSD"]
    node.offer_quotes(
        [
            Quote(
                symbol="XAUUSD",
                bid=GOLD.to_price(entry),
                ask=GOLD.to_price(entry + 300),
                time_ms=node.clock.now_ms(),
            )
        ]
    )
    with trio.fail_after(300):
        while symbol.armed < n or node.pending():
            await trio.sleep(0.05)
    gc_policy.settle()  # as the runtime does after a recovery
    return node, links


async def _hop_us(rounds: int = 20_000) -> float:
    a_send, a_recv = trio.open_memory_channel[int](1)
    b_send, b_recv = trio.open_memory_channel[int](1)

    async def echo() -> None:
        async for x in a_recv:
            b_send.send_nowait(x)

    samples = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            a_send.send_nowait(0)
            await b_recv.receive()
            samples.append(time.perf_counter_ns() - t0)
        nursery.cancel_scope.cancel()
    return float(np.median(samples)) / 2 / 1000


async def _paced(
    node: Node, bids: list[float], asks: list[float], rate: float, duration: float
) -> dict[str, float]:
    """Constant-rate quotes; latency from each scheduled time to its commands in the outboxes."""
    count = min(len(bids), int(rate * duration))
    symbol = node.symbols["XAUUSD"]
    base_seq = symbol.seq
    scheduled = np.zeros(count + 1)
    offered = np.zeros(count + 1)
    latencies: list[float] = []
    late: list[float] = []
    first: dict[int, float] = {}
    fired_commands = [0]

    def tracer(seq: int, commands: int) -> None:
        i = seq - base_seq
        if 1 <= i <= count:
            latency = time.perf_counter() - scheduled[i]
            latencies.append(latency)
            late.append(offered[i] - scheduled[i])
            first.setdefault(i, latency)
            fired_commands[0] += commands

    node.probes.commands_out = tracer
    clock = node.clock
    start = time.perf_counter() + 0.05
    offer = node.offer_quotes
    for i in range(1, count + 1):
        due = start + (i - 1) / rate
        scheduled[i] = due
        remaining = due - time.perf_counter()
        if remaining > 0.0015:
            await trio.sleep(remaining - 0.0015)  # trio's timers are millisecond-grained
        while time.perf_counter() < due:
            await trio.lowlevel.checkpoint()  # spin the last stretch; the actors still run
        offered[i] = time.perf_counter()
        offer([Quote(symbol="XAUUSD", bid=bids[i - 1], ask=asks[i - 1], time_ms=clock.now_ms())])
    with trio.move_on_after(5):
        while node.pending():
            await trio.sleep(0.01)
    node.probes.commands_out = None
    us = percentiles(np.array(latencies) * 1e6, (50, 99, 99.9))
    # How much of each sample the quote spent before the feed could even offer it (the loop
    # still busy with earlier bursts), and how much after (its own burst).
    late_us = percentiles(np.array(late) * 1e6, (50, 99))
    after_us = percentiles((np.array(latencies) - np.array(late)) * 1e6, (50, 99))
    # Per firing quote, its first close: the floor under every other sample of its burst (it
    # waits for the burst's firing and grouping, not for the other users' closes).
    first_us = percentiles(np.array(list(first.values())) * 1e6, (50, 99))
    return {
        "p50": round(us["p50"], 1),
        "p99": round(us["p99"], 1),
        "p999": round(us["p999"], 1),
        "offered_late_p50": round(late_us["p50"], 1),
        "offered_late_p99": round(late_us["p99"], 1),
        "after_offer_p50": round(after_us["p50"], 1),
        "after_offer_p99": round(after_us["p99"], 1),
        "first_close_p50": round(first_us["p50"], 1),
        "first_close_p99": round(first_us["p99"], 1),
        "samples": len(latencies),
        "firing_quotes": len(first),
        "quotes": count,
        "commands": fired_commands[0],
    }


async def _throughput(node: Node, bids: list[float], asks: list[float]) -> float:
    """Quotes per second the symbol actor sustains at the full book."""
    symbol = node.symbols["XAUUSD"]
    n = len(bids)
    before = symbol.quotes
    clock = node.clock
    t0 = time.perf_counter()
    for j in range(0, n, 500):
        now = clock.now_ms()
        node.offer_quotes(
            [
                Quote(symbol="XAUUSD", bid=b, ask=a, time_ms=now)
                for b, a in zip(bids[j : j + 500], asks[j : j + 500], strict=True)
            ]
        )
        await trio.lowlevel.checkpoint()
    with trio.fail_after(120):
        while symbol.quotes - before < n:
            await trio.lowlevel.checkpoint()
    return n / (time.perf_counter() - t0)


async def _storm(
    n: int, devices: int, entry: int, budget_ms: float | None, fire_step: int | None
) -> dict[str, float]:
    """One gap quote through ``n`` long SLs: seconds until every close is in an outbox, and
    what the loop did meanwhile (first frame on a link, longest stall of a 1 ms ticker)."""
    async with trio.open_nursery() as nursery:
        node, links = await _start(
            nursery, n, devices, entry, storm=True, budget_ms=budget_ms, fire_step=fire_step
        )
        done = trio.Event()
        issued = [0]

        def tracer(seq: int, commands: int) -> None:
            issued[0] += commands
            if issued[0] >= n:
                done.set()

        stall = [0.0]

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await trio.sleep(0.001)
                now = time.perf_counter()
                stall[0] = max(stall[0], now - last)
                last = now

        node.probes.commands_out = tracer
        for link in links:
            link.watch()
        nursery.start_soon(ticker)
        await trio.sleep(0.01)
        gap = GOLD.to_price(entry - 100_000)  # 100 dollars under every SL
        t0 = time.perf_counter()
        node.offer_quotes(
            [Quote(symbol="XAUUSD", bid=gap, ask=gap + 0.3, time_ms=node.clock.now_ms())]
        )
        with trio.fail_after(120):
            await done.wait()
        elapsed = time.perf_counter() - t0
        await trio.sleep(0.01)  # the writers take the last frames
        first = min((link.first_at for link in links if link.first_at is not None), default=t0)
        gc.unfreeze()
        nursery.cancel_scope.cancel()
    return {
        "storm_s": elapsed,
        "first_frame_ms": (first - t0) * 1000,
        "loop_stall_ms": stall[0] * 1000,
    }


async def run(
    positions: int,
    devices: int,
    rate: float,
    duration: float,
    storm: int,
    budget_ms: float | None = None,
    fire_step: int | None = None,
) -> dict[str, object]:
    ticks = load_ticks("XAUUSD")
    bids, asks = ticks.bid.tolist(), ticks.ask.tolist()
    entry = GOLD.to_points(bids[0])
    hop = await _hop_us()
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        node, _ = await _start(
            nursery, positions, devices, entry, budget_ms=budget_ms, fire_step=fire_step
        )
        setup_s = time.perf_counter() - t0
        latency = await _paced(node, bids, asks, rate, duration)
        # Throughput on quotes that stay inside the book's quiet middle (nothing left to fire
        # there after the paced run), so what is measured is the per-quote path.
        quiet_bid = bids[0]
        qb = [quiet_bid + (k % 7) * 0.01 for k in range(50_000)]
        qa = [b + 0.3 for b in qb]
        max_qps = await _throughput(node, qb, qa)
        gc.unfreeze()
        nursery.cancel_scope.cancel()
    storm_run = await _storm(storm, devices, entry, budget_ms, fire_step) if storm else None
    figures = {"storm_100k_s": ("storm_s", 3), "storm_first_frame_ms": ("first_frame_ms", 1)}
    figures["storm_loop_stall_ms"] = ("loop_stall_ms", 1)
    return {
        "tick_to_outbox_us": latency,
        "max_quotes_per_s": round(max_qps),
        **{
            name: None if storm_run is None else round(storm_run[key], digits)
            for name, (key, digits) in figures.items()
        },
        "storm_positions": storm,
        "hop_us": round(hop, 1),
        "setup_s": round(setup_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0, help="quotes per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of paced quotes")
    parser.add_argument(
        "--storm", type=int, default=100_000, help="levels the breach storm crosses (0: skip)"
    )
    parser.add_argument(
        "--dispatch-budget-ms",
        type=float,
        default=None,
        help="NodeConfig.dispatch_budget_ms (default: the node's, 50)",
    )
    parser.add_argument(
        "--fire-step",
        type=int,
        default=None,
        help="NodeConfig.fire_step, levels fired per step of a storm (default: the node's, 25,000)",
    )
    args = parser.parse_args(argv)
    # The engine logs as in production (every trading event at info, rendered as JSON lines),
    # into a file so the table is not buried: the logging's cost is part of what is measured.
    log_path = Path(tempfile.gettempdir()) / "tripwire-bench-engine.log"
    with log_path.open("w") as log_file:
        configure_logging("json", "info", stream=log_file)
        results = run_harness(
            run,
            args.positions,
            args.devices,
            args.rate,
            args.duration,
            args.storm,
            args.dispatch_budget_ms,
            args.fire_step,
        )
    print(f"engine log: {log_path}")
    lat = results["tick_to_outbox_us"]
    assert isinstance(lat, dict)
    rows = [
        {"metric": "tick_to_outbox_us p50", "value": lat["p50"], "target": "<= 50"},
        {"metric": "tick_to_outbox_us p99", "value": lat["p99"], "target": "<= 500"},
        {"metric": "tick_to_outbox_us p999", "value": lat["p999"], "target": ""},
        {"metric": "  of which offered late p50", "value": lat["offered_late_p50"], "target": ""},
        {"metric": "  of which offered late p99", "value": lat["offered_late_p99"], "target": ""},
        {"metric": "  of which after the offer p50", "value": lat["after_offer_p50"], "target": ""},
        {"metric": "  of which after the offer p99", "value": lat["after_offer_p99"], "target": ""},
        {"metric": "first close of a quote p50", "value": lat["first_close_p50"], "target": ""},
        {"metric": "first close of a quote p99", "value": lat["first_close_p99"], "target": ""},
        {"metric": "samples (users a quote fired)", "value": lat["samples"], "target": ""},
        {"metric": "quotes that fired", "value": lat["firing_quotes"], "target": ""},
        {"metric": "max_quotes_per_s", "value": results["max_quotes_per_s"], "target": ">= 50,000"},
        {"metric": "storm_100k_s", "value": results["storm_100k_s"], "target": "<= 1"},
        {"metric": "storm_first_frame_ms", "value": results["storm_first_frame_ms"], "target": ""},
        {"metric": "storm_loop_stall_ms", "value": results["storm_loop_stall_ms"], "target": ""},
        {"metric": "hop_us (same-run baseline)", "value": results["hop_us"], "target": ""},
    ]
    print_table(
        f"engine, {args.positions:,} positions, {args.devices:,} devices, {args.rate:g} quotes/s",
        rows,
        ["metric", "value", "target"],
    )
    write_json(args.json, {"machine": machine(), "config": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
