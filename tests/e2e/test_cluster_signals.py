"""Signals across nodes, through the real REST API: the engine here runs with the cluster's
signal source (Postgres first), and a second node (its own pool and state on the same
database) records signals too. A signal posted to the other node is listed, shown and decided
on here (the approval and the position it opens are projected: the signal's row is there); a
repeat posted here answers the other node's record; one posted here is found there."""

from __future__ import annotations

import trio

from actors.node import Node
from engine.records import SignalSaved, signal_key
from gateway.signal_source import SharedSignals
from persistence import open_database
from persistence.signal_store import SignalStore
from tests.e2e.helpers import decision_url, make_signal, now_ms, paper_device, post_signal, quote


async def test_a_signal_recorded_on_another_node_is_served_and_decided_here(
    engine, nursery: trio.Nursery, pg_dsn: str
) -> None:
    db = engine.ctx.database
    engine.ctx.signal_source = SharedSignals(engine.node, SignalStore(db))
    alice, token = await engine.user("alice")
    async with open_database(db.bridge, pg_dsn, retry_for_s=5) as other_db:
        other = SharedSignals(Node(), SignalStore(other_db))
        signal = make_signal([alice], signal_id="elsewhere")
        received = now_ms() - 1000
        first, new = await other.accept(SignalSaved(signal=signal, received_ms=received))
        assert new
        key = signal_key(signal.strategy_id, signal.signal_id, signal.version)
        assert key not in engine.node.state.signals

        async with engine.client(token) as http:
            listed = (await http.get("/api/v1/signals")).json()["signals"]
            assert [s["key"] for s in listed] == [key]
            shown = await http.get(f"/api/v1/signals/{key}")
            assert shown.status_code == 200 and shown.json()["received_ms"] == received

            await paper_device(engine, nursery, alice)
            quote(engine)
            decided = await http.post(decision_url(signal), json={"decision": "approve"})
            assert decided.status_code == 201, decided.text
            position_id = decided.json()["approval"]["position_id"]
            assert position_id

        async with engine.client() as strategy:
            repeat = await post_signal(strategy, signal)
            assert repeat.status_code == 200 and repeat.json()["received_ms"] == received
            here = make_signal([alice], signal_id="here")
            assert (await post_signal(strategy, here)).status_code == 201
        found = await other.get(signal_key(here.strategy_id, here.signal_id, here.version))
        assert found is not None and found.signal == here

        assert await db.fetchval("SELECT count(*) FROM signals") == 2
        assert (
            await db.fetchval(
                "SELECT count(*) FROM approvals WHERE user_id = $1 AND signal_id = 'elsewhere'",
                alice,
            )
            == 1
        )
        with trio.fail_after(10):  # the position is projected once the journal writes it
            while not await db.fetchval(
                "SELECT count(*) FROM positions WHERE id = $1", position_id
            ):
                await trio.sleep(0.02)
        audited = await db.fetch(
            "SELECT outcome FROM audit_log WHERE action = 'signal.create' ORDER BY id"
        )
        assert [row["outcome"] for row in audited] == ["200", "201"]
