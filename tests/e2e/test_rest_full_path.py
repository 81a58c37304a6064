"""The whole way, over real sockets: a signed signal, an approval over REST, the open on a
simulated EA connected to ``/ws/device``, quotes through the SL, the close and its ACK, and
the CLOSED position visible over REST, on ``/ws/client`` and in the audit log."""

from __future__ import annotations

import trio
from trio_websocket import open_websocket_url

from protocol.client import PositionDelta, Snapshot, Subscribe
from protocol.codec import client_client_codec
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.conftest import ADMIN_PASSWORD
from tests.e2e.helpers import (
    GOLD_ASK,
    decision_url,
    make_signal,
    post_signal,
    quote,
    wait_for,
)


async def test_signal_to_closed_position(engine, nursery: trio.Nursery) -> None:
    alice, token = await engine.user("alice")
    record, secret = await engine.ctx.registry.register_device(alice, "MT5 demo")

    def price(symbol: str) -> tuple[float, float] | None:
        q = engine.node.prices.get(symbol)
        return None if q is None else (q[0], q[1])

    terminal = PaperTerminal(engine.node.instruments, price, PaperConfig(latency_ms=1))
    ea = SimulatedEA(engine.ws_url + "/ws/device", record.id, secret, terminal, encoding="json")
    await nursery.start(ea.run)
    assert ea.welcome is not None, ea.errors
    quote(engine)
    await wait_for(lambda: engine.node.users[alice].core.devices.get(record.id))

    async with engine.client(token) as http:
        signal = make_signal([alice])
        created = await post_signal(http, signal)
        assert created.status_code == 201, created.text
        decided = await http.post(
            decision_url(signal),
            json={"decision": "approve"},
            headers={"User-Agent": "full-path-test/1.0"},
        )
        assert decided.status_code == 201, decided.text
        position_id = decided.json()["approval"]["position_id"]

        async def state_of() -> str | None:
            found = (await http.get(f"/api/v1/positions/{position_id}")).json()
            return found.get("state")

        assert await wait_for(lambda: _is(state_of, "open")) == "open"
        assert [type(c).__name__ for c in ea.commands] == ["OpenCommand"]

        codec = client_client_codec("json")
        url = f"{engine.ws_url}/ws/client?token={token}"
        async with open_websocket_url(url, subprotocols=["tripwire.v1.json"]) as ws:
            await ws.send_message(codec.encode(Subscribe(channels=["positions"])))
            snapshot = codec.decode(await ws.get_message())
            assert isinstance(snapshot, Snapshot)
            assert [p.state for p in snapshot.positions if p.id == position_id] == ["open"]

            quote(engine, bid=GOLD_ASK - 8, ask=GOLD_ASK - 7.5)  # through the SL (entry - 5)
            with trio.fail_after(10):
                while True:
                    message = codec.decode(await ws.get_message())
                    if isinstance(message, PositionDelta) and message.position.state == "closed":
                        break
            assert message.position.id == position_id
            assert message.position.close_reason == "sl"
            assert message.position.pl is not None and message.position.pl < 0

        assert [type(c).__name__ for c in ea.commands] == ["OpenCommand", "CloseCommand"]

        async def closed() -> list[dict]:
            listed = (await http.get("/api/v1/positions", params={"state": "closed"})).json()
            return [p for p in listed["positions"] if p["id"] == position_id]

        (history,) = await wait_for(closed)
        assert history["state"] == "closed" and history["close_reason"] == "sl"
        assert (await http.get("/api/v1/positions")).json()["positions"] == []

    admin = await engine.login("admin", ADMIN_PASSWORD)
    async with engine.client(admin) as http:
        entries = (await http.get("/api/v1/audit", params={"actor_id": alice})).json()["entries"]
        (approved,) = [e for e in entries if e["action"] == "approval.approve"]
        assert approved["outcome"] == "201"
        assert approved["ip"] == "127.0.0.1"
        assert approved["user_agent"] == "full-path-test/1.0"
        assert approved["detail"]["position_id"] == position_id


async def _is(get, expected: str) -> str | None:
    value = await get()
    return value if value == expected else None
