"""Positions live and historical, the manual close, and the operations views (reconciliation,
guards, alerts, prices) over REST."""

from __future__ import annotations

import trio

from engine.records import ReconciliationEntry, ReconciliationRecorded
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperTerminal
from tests.e2e.helpers import (
    GOLD_ASK,
    GOLD_BID,
    decision_url,
    make_signal,
    paper_device,
    post_signal,
    quote,
    report_equity,
    wait_for,
)


async def test_open_close_and_history(engine, nursery: trio.Nursery) -> None:
    alice, token = await engine.user("alice")
    await paper_device(engine, nursery, alice)
    quote(engine)
    signal = make_signal([alice])
    async with engine.client() as strategy:
        assert (await post_signal(strategy, signal)).status_code == 201
    async with engine.client(token) as http:
        approved = await http.post(decision_url(signal), json={"decision": "approve"})
        position_id = approved.json()["approval"]["position_id"]

        async def listed(params: dict | None = None) -> list[dict]:
            answer = await http.get("/api/v1/positions", params=params or {})
            assert answer.status_code == 200, answer.text
            return answer.json()["positions"]

        async def open_one() -> dict | None:
            found = [p for p in await listed() if p["state"] == "open"]
            return found[0] if found else None

        live = await wait_for(open_one)
        assert live["id"] == position_id and live["current_price"] == GOLD_BID
        quote(engine, bid=GOLD_BID + 2, ask=GOLD_ASK + 2)
        moved = await wait_for(
            lambda: _first_if(listed(), lambda p: p["current_price"] == GOLD_BID + 2)
        )
        assert moved["pl"] > live["pl"]
        assert await listed({"symbol": "EURUSD"}) == []

        closing = await http.post(f"/api/v1/positions/{position_id}/close")
        assert closing.status_code == 202, closing.text
        assert closing.json() == {
            "position_id": position_id,
            "command_id": f"{position_id}.close.1",
        }
        twice = await http.post(f"/api/v1/positions/{position_id}/close")
        assert twice.status_code == 409 and twice.json()["code"] == "conflict"
        for odd in ("P-none", "P%00nul", "%ED%A0%80", "x" * 300):
            unknown = await http.post(f"/api/v1/positions/{odd}/close")
            assert unknown.status_code == 404, odd
            assert (await http.get(f"/api/v1/positions/{odd}")).status_code == 404

        history = await wait_for(lambda: listed({"state": "closed"}))
        (closed,) = history
        assert closed["id"] == position_id and closed["close_reason"] == "manual"
        assert closed["pl"] is not None and closed["close_time_ms"]
        assert await listed() == []
        assert [p["id"] for p in await listed({"state": "all"})] == [position_id]
        older = {"state": "closed", "before_ms": closed["close_time_ms"]}
        assert await wait_for(lambda: _empty_list(listed(older)))
        for bad in ({"state": "sideways"}, {"limit": 0}, {"limit": 5000}, {"before_ms": -1}):
            assert (await http.get("/api/v1/positions", params=bad)).status_code == 400
        one = await http.get(f"/api/v1/positions/{position_id}")
        assert one.status_code == 200 and one.json()["state"] == "closed"
    # Every refused close was audited, the odd ids made storable.
    rows = await engine.ctx.db.fetch(
        "SELECT target_id, outcome FROM audit_log WHERE action = 'position.close' ORDER BY id"
    )
    assert [r["outcome"] for r in rows] == ["202", "409:conflict"] + ["404:not_found"] * 4
    assert rows[3]["target_id"] == "P\ufffdnul"


async def test_reconciliation_guards_alerts_and_prices(engine, nursery: trio.Nursery) -> None:
    alice, alice_token = await engine.user("alice")
    _, bob_token = await engine.user("bob")
    record, secret = await engine.ctx.registry.register_device(alice, "EA")
    device_id = record.id
    # A simulated EA reports its account once, at connect (a paper device would report
    # 10,000 every heartbeat and undo the drawdown below).
    terminal = PaperTerminal(engine.node.instruments, lambda symbol: None)
    ea = SimulatedEA(engine.ws_url + "/ws/device", device_id, secret, terminal, encoding="json")
    await nursery.start(ea.run)
    await wait_for(lambda: engine.node.users.get(alice) and engine.node.users[alice].core.balance)
    quote(engine)
    quote(engine, bid=GOLD_BID * 1.006, ask=GOLD_ASK * 1.006)  # a 0.6 % jump: a market alert

    report_equity(engine, alice, 10_000.0, 8_800.0)  # 12 %: a warning
    await wait_for(lambda: engine.node.users[alice].drawdown().drawdown > 0.1)
    await engine.ctx.record_durably(
        ReconciliationRecorded(
            entry=ReconciliationEntry(
                time_ms=engine.ctx.clock.now_ms(),
                device_id=device_id,
                kind="closed_while_away",
                ticket=4242,
                detail="closed on the terminal while the engine was away",
            )
        )
    )

    async with engine.client(alice_token) as http:

        async def reconciliation() -> dict | None:
            answer = (await http.get("/api/v1/reconciliation")).json()
            return answer if answer["entries"] else None

        recon = await wait_for(reconciliation)
        (device,) = recon["devices"]
        assert device["device_id"] == device_id and device["connected"] is True
        assert device["outstanding_commands"] == 0
        (entry,) = recon["entries"]
        assert entry["kind"] == "closed_while_away" and entry["ticket"] == 4242

        guards = (await http.get("/api/v1/guards")).json()
        assert guards["drawdown"]["level"] == "warning"
        assert round(guards["drawdown"]["drawdown"], 4) == 0.12
        assert guards["drawdown"]["opens_blocked"] is False
        gold = next(m for m in guards["market"] if m["symbol"] == "XAUUSD")
        assert gold["median_spread"] is not None and gold["last_quote_ms"] is not None

        async def alert_kinds(client) -> set[str]:
            answer = await client.get("/api/v1/alerts", params={"limit": 20})
            return {a["kind"] for a in answer.json()["alerts"]}

        assert await wait_for(lambda: _has(alert_kinds(http), {"drawdown", "price_jump"}))

        prices = (await http.get("/api/v1/market/prices")).json()["prices"]
        assert [p["symbol"] for p in prices] == ["XAUUSD"]
        assert prices[0]["bid"] == round(GOLD_BID * 1.006, 3)

    async with engine.client(bob_token) as http:
        assert await wait_for(lambda: _has(alert_kinds(http), {"price_jump"}))
        assert "drawdown" not in await alert_kinds(http)
        assert (await http.get("/api/v1/reconciliation")).json() == {
            "devices": [],
            "entries": [],
        }
        assert (await http.get("/api/v1/guards")).json()["drawdown"]["level"] == "normal"


async def _first_if(items, predicate):
    for item in await items:
        if predicate(item):
            return item
    return None


async def _empty_list(items) -> bool:
    return await items == []


async def _has(kinds, wanted: set[str]) -> bool:
    return wanted <= await kinds
