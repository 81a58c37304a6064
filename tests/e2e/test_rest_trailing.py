"""Trailing stops, break-even and SL/TP changes, the whole way over real sockets.

A signed signal carrying a trailing rule, an approval over REST, the open on a simulated EA on
``/ws/device``, prices pushed on ``/ws/feed``: the EA receives ``modify`` commands as the price
rises, and the fall that follows closes the position at the trailed stop, once. Then the
per-position route (``PATCH /api/v1/positions/{id}``) and the user defaults of
``PUT /api/v1/me/settings``, with their refusals.
"""

from __future__ import annotations

from typing import Any

import trio
from trio_websocket import open_websocket_url

from gateway.runtime import run
from protocol.codec import feed_codec
from protocol.device import CloseCommand, ModifyCommand, OpenCommand
from protocol.feed import Quote, QuoteBatch
from protocol.signals import BreakEvenSpec, TrailingSpec
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.conftest import FEED_TOKEN, engine_settings
from tests.e2e.helpers import (
    GOLD_ASK,
    GOLD_BID,
    decision_url,
    make_signal,
    post_signal,
    wait_for,
)

MSGPACK = feed_codec("msgpack")
SPREAD = GOLD_ASK - GOLD_BID


async def _ea(engine, nursery: trio.Nursery, user_id: str) -> tuple[SimulatedEA, PaperTerminal]:
    """A registered device of ``user_id``: a simulated EA over a real socket. Its terminal
    holds no broker-side stops of its own (the engine's stops are what is under test)."""
    record, secret = await engine.ctx.registry.register_device(user_id, "MT5 demo")

    def price(symbol: str) -> tuple[float, float] | None:
        q = engine.node.prices.get(symbol)
        return None if q is None else (q[0], q[1])

    config = PaperConfig(latency_ms=1, broker_stops=False)
    terminal = PaperTerminal(engine.node.instruments, price, config)
    ea = SimulatedEA(engine.ws_url + "/ws/device", record.id, secret, terminal, encoding="json")
    await nursery.start(ea.run)
    assert ea.welcome is not None, ea.errors
    await wait_for(lambda: engine.node.users[user_id].core.devices.get(record.id))
    return ea, terminal


class Feed:
    """A publisher on ``/ws/feed``: every price reaches the engine over the socket."""

    def __init__(self, engine, ws: Any) -> None:
        self.engine, self.ws = engine, ws

    async def push(self, bid: float) -> None:
        now = self.engine.ctx.clock.now_ms()
        q = Quote(symbol="XAUUSD", bid=bid, ask=round(bid + SPREAD, 3), time_ms=now)
        await self.ws.send_message(MSGPACK.encode(QuoteBatch(quotes=[q])))
        await wait_for(lambda: (self.engine.node.prices.get("XAUUSD") or (0,))[0] == bid)


async def _open(engine, http, user_id: str, signal_id: str, **signal: Any) -> str:
    sig = make_signal([user_id], signal_id=signal_id, **signal)
    async with engine.client() as strategy:
        created = await post_signal(strategy, sig)
        assert created.status_code == 201, created.text
    decided = await http.post(decision_url(sig), json={"decision": "approve"})
    assert decided.status_code == 201, decided.text
    position_id = str(decided.json()["approval"]["position_id"])

    async def is_open() -> bool:
        return (await http.get(f"/api/v1/positions/{position_id}")).json()["state"] == "open"

    await wait_for(is_open)
    return position_id


def _of(ea: SimulatedEA, kind: type) -> list[Any]:
    return [c for c in ea.commands if isinstance(c, kind)]


