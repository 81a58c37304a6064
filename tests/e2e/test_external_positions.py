"""Positions the engine did not open, over REST with the real engine and a paper terminal:
listed read-only (``adopted: false``) with the broker's SL/TP, refused any command until their
owner adopts them, then watched like any other; followed to their close either way; every step
in the reconciliation log and the audit log."""

from __future__ import annotations

import trio

from protocol.common import Side
from tests.e2e.conftest import ADMIN_PASSWORD
from tests.e2e.helpers import GOLD_ASK, GOLD_BID, paper_device, quote, wait_for


async def test_an_external_position_is_read_only_until_its_owner_adopts_it(
    engine, nursery: trio.Nursery
) -> None:
    alice, token = await engine.user("alice")
    _, bob_token = await engine.user("bob")
    admin_token = await engine.login("admin", ADMIN_PASSWORD)
    _, terminal = await paper_device(engine, nursery, alice)
    quote(engine)
    await wait_for(lambda: engine.node.prices.get("XAUUSD"))
    # Two trades made by hand in the terminal: the engine opened neither.
    kept = terminal.open_by_hand("XAUUSD", Side.BUY, 0.1, sl=GOLD_BID - 5, tp=GOLD_BID + 10)
    left = terminal.open_by_hand("XAUUSD", Side.BUY, 0.2, sl=GOLD_BID - 3)

    async with engine.client(token) as http:

        async def listed() -> dict[int, dict]:
            answer = await http.get("/api/v1/positions", params={"state": "all"})
            assert answer.status_code == 200, answer.text
            return {p["ticket"]: p for p in answer.json()["positions"]}

        both = await wait_for(lambda: _when(listed(), lambda ps: len(ps) == 2))
        mine, theirs = both[kept.ticket], both[left.ticket]
        for p, held in ((mine, kept), (theirs, left)):
            assert p["origin"] == "external" and p["state"] == "open" and p["adopted"] is False
            assert (p["sl"], p["tp"], p["volume"]) == (held.sl, held.tp, held.volume)
        await trio.testing.wait_all_tasks_blocked()
        assert len(engine.node.symbols["XAUUSD"].core) == 0  # nothing armed

        # No command for a position the user has not adopted.
        url = f"/api/v1/positions/{mine['id']}"
        for refused in (
            await http.post(f"{url}/close"),
            await http.patch(url, json={"sl": GOLD_BID - 2}),
        ):
            assert refused.status_code == 409, refused.text
            assert "adopt it first" in refused.json()["message"]
        async with engine.client(bob_token) as bob:  # another's: as if there were none
            assert (await bob.post(f"{url}/adopt")).status_code == 404
        async with engine.client(admin_token) as admin:  # the owner's choice alone
            assert (await admin.post(f"{url}/adopt")).status_code == 403
        assert (await http.post("/api/v1/positions/X-none/adopt")).status_code == 404

        adopted = await http.post(f"{url}/adopt")
        assert adopted.status_code == 200, adopted.text
        assert adopted.json()["adopted"] is True and adopted.json()["sl"] == kept.sl
        again = await http.post(f"{url}/adopt")  # idempotent
        assert again.status_code == 200 and again.json()["adopted"] is True
        await wait_for(lambda: len(engine.node.symbols["XAUUSD"].core) == 1)
        changed = await http.patch(url, json={"sl": GOLD_BID - 2})
        assert changed.status_code == 200, changed.text
        assert changed.json()["sl"] == GOLD_BID - 2

        # The market falls through both stops: the engine closes the adopted one; the other
        # is closed by the broker's own stop, and the engine follows.
        quote(engine, bid=GOLD_BID - 4, ask=GOLD_ASK - 4)
        closed = await wait_for(
            lambda: _when(listed(), lambda ps: all(p["state"] == "closed" for p in ps.values()))
        )
        assert closed[left.ticket]["close_reason"] == "broker_sl"
        assert closed[left.ticket]["pl"] is not None
        sent = list(terminal.executed)
        assert any(cid.startswith(f"{mine['id']}.close.") for cid in sent), sent
        assert not any(cid.startswith(theirs["id"]) for cid in sent), sent

        late = await http.post(f"/api/v1/positions/{theirs['id']}/adopt")
        assert late.status_code == 409 and "closed" in late.json()["message"]

        async def entries() -> list[tuple[str, str | None]] | None:
            answer = (await http.get("/api/v1/reconciliation")).json()
            found = [(e["kind"], e["position_id"]) for e in answer["entries"]]
            return found if ("adopt", mine["id"]) in found else None

        logged = await wait_for(entries)
        assert ("external_found", mine["id"]) in logged
        assert ("external_found", theirs["id"]) in logged
        assert [k for k, _ in logged].count("adopt") == 1

    rows = await engine.ctx.db.fetch(
        "SELECT target_id, outcome FROM audit_log WHERE action = 'position.adopt' ORDER BY id"
    )
    assert [(r["target_id"], r["outcome"]) for r in rows] == [
        (mine["id"], "404:not_found"),
        (mine["id"], "403:forbidden"),
        ("X-none", "404:not_found"),
        (mine["id"], "200"),
        (mine["id"], "200"),
        (theirs["id"], "409:conflict"),
    ]


async def _when(items, predicate):
    value = await items
    return value if predicate(value) else None
