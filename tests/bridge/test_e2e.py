"""The real engine, the real bridge and the fake MT5 terminal, on the real XAUUSD day.

Three processes and a Postgres: ``tripwire run``, ``tripwire-ea`` (with the fake
``MetaTrader5`` package on its path) and the fake terminal, which outlives them all as a broker
does. The trader is provisioned with the operator's CLI; positions with SL and TP are approved
over REST; the test replays the day's ticks into the terminal and the same quotes into the
engine's feed, and the engine's triggers close every position through the bridge.

Whatever is killed on the way, the terminal's deal history must show one opening and one
closing deal per position, none twice, and the engine must hold every position closed with the
fill of that closing deal (never pending, never a P&L of 0 for a lost fill):

* the bridge is SIGKILLed right after ``order_send`` returned a close, before it could ack
  (twice), and started again;
* the first close is requoted (the engine retries it under a new id);
* the engine is SIGKILLed mid-day and started again.

The broker's own SL/TP are off (``--no-broker-stops``), so every close is the engine's command.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from sim.mt5 import constants as C  # noqa: N812
from tests.bridge.harness import (
    BridgeProcess,
    EngineProcess,
    TerminalProcess,
    Trader,
    open_feed,
    provision,
    send_quote,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

POSITIONS = 6
TICKS_PER_STEP = 10


class World:
    def __init__(self, pg_dsn: str, tmp_path: Path) -> None:
        state = tmp_path / "engine"
        self.user_id, device_id, secret = provision(pg_dsn, state)
        self.engine = EngineProcess(pg_dsn, state, tmp_path / "engine.log")
        self.terminal = TerminalProcess(tmp_path, "--suffix", "m", "--no-broker-stops")
        self.ctl = self.terminal.start()
        self.bridge = BridgeProcess(self.engine, self.terminal, device_id, secret, tmp_path)
        self.trader = Trader(self.engine, self.user_id)
        self.log = tmp_path / "bridge.log"

    def terminal_state(self) -> dict[str, Any]:
        return self.ctl.state()

    async def close(self) -> None:
        await self.bridge.stop()
        await self.engine.stop()
        self.terminal.stop()


async def _until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    with trio.move_on_after(seconds):
        while not await check():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def _open_book(world: World, feed: Any) -> None:
    """Buys and sells at the market, each with its SL and TP a little away."""

    async def connected() -> bool:
        return any(d["connected"] for d in await world.trader.devices())

    await _until(connected, 60, "the bridge to connect")
    bid, ask = world.ctl.quotes()["XAUUSD"]
    await send_quote(feed, bid, ask)
    for i in range(POSITIONS):
        buy = i % 2 == 0
        entry = ask if buy else bid
        sign = 1 if buy else -1
        d_sl, d_tp = 0.35 + 0.15 * i, 0.45 + 0.15 * i
        await world.trader.approve(
            "buy" if buy else "sell",
            entry,
            round(entry - sign * d_sl, 3),
            round(entry + sign * d_tp, 3),
        )

    async def opened() -> bool:
        return len(world.terminal_state()["positions"]) == POSITIONS

    await _until(opened, 30, "the bridge to open every position")


async def _replay(
    world: World,
    feed: Any,
    until: Callable[[dict[str, Any]], bool],
    on_step: Callable[[], Awaitable[None]] | None = None,
    max_steps: int = 6000,
) -> None:
    """Replay the day into the terminal and the engine until ``until(terminal state)``."""
    for _ in range(max_steps):
        bid, ask = world.ctl.step(TICKS_PER_STEP)["XAUUSD"]
        await send_quote(feed, bid, ask)
        if on_step is not None:
            await on_step()
        if until(world.terminal_state()):
            return
        await trio.sleep(0.02)
    raise AssertionError("the replay ended before the condition was met")


def _flat(state: dict[str, Any]) -> bool:
    return not state["positions"]


def _exits(state: dict[str, Any]) -> list[Any]:
    return [d for d in state["deals"] if d.entry == C.DEAL_ENTRY_OUT]


async def _check_exactly_once(world: World) -> None:
    state = world.terminal_state()
    assert state["positions"] == ()
    opens = Counter(d.position_id for d in state["deals"] if d.entry == C.DEAL_ENTRY_IN)
    closes = Counter(d.position_id for d in _exits(state))
    assert len(opens) == POSITIONS and set(opens.values()) == {1}, opens
    assert set(closes) == set(opens), (closes, opens)
    assert set(closes.values()) == {1}, f"a position was closed twice: {closes}"
    fills = {d.position_id: d for d in _exits(state)}

    async def settled() -> bool:
        views = await world.trader.positions()
        return len(views) == POSITIONS and all(
            v["state"] == "closed" and not v.get("fill_pending") and v["close_price"] is not None
            for v in views
        )

    await _until(settled, 30, "the engine to hold every position closed with its fill")
    for view in await world.trader.positions():
        deal = fills[view["ticket"]]
        assert view["close_price"] == pytest.approx(deal.price), view
        assert view["pl"] == pytest.approx(deal.profit, abs=0.011), view
        assert view["close_reason"] in ("sl", "tp"), view


async def test_every_sl_tp_closes_once_with_the_bridge_killed_between_order_send_and_ack(
    pg_dsn: str, tmp_path: Path
) -> None:
    world = World(pg_dsn, tmp_path)
    try:
        await world.engine.start()
        await world.bridge.start()
        async with open_feed(world.engine) as feed:
            await _open_book(world, feed)
            world.ctl.script(C.TRADE_RETCODE_REQUOTE, 1, action=C.TRADE_ACTION_DEAL)
            kills = 0
            world.ctl.kill_client_after(1)

            async def supervise() -> None:
                nonlocal kills
                if world.bridge.killed:  # died right after order_send: start it again
                    kills += 1
                    if kills < 2:
                        world.ctl.kill_client_after(1)
                    await world.bridge.start()

            await _replay(world, feed, _flat, supervise)
        assert kills == 2 and world.terminal_state()["kills"] == 2
        await _check_exactly_once(world)
        log = world.log.read_text()
        assert log.count("resolved an unanswered command") == 2, log[-4000:]
    finally:
        await world.close()


async def test_every_sl_tp_closes_once_with_the_engine_killed_and_restarted(
    pg_dsn: str, tmp_path: Path
) -> None:
    world = World(pg_dsn, tmp_path)
    try:
        await world.engine.start()
        await world.bridge.start()
        async with open_feed(world.engine) as feed:
            await _open_book(world, feed)
            await _replay(world, feed, lambda s: len(_exits(s)) >= 2)
        with contextlib.suppress(Exception):
            await feed.aclose()
        await world.engine.kill()  # SIGKILL: no flush, no snapshot
        await world.engine.start()
        async with open_feed(world.engine) as feed:
            await _replay(world, feed, _flat)
        assert world.bridge.process is not None and world.bridge.process.returncode is None
        await _check_exactly_once(world)
    finally:
        await world.close()
