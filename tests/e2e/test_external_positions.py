"""Positions the engine did not open, over REST with the real engine and a paper terminal:
listed read-only (``adopted: false``) with the broker's SL/TP, refused any command until their
owner adopts them, then watched like any other; followed to their close either way; every step
in the reconciliation log and the audit log."""

from __future__ import annotations

import httpx
import msgspec
import pytest
import trio
from trio_websocket import open_websocket_url

from persistence.bridge import open_bridge
from persistence.db import open_database
from protocol.client import PositionDelta, Snapshot, Subscribe
from protocol.codec import client_client_codec
from protocol.common import Side
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.conftest import ADMIN_PASSWORD, FEED_TOKEN
from tests.e2e.helpers import (
    GOLD_ASK,
    GOLD_BID,
    decision_url,
    make_signal,
    paper_device,
    post_signal,
    quote,
    wait_for,
)
from tests.e2e.test_crash_recovery import Engine, _connect_ea, _new_world, _quote

CLIENT = client_client_codec("json")


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

        # The client stream lists them as REST does, and tells the adoption as a delta.
        stream = open_websocket_url(f"{engine.ws_url}/ws/client?token={token}")
        async with stream as ws:
            await ws.send_message(CLIENT.encode(Subscribe()))
            snapshot = CLIENT.decode(await ws.get_message())
            assert isinstance(snapshot, Snapshot)
            assert {(p.origin.value, p.adopted) for p in snapshot.positions} == {
                ("external", False)
            }
            adopted = await http.post(f"{url}/adopt")
            with trio.fail_after(10):
                while True:
                    delta = CLIENT.decode(await ws.get_message())
                    if isinstance(delta, PositionDelta) and delta.position.id == mine["id"]:
                        break
            assert delta.position.adopted is True
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
            lambda: _when(
                listed(), lambda ps: [_state(ps, t.ticket) for t in (kept, left)] == ["closed"] * 2
            )
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


@pytest.mark.slow
async def test_adoption_survives_a_kill_9_and_the_unadopted_stays_unwatched(
    pg_dsn, tmp_path
) -> None:
    """Two positions found on the terminal, one adopted; the engine is killed (-9) and started
    again: the adopted one is still adopted and armed (its SL fires a close), the other still
    listed unadopted and sent nothing."""
    async with open_bridge() as bridge, open_database(bridge, pg_dsn) as db:
        world = await _new_world(db, "adopt")
    held = world.terminal.open_by_hand("XAUUSD", Side.BUY, 0.1, sl=1945.0, now_ms=1)
    left = world.terminal.open_by_hand("XAUUSD", Side.BUY, 0.1, sl=1946.0, now_ms=1)
    engine = Engine(pg_dsn, tmp_path / "state")
    headers = {"Authorization": f"Bearer {world.token}"}

    async def by_ticket(http: httpx.AsyncClient) -> dict[int, dict]:
        answer = await http.get("/api/v1/positions", params={"state": "all"})
        assert answer.status_code == 200, answer.text
        return {p["ticket"]: p for p in answer.json()["positions"]}

    try:
        await engine.start()
        async with (
            trio.open_nursery() as nursery,
            httpx.AsyncClient(base_url=engine.http, timeout=5, headers=headers) as http,
        ):
            await _connect_ea(world, engine, nursery)  # its snapshot holds both
            found = await wait_for(lambda: _when(by_ticket(http), lambda ps: len(ps) == 2))
            assert [found[t.ticket]["adopted"] for t in (held, left)] == [False, False]
            adopted = await http.post(f"/api/v1/positions/{found[held.ticket]['id']}/adopt")
            assert adopted.status_code == 200, adopted.text
            await engine.kill()
            nursery.cancel_scope.cancel()

        await engine.start()
        async with (
            trio.open_nursery() as nursery,
            httpx.AsyncClient(base_url=engine.http, timeout=5, headers=headers) as http,
            open_websocket_url(
                f"{engine.ws}/ws/feed?token={FEED_TOKEN}", subprotocols=["tripwire.v1.msgpack"]
            ) as feed,
        ):
            recovered = await by_ticket(http)
            assert recovered[held.ticket]["adopted"] is True
            assert recovered[left.ticket]["adopted"] is False
            ea = await _connect_ea(world, engine, nursery)
            # Through both SLs (the broker's own stops are off in this world): only the
            # adopted one is the engine's to close.
            await _quote(feed, world, 1944.0)
            closed = await wait_for(
                lambda: _when(by_ticket(http), lambda ps: _state(ps, held.ticket) == "closed")
            )
            assert closed[held.ticket]["close_reason"] == "sl"
            assert closed[left.ticket]["state"] == "open"
            assert closed[left.ticket]["adopted"] is False
            assert [c.ticket for c in ea.commands] == [held.ticket]
            assert left.ticket in world.terminal.positions
            await engine.stop()
            nursery.cancel_scope.cancel()
    finally:
        await engine.stop()


