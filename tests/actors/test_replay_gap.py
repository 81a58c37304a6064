"""The real XAUUSD gap through the actors closes exactly the positions brute force says."""

from __future__ import annotations

import numpy as np
import trio

from actors.clock import TrioClock
from actors.directory import StaticDirectory
from actors.node import MemoryJournal, Node
from engine.instruments import DEFAULT_INSTRUMENTS
from engine.lifecycle import PositionState
from engine.positions import Position
from engine.records import PositionSaved
from engine.state import EngineState
from protocol.common import Side
from protocol.device import CloseCommand, TerminalPosition
from protocol.feed import Quote
from sim.market_data import load_ticks
from tests.actors.conftest import Harness, ScriptedDevice, classify


async def test_gap_closes_exactly_what_the_oracle_says(autojump_clock, nursery) -> None:
    gold = DEFAULT_INSTRUMENTS["XAUUSD"]
    bids, asks = load_ticks("XAUUSD").points(gold.digits)
    gap = int(np.argmax(-np.diff(bids))) + 1
    window = slice(gap - 200, gap + 200)
    wb, wa = bids[window], asks[window]
    rng = np.random.default_rng(3)
    state = EngineState()
    expected = set()
    for i in range(600):
        side = Side.BUY if i % 2 == 0 else Side.SELL
        ref = int(wb[0] if side is Side.BUY else wa[0])
        sl = ref - side.sign * int(rng.integers(200, 9000))
        tp = ref + side.sign * int(rng.integers(200, 9000))
        pid = f"P{i:05d}"
        state.apply(
            PositionSaved(
                position=Position(
                    id=pid,
                    user_id=f"u{i % 7}",
                    device_id=f"d{i % 7}",
                    account="1",
                    symbol="XAUUSD",
                    side=side,
                    volume=0.1,
                    state=PositionState.OPEN,
                    open_price=ref,
                    sl=sl,
                    tp=tp,
                    ticket=10_000 + i,
                    client_id=f"tw:{pid}",
                )
            )
        )
        prices = wb if side is Side.BUY else wa
        hit = (
            (prices <= sl) | (prices >= tp) if side is Side.BUY else (prices >= sl) | (prices <= tp)
        )
        if hit.any():
            expected.add(pid)
    node = Node(
        journal=MemoryJournal(),
        clock=TrioClock(),
        classify=classify,
        state=state,
        directory=StaticDirectory(devices={f"d{k}": f"u{k}" for k in range(7)}),
    )
    await nursery.start(node.run)

    h = Harness(node, node.journal)
    links = []
    for k in range(7):
        d = ScriptedDevice(h, f"d{k}")
        held = [p for p in state.positions.values() if p.device_id == f"d{k}"]
        links.append(
            await d.connect(
                positions=[
                    TerminalPosition(
                        ticket=p.ticket,
                        symbol="XAUUSD",
                        side=p.side,
                        volume=p.volume,
                        open_price=gold.to_price(p.open_price),
                        open_time_ms=0,
                        comment=p.client_id,
                    )
                    for p in held
                ]
            )
        )
    for b, a in zip(wb.tolist(), wa.tolist(), strict=True):
        node.offer_quotes(
            [
                Quote(
                    symbol="XAUUSD",
                    bid=gold.to_price(b),
                    ask=gold.to_price(a),
                    time_ms=node.clock.now_ms(),
                )
            ]
        )
        await trio.sleep(0.001)
    await trio.sleep(1)
    closed = {
        f.command_id.split(".")[0]
        for link in links
        for f in link.frames
        if isinstance(f, CloseCommand)
    }
    assert len(expected) > 100
    assert closed == expected
