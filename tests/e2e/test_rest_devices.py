"""Devices over REST with a real EA on ``/ws/device``: the secret is shown once, a rotated
secret works alongside the old one, a revoke closes the live session and refuses the next, also
when it was made outside the engine."""

from __future__ import annotations

import json

import trio

from gateway.registry import Registry
from protocol.closecodes import CloseCode
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperTerminal
from tests.e2e.helpers import wait_for


def simulated_ea(engine, device_id: str, secret: str) -> SimulatedEA:
    terminal = PaperTerminal(engine.node.instruments, lambda symbol: None)
    return SimulatedEA(engine.ws_url + "/ws/device", device_id, secret, terminal, encoding="json")


async def test_register_rotate_revoke(engine, nursery: trio.Nursery) -> None:
    alice, token = await engine.user("alice")
    async with engine.client(token) as http:
        for bad in (
            {"name": ""},
            {"name": "x" * 65},
            {"broker": "no name"},
            {"name": 5},
            {"name": "nul\u0000inside"},
            {"name": "ok", "broker": "line\nbreak"},
            {"name": "lone \ud800 surrogate"},
        ):
            body = json.dumps(bad).encode()  # ASCII: a lone surrogate travels escaped
            response = await http.post(
                "/api/v1/devices", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, bad

        created = await http.post(
            "/api/v1/devices", json={"name": "MT5 live", "account_login": "5001", "broker": "B"}
        )
        assert created.status_code == 201, created.text
        device, secret = created.json()["device"], created.json()["secret"]
        device_id = device["id"]
        assert device["user_id"] == alice and device["connected"] is False
        assert len(secret) >= 32

        listed = await http.get("/api/v1/devices")
        assert [d["id"] for d in listed.json()["devices"]] == [device_id]
        assert secret not in listed.text and "secret" not in listed.text

        first = simulated_ea(engine, device_id, secret)
        await nursery.start(first.run)
        assert first.welcome is not None, first.errors
        live = (await http.get(f"/api/v1/devices/{device_id}")).json()
        assert live["connected"] is True and live["last_seen_ms"] is not None
        recon = (await http.get("/api/v1/reconciliation")).json()
        assert recon["devices"][0]["device_id"] == device_id
        assert recon["devices"][0]["connected"] is True

        rotated = await http.post(f"/api/v1/devices/{device_id}/rotate")
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        assert new_secret != secret and rotated.json()["previous_valid_s"] > 0
        valid = engine.ctx.registry.device_secrets(device_id)
        assert {secret.encode(), new_secret.encode()} == set(valid)

        second = simulated_ea(engine, device_id, new_secret)  # replaces the first session
        await nursery.start(second.run)
        assert second.welcome is not None, second.errors
        await wait_for(lambda: first.closed)
        assert first.closed[0] == CloseCode.REPLACED

        revoked = await http.post(f"/api/v1/devices/{device_id}/revoke")
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        await wait_for(lambda: second.closed)
        assert second.closed[0] == CloseCode.POLICY_VIOLATION

        async def disconnected() -> bool:
            return not (await http.get(f"/api/v1/devices/{device_id}")).json()["connected"]

        await wait_for(disconnected)
        third = simulated_ea(engine, device_id, new_secret)
        await nursery.start(third.run)
        assert third.welcome is None and [e.code for e in third.errors] == ["bad_signature"]

        again = await http.post(f"/api/v1/devices/{device_id}/rotate")
        assert again.status_code == 409
        unknown = await http.post("/api/v1/devices/d-nope/revoke")
        assert unknown.status_code == 404

    rows = await engine.ctx.db.fetch(
        "SELECT action, outcome, detail::text AS detail FROM audit_log "
        "WHERE actor_id = $1 ORDER BY id",
        alice,
    )
    assert [(r["action"], r["outcome"]) for r in rows if r["action"] != "auth.login"] == [
        ("device.register", "201"),
        ("device.rotate", "200"),
        ("device.revoke", "200"),
        ("device.rotate", "409:conflict"),
        ("device.revoke", "404:not_found"),
    ]
    for row in rows:
        assert secret not in row["detail"] and new_secret not in row["detail"]


async def test_a_revoke_made_outside_this_engine_closes_the_live_session(
    engine, nursery: trio.Nursery
) -> None:
    """``tripwire admin`` (or another node) revokes in its own process: the running engine
    hears of it through Postgres and closes the session, as its own REST call would."""
    alice, _ = await engine.user("alice")
    device, secret = await engine.ctx.registry.register_device(alice, "MT5")
    ea = simulated_ea(engine, device.id, secret)
    await nursery.start(ea.run)
    assert ea.welcome is not None, ea.errors

    elsewhere = Registry(engine.ctx.db)  # not the engine's cache: another writer's
    await elsewhere.load()
    await elsewhere.revoke(device.id)
    await wait_for(lambda: ea.closed)
    assert ea.closed[0] == CloseCode.POLICY_VIOLATION