async def test_a_signals_trailing_stop_follows_the_price_and_closes_once(
    engine, nursery: trio.Nursery
) -> None:
    alice, token = await engine.user("alice")
    ea, terminal = await _ea(engine, nursery, alice)
    url = f"{engine.ws_url}/ws/feed?token={FEED_TOKEN}"
    async with (
        open_websocket_url(url, subprotocols=["tripwire.v1.msgpack"]) as ws,
        engine.client(token) as http,
    ):
        feed = Feed(engine, ws)
        await feed.push(GOLD_BID)
        trailing = TrailingSpec(distance=2.0, step=0.5)
        position_id = await _open(engine, http, alice, "trail-1", trailing=trailing)
        view = (await http.get(f"/api/v1/positions/{position_id}")).json()
        assert view["trailing"] == {"distance": 2.0, "step": 0.5, "activation": 0.0}
        original_sl = view["sl"]
        assert original_sl == GOLD_ASK - 5  # make_signal's SL, untouched so far

        # The buy goes 5 dollars up: the SL follows 2 behind the bid, and the EA is told.
        for bid in (GOLD_BID + 1, GOLD_BID + 3, GOLD_BID + 5):
            await feed.push(bid)
        trailed = GOLD_BID + 5 - 2.0

        async def sl_now() -> float:
            return (await http.get(f"/api/v1/positions/{position_id}")).json()["sl"]

        assert await wait_for(lambda: _equal(sl_now(), trailed))
        # Modifies are rate-limited per position and carry the latest levels: the EA ends
        # up with the trailed SL, whatever came in between.
        await wait_for(lambda: any(m.sl == trailed for m in _of(ea, ModifyCommand)), 15)
        modifies = _of(ea, ModifyCommand)
        assert all(original_sl < m.sl <= trailed for m in modifies)
        assert all(m.tp == view["tp"] for m in modifies)
        assert [m.command_id for m in modifies] == [
            f"{position_id}.modify.{n}" for n in range(1, len(modifies) + 1)
        ]
        (held,) = terminal.positions.values()
        assert held.sl == trailed  # the broker holds the trailed stop too

        # The price falls back through the trailed stop (far above the original one).
        await feed.push(trailed - 0.5)

        async def closed() -> dict | None:
            found = (await http.get(f"/api/v1/positions/{position_id}")).json()
            return found if found["state"] == "closed" else None

        final = await wait_for(closed)
        assert final["close_reason"] == "sl"
        assert final["pl"] is not None and final["pl"] > 0  # the original SL was a loss
        # More quotes below the stop do not close it again.
        await feed.push(trailed - 1.0)
        await feed.push(original_sl - 1.0)
        await trio.sleep(0.2)  # a window for a second close to show up in, were there one
    assert len(_of(ea, CloseCommand)) == 1
    assert len(_of(ea, OpenCommand)) == 1
    assert terminal.positions == {}


async def test_patch_moves_levels_and_rules_of_an_open_position(
    engine, nursery: trio.Nursery
) -> None:
    alice, token = await engine.user("alice")
    bob, bob_token = await engine.user("bob")
    ea, terminal = await _ea(engine, nursery, alice)
    url = f"{engine.ws_url}/ws/feed?token={FEED_TOKEN}"
    async with (
        open_websocket_url(url, subprotocols=["tripwire.v1.msgpack"]) as ws,
        engine.client(token) as http,
    ):
        feed = Feed(engine, ws)
        await feed.push(GOLD_BID)
        position_id = await _open(engine, http, alice, "patch-1")
        route = f"/api/v1/positions/{position_id}"

        # Refusals change nothing and send nothing.
        for body, status, code in (
            ({"sl": GOLD_BID + 1}, 422, "sizing_refused"),  # a buy's SL above the price
            ({"tp": GOLD_BID - 1}, 422, "sizing_refused"),
            ({"trailing": {"distance": 0}}, 400, None),
            ({"trailing": {"distance": 1, "speed": 2}}, 400, None),  # unknown field
            ({"stop": 1990}, 400, None),
            ({"break_even": {"trigger": 1, "offset": 1}}, 422, "sizing_refused"),
            ({"sl": "low"}, 400, None),
        ):
            refused = await http.patch(route, json=body)
            assert refused.status_code == status, (body, refused.text)
            if code is not None:
                assert refused.json()["code"] == code
        async with engine.client(bob_token) as other:
            assert (await other.patch(route, json={"sl": 1990.0})).status_code == 404
        assert (await http.patch("/api/v1/positions/P-none", json={})).status_code == 404
        assert _of(ea, ModifyCommand) == []

        # A new SL and TP: answered with the position, sent to the EA as one modify.
        changed = await http.patch(route, json={"sl": 1997.0, "tp": 2020.0})
        assert changed.status_code == 200, changed.text
        assert (changed.json()["sl"], changed.json()["tp"]) == (1997.0, 2020.0)
        await wait_for(lambda: _of(ea, ModifyCommand))
        (modify,) = _of(ea, ModifyCommand)
        assert (modify.sl, modify.tp) == (1997.0, 2020.0)

        # A break-even rule, then the price reaches its trigger: the SL goes to entry + 0.5.
        rule = {"trigger": 3.0, "offset": 0.5}
        answered = (await http.patch(route, json={"break_even": rule})).json()
        assert answered["break_even"] == rule and answered["sl"] == 1997.0
        await feed.push(GOLD_ASK + 3.0)
        entry = answered["open_price"]

        async def sl_is(expected: float) -> bool:
            return (await http.get(route)).json()["sl"] == expected

        await wait_for(lambda: sl_is(entry + 0.5))
        await wait_for(lambda: any(m.sl == entry + 0.5 for m in _of(ea, ModifyCommand)), 15)

        # Removing the TP and the rule: null removes, a field left out stays.
        cleared = (await http.patch(route, json={"tp": None, "break_even": None})).json()
        assert cleared["tp"] is None and cleared["break_even"] is None
        assert cleared["sl"] == entry + 0.5

        # Every change is journaled (the state fold holds the position as the actor does).
        core = engine.node.users[alice].core
        assert engine.node.state.positions[position_id] == core.positions[position_id]

        closing = await http.post(f"{route}/close")
        assert closing.status_code == 202
        late = await http.patch(route, json={"sl": 1990.0})
        assert late.status_code == 409, late.text
    rows = await engine.ctx.db.fetch(
        "SELECT outcome FROM audit_log WHERE action = 'position.modify' ORDER BY id"
    )
    assert [r["outcome"] for r in rows].count("200") == 3
    assert "409:conflict" in [r["outcome"] for r in rows]


