"""Decisions on signals: 201, 409, 404 (none, or not for the caller) and every 422 a trading
rule can answer, each audited with the caller's address and user agent."""

from __future__ import annotations

import trio

from protocol.common import Side
from tests.e2e.helpers import (
    GOLD_ASK,
    decision_url,
    make_signal,
    now_ms,
    paper_device,
    post_signal,
    quote,
    report_equity,
    wait_for,
)

AGENT = {"User-Agent": "approvals-test/2.0"}


async def test_decisions_and_their_refusals(engine, nursery: trio.Nursery) -> None:
    alice, token = await engine.user("alice")
    bob, bob_token = await engine.user("bob")
    quote(engine)
    signals = {
        "main": make_signal([alice], signal_id="main"),
        "bobs": make_signal([bob], signal_id="bobs"),
        "expired": make_signal([alice], signal_id="expired", expires_at_ms=now_ms() - 1),
        "late": make_signal([alice], signal_id="late", created_at_ms=now_ms() - 600_000),
        "moved": make_signal([alice], signal_id="moved", entry=1900.0, sl=1890.0, tp=1950.0),
        "stops": make_signal([alice], signal_id="stops", sl=GOLD_ASK + 1),
        "unsized": make_signal([alice], signal_id="unsized", volume=None),
        "guarded": make_signal([alice], signal_id="guarded", side=Side.BUY),
        "rejected": make_signal([alice], signal_id="rejected"),
    }
    async with engine.client() as strategy:
        for signal in signals.values():
            assert (await post_signal(strategy, signal)).status_code == 201

    async with engine.client(token) as http:

        async def decide(name: str, decision: str = "approve", version: int = 1):
            signal = signals[name]
            url = decision_url(signal).replace("/1/decision", f"/{version}/decision")
            return await http.post(url, json={"decision": decision}, headers=AGENT)

        # No device connected yet: refused, and nothing recorded (the user may try again).
        no_device = await decide("main")
        assert no_device.status_code == 422 and no_device.json()["code"] == "refused"

        await paper_device(engine, nursery, alice)
        quote(engine)

        approved = await decide("main")
        assert approved.status_code == 201, approved.text
        approval = approved.json()["approval"]
        assert approval["decision"] == "approve" and approval["position_id"]
        assert approval["signal"] == "strat-1/main/1"

        again = await decide("main", "reject")
        assert again.status_code == 409 and again.json()["code"] == "conflict"
        async with engine.client() as strategy:
            v2 = make_signal([alice], signal_id="main", version=2)
            assert (await post_signal(strategy, v2)).status_code == 201
        other_version = await decide("main", version=2)
        assert other_version.status_code == 409

        rejected = await decide("rejected", "reject")
        assert rejected.status_code == 201 and rejected.json()["approval"]["position_id"] is None

        bobs = await decide("bobs")  # not in its audience: as if it did not exist
        assert bobs.status_code == 404 and bobs.json()["code"] == "not_found"
        missing = await http.post(
            "/api/v1/signals/strat-1/nope/1/decision", json={"decision": "approve"}
        )
        assert missing.status_code == 404

        expected = {
            "expired": "late_signal",
            "late": "late_signal",
            "moved": "price_deviation",
            "stops": "sizing_refused",
        }
        for name, code in expected.items():
            response = await decide(name)
            assert response.status_code == 422, (name, response.text)
            assert response.json()["code"] == code, (name, response.json())
        expired_reject = await decide("expired", "reject")
        assert expired_reject.status_code == 422
        assert expired_reject.json()["code"] == "late_signal"

        settings = (await http.get("/api/v1/me/settings")).json()
        multiple = await http.put("/api/v1/me/settings", json={**settings, "sizing": "multiple"})
        assert multiple.status_code == 200
        unsized = await decide("unsized")
        assert unsized.status_code == 422 and unsized.json()["code"] == "sizing_refused"
        await http.put("/api/v1/me/settings", json=settings)

        # An account report 20 % under its peak: opens are blocked (the decision below
        # queues behind the reports in the user's mailbox).
        report_equity(engine, alice, 10_000.0, 8_000.0)
        guarded = await decide("guarded")
        assert guarded.status_code == 422 and guarded.json()["code"] == "guard_blocked"

        for bad in ({"decision": "maybe"}, {}, []):
            response = await http.post(decision_url(signals["main"]), json=bad)
            assert response.status_code == 400 and response.json()["code"] == "malformed"

        history = (await http.get("/api/v1/approvals")).json()["approvals"]
        assert {a["signal"]: a["decision"] for a in history} == {
            "strat-1/main/1": "approve",
            "strat-1/rejected/1": "reject",
        }
        main = next(a for a in history if a["signal"] == "strat-1/main/1")
        assert main["position_id"] == approval["position_id"]
        assert main["ip"] == "127.0.0.1" and main["user_agent"] == AGENT["User-Agent"]

    async with engine.client(bob_token) as http:
        assert (await http.get("/api/v1/approvals")).json()["approvals"] == []
        others = await http.get("/api/v1/approvals", params={"user_id": alice})
        assert others.status_code == 403

    rows = await wait_for(
        lambda: engine.ctx.db.fetch(
            "SELECT target_id, outcome, host(ip) AS ip, user_agent FROM audit_log "
            "WHERE actor_id = $1 AND action LIKE 'approval.%' ORDER BY id",
            alice,
        )
    )
    outcomes = [(r["target_id"].split("/")[1], r["outcome"]) for r in rows]
    assert outcomes[:4] == [
        ("main", "422:refused"),
        ("main", "201"),
        ("main", "409:conflict"),
        ("main", "409:conflict"),
    ]
    assert ("bobs", "404:not_found") in outcomes and ("nope", "404:not_found") in outcomes
    assert ("guarded", "422:guard_blocked") in outcomes
    with_agent = [r for r in rows if r["user_agent"] == AGENT["User-Agent"]]
    assert len(with_agent) == len(rows) - 1  # all but the 404 sent without the header
    assert {r["ip"] for r in rows} == {"127.0.0.1"}
