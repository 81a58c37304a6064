"""The demo of ``make run``: a newcomer sees a position open and its SL or TP fire at once,
demo signals never pile up, and a market alert reaches only the users it concerns.

The engine runs with the demo on and the bundled replay (from its default start, just before
the payrolls release) at ten times real speed: the same feed and strategy as ``make run``,
compressed so the test stays short. Everything is watched the way the user sees it, on the
demo user's ``/ws/client`` stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

from gateway.demo import Demo, run_demo_strategy
from gateway.runtime import run
from protocol.client import AlertMessage, PositionDelta, Snapshot, Subscribe
from protocol.codec import client_client_codec
from protocol.common import Alert, AlertLevel
from tests.e2e.conftest import Engine, engine_settings
from tests.e2e.helpers import quote, wait_for

CODEC = client_client_codec("json")
SUBPROTOCOLS = ["tripwire.v1.json"]
FIRED = {"sl", "tp", "broker_sl", "broker_tp"}


async def _engine(nursery: trio.Nursery, pg_dsn: str, tmp_path: Path, **overrides: Any) -> Engine:
    settings = engine_settings(tmp_path, pg_dsn, **overrides)
    ctx = (await nursery.start(run, settings)).gateway
    return Engine(ctx, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}")


async def test_the_demo_opens_a_position_and_fires_its_stop_at_once(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    engine = await _engine(
        nursery,
        pg_dsn,
        tmp_path,
        feed="replay",
        replay_speed=10.0,
        paper_device=True,
        demo_strategy=True,
    )
    token = await engine.login("demo", "demo-password")
    states: dict[str, list[str]] = {}
    reasons: dict[str, str | None] = {}
    async with open_websocket_url(
        f"{engine.ws_url}/ws/client?token={token}", subprotocols=SUBPROTOCOLS
    ) as ws:
        await ws.send_message(CODEC.encode(Subscribe(channels=["positions"])))
        first = CODEC.decode(await ws.get_message())
        assert isinstance(first, Snapshot)
        for view in first.positions:  # the demo may have opened it before we subscribed
            states[view.id] = [view.state]
            reasons[view.id] = view.close_reason
        # Ten times real speed: the minute a newcomer is promised is six seconds of market.
        with trio.fail_after(60):
            while not any(r in FIRED and states[pid][-1] == "closed" for pid, r in reasons.items()):
                message = CODEC.decode(await ws.get_message())
                if isinstance(message, PositionDelta):
                    view = message.position
                    seen = states.setdefault(view.id, [])
                    if not seen or seen[-1] != view.state:
                        seen.append(view.state)
                    reasons[view.id] = view.close_reason
    (fired,) = [pid for pid, r in reasons.items() if r in FIRED and states[pid][-1] == "closed"]
    assert "open" in states[fired] and states[fired][-1] == "closed", states


async def test_demo_signals_do_not_pile_up(engine: Engine) -> None:
    """Each demo signal expires when the next is posted: one pending at a time, however many."""
    user_id, token = await engine.user("newcomer")
    quote(engine)
    demo = Demo(user_id, "no-such-device")  # no device: nothing is approved, all stay pending
    async with trio.open_nursery() as strategy:
        strategy.start_soon(run_demo_strategy, engine.ctx, demo, 0.3, "XAUUSD", 1.0, 0)
        await wait_for(
            lambda: (
                sum(s.signal.strategy_id == "demo" for s in engine.node.state.signals.values()) >= 5
            )
        )
        strategy.cancel_scope.cancel()
    async with engine.client(token) as http:
        pending = (await http.get("/api/v1/signals", params={"status": "pending"})).json()
    assert len(pending["signals"]) <= 1, pending


async def test_a_market_alert_reaches_only_the_users_it_concerns(engine: Engine) -> None:
    _, bystander = await engine.user("bystander")
    _, watcher = await engine.user("watcher")
    url = f"{engine.ws_url}/ws/client?token="
    async with (
        open_websocket_url(url + bystander, subprotocols=SUBPROTOCOLS) as calm,
        open_websocket_url(url + watcher, subprotocols=SUBPROTOCOLS) as eager,
    ):
        await calm.send_message(
            CODEC.encode(Subscribe(channels=["alerts", "prices"], symbols=["XAUUSD"]))
        )
        await eager.send_message(
            CODEC.encode(Subscribe(channels=["alerts", "prices"], symbols=["EURUSD"]))
        )
        for ws in (calm, eager):
            assert isinstance(CODEC.decode(await ws.get_message()), Snapshot)
        now = engine.ctx.clock.now_ms()
        silent = Alert(
            kind="feed_silent",
            level=AlertLevel.WARNING,
            message="no EURUSD quote for 61 s",
            time_ms=now,
            symbol="EURUSD",
        )
        storage = Alert(kind="journal_degraded", level=AlertLevel.WARNING, message="x", time_ms=now)
        engine.node.raise_alerts([silent, storage])

        async def alerts(ws: Any) -> list[str]:
            kinds: list[str] = []
            with trio.move_on_after(2):
                while len(kinds) < 2:
                    message = CODEC.decode(await ws.get_message())
                    if isinstance(message, AlertMessage):
                        kinds.append(message.alert.kind)
            return kinds

        # The engine-wide alert reaches both; the EURUSD one only the EURUSD subscriber.
        assert await alerts(eager) == ["feed_silent", "journal_degraded"]
        assert await alerts(calm) == ["journal_degraded"]