async def test_user_defaults_apply_to_signals_without_rules(engine, nursery: trio.Nursery) -> None:
    alice, token = await engine.user("alice")
    await _ea(engine, nursery, alice)
    url = f"{engine.ws_url}/ws/feed?token={FEED_TOKEN}"
    async with (
        open_websocket_url(url, subprotocols=["tripwire.v1.msgpack"]) as ws,
        engine.client(token) as http,
    ):
        await Feed(engine, ws).push(GOLD_BID)
        settings = (await http.get("/api/v1/me/settings")).json()
        assert settings["trailing"] is None and settings["break_even"] is None
        # An unknown field is refused, not answered 200 and dropped.
        unknown = await http.put("/api/v1/me/settings", json={**settings, "trailling": {}})
        assert unknown.status_code == 400, unknown.text
        wrong = await http.put("/api/v1/me/settings", json={**settings, "trailing": {"x": 1}})
        assert wrong.status_code == 400, wrong.text
        negative = {**settings, "trailing": {"distance_pips": -3}}
        assert (await http.put("/api/v1/me/settings", json=negative)).status_code == 400

        defaults = {
            **settings,
            "trailing": {"distance_pips": 30, "step_pips": 5, "activation_pips": 0},
            "break_even": {"trigger_pips": 20, "offset_pips": 2},
        }
        stored = await http.put("/api/v1/me/settings", json=defaults)
        assert stored.status_code == 200, stored.text
        assert (await http.get("/api/v1/me/settings")).json() == stored.json() == defaults

        # Gold's pip is 0.1: 30 pips trail 3.0 behind. A signal's own rule wins over it.
        plain = await _open(engine, http, alice, "defaults-1")
        view = (await http.get(f"/api/v1/positions/{plain}")).json()
        assert view["trailing"] == {"distance": 3.0, "step": 0.5, "activation": 0.0}
        assert view["break_even"] == {"trigger": 2.0, "offset": 0.2}
        own = TrailingSpec(distance=1.5)
        ruled = await _open(engine, http, alice, "defaults-2", trailing=own)
        view = (await http.get(f"/api/v1/positions/{ruled}")).json()
        assert view["trailing"] == {"distance": 1.5, "step": 0.0, "activation": 0.0}
        assert view["break_even"] == {"trigger": 2.0, "offset": 0.2}

        # A rule the instrument cannot take refuses the approval, with the reason.
        too_close = make_signal(
            [alice], signal_id="defaults-3", break_even=BreakEvenSpec(trigger=0.5, offset=0.5)
        )
        async with engine.client() as strategy:
            assert (await post_signal(strategy, too_close)).status_code == 201
        refused = await http.post(decision_url(too_close), json={"decision": "approve"})
        assert refused.status_code == 422, refused.text
        assert refused.json()["details"]["reason"] == "break_even"


async def _equal(value: Any, expected: float) -> bool:
    return (await value) == expected


async def test_the_retry_settings_reach_the_user_cores(
    nursery: trio.Nursery, pg_dsn: str, tmp_path
) -> None:
    settings = engine_settings(
        tmp_path, pg_dsn, close_max_attempts=2, retry_backoff_ms=300, retry_backoff_max_ms=900
    )
    ctx = (await nursery.start(run, settings)).gateway
    user = await ctx.registry.create_user("carol", "password-0123")
    timing = ctx.node.user(user.id).core.timing
    assert (timing.max_close_attempts, timing.retry_base, timing.retry_cap) == (2, 300, 900)