def _state(positions: dict[int, dict], ticket: int) -> str | None:
    """The state of the position of ``ticket`` (None while a close is between the live list
    and the history)."""
    return positions[ticket]["state"] if ticket in positions else None


async def test_the_reconciliation_log_lists_each_divergence_a_snapshot_shows(
    engine, nursery: trio.Nursery
) -> None:
    """Unknown on the terminal, missing from it, another volume, a tighter broker SL: each is
    an entry of ``GET /api/v1/reconciliation``, for the position it concerns."""
    alice, token = await engine.user("alice")
    record, secret = await engine.ctx.registry.register_device(alice, "EA")

    def price(symbol: str) -> tuple[float, float] | None:
        q = engine.node.prices.get(symbol)
        return None if q is None else (q[0], q[1])

    terminal = PaperTerminal(engine.node.instruments, price, PaperConfig(broker_stops=False))
    ea = SimulatedEA(engine.ws_url + "/ws/device", record.id, secret, terminal, encoding="json")
    await nursery.start(ea.run)
    quote(engine)
    await wait_for(lambda: engine.node.prices.get("XAUUSD"))
    async with engine.client(token) as http:
        ids = []
        for name in ("volume", "levels", "gone"):
            signal = make_signal([alice], signal_id=name)
            async with engine.client() as strategy:
                assert (await post_signal(strategy, signal)).status_code == 201
            decided = await http.post(decision_url(signal), json={"decision": "approve"})
            assert decided.status_code == 201, decided.text
            ids.append(decided.json()["approval"]["position_id"])
        actor = engine.node.users[alice]
        await wait_for(
            lambda: [p.state.value for p in actor.live_positions()] == ["open"] * len(ids)
        )
        resized, tightened, gone = (
            next(t for t in terminal.positions.values() if t.comment == f"tw:{pid}") for pid in ids
        )
        # The terminal changes under the engine: a volume, a stop, a trade by hand.
        terminal.positions[resized.ticket] = msgspec.structs.replace(resized, volume=0.2)
        assert tightened.sl is not None
        terminal.positions[tightened.ticket] = msgspec.structs.replace(
            tightened, sl=tightened.sl + 1
        )
        manual = terminal.open_by_hand("XAUUSD", Side.SELL, 0.3)
        await ea.send(terminal.snapshot(engine.ctx.clock.now_ms()))
        del terminal.positions[gone.ticket]  # closed at the terminal, while unseen
        await ea.send(terminal.snapshot(engine.ctx.clock.now_ms()))

        async def logged() -> dict[str, tuple[str | None, int | None]] | None:
            answer = (await http.get("/api/v1/reconciliation")).json()
            kinds = {e["kind"]: (e["position_id"], e["ticket"]) for e in answer["entries"]}
            return kinds if "closed_while_away" in kinds else None

        kinds = await wait_for(logged)
        assert kinds["volume_mismatch"] == (ids[0], resized.ticket)
        assert kinds["levels_mismatch"] == (ids[1], tightened.ticket)
        assert kinds["closed_while_away"] == (ids[2], gone.ticket)
        external_id, ticket = kinds["external_found"]
        assert ticket == manual.ticket and external_id is not None
        listed = (await http.get(f"/api/v1/positions/{external_id}")).json()
        assert (listed["origin"], listed["adopted"], listed["side"]) == ("external", False, "sell")
