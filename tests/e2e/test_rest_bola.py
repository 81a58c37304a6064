"""Broken object-level authorisation, tried everywhere: user B against every endpoint that
names one of user A's signals, approvals, positions or devices (or A's user id).

The matrix is data (:data:`CASES`), run against one engine: B must get a 404 for every one of
A's things, read or acted on (the answer for a thing that does not exist: a 403 would tell that
it does), never A's data, and nothing of A's may change. Lists B may read must not mention
anything of A's. Naming A's user id in a query is a 403 (only admins may): a role check, the
same for every id, so it tells nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import trio

from tests.e2e.conftest import ADMIN_PASSWORD
from tests.e2e.helpers import decision_url, make_signal, paper_device, post_signal, quote, wait_for


class Case(NamedTuple):
    method: str
    path: str
    """``{signal}``, ``{position}``, ``{device}``, ``{user}`` are A's."""
    statuses: frozenset[int]
    """What B may be answered."""
    json: dict | None = None


HIDDEN = frozenset({404})
FORBIDDEN = frozenset({403})
LISTED = frozenset({200})  # B's own list: must not mention A's things

CASES = [
    Case("GET", "/api/v1/signals/{signal}", HIDDEN),
    Case("POST", "/api/v1/signals/{signal}/decision", HIDDEN, {"decision": "approve"}),
    Case("POST", "/api/v1/signals/{signal}/decision", HIDDEN, {"decision": "reject"}),
    Case("GET", "/api/v1/signals?status=all", LISTED),
    Case("GET", "/api/v1/approvals", LISTED),
    Case("GET", "/api/v1/approvals?user_id={user}", FORBIDDEN),
    Case("GET", "/api/v1/positions/{position}", HIDDEN),
    Case("POST", "/api/v1/positions/{position}/close", HIDDEN),
    Case("GET", "/api/v1/positions?state=all", LISTED),
    Case("GET", "/api/v1/positions?user_id={user}", FORBIDDEN),
    Case("GET", "/api/v1/devices/{device}", HIDDEN),
    Case("POST", "/api/v1/devices/{device}/rotate", HIDDEN),
    Case("POST", "/api/v1/devices/{device}/revoke", HIDDEN),
    Case("GET", "/api/v1/devices", LISTED),
    Case("GET", "/api/v1/devices?user_id={user}", FORBIDDEN),
    Case("GET", "/api/v1/reconciliation", LISTED),
    Case("GET", "/api/v1/reconciliation?user_id={user}", FORBIDDEN),
    Case("GET", "/api/v1/guards?user_id={user}", FORBIDDEN),
    Case("GET", "/api/v1/alerts?user_id={user}", FORBIDDEN),
    Case("GET", "/api/v1/analytics?user_id={user}", FORBIDDEN),
]


async def test_nobody_reads_or_acts_on_another_users_things(engine, nursery: trio.Nursery) -> None:
    alice, alice_token = await engine.user("alice")
    _, bob_token = await engine.user("bob")
    device_id, _ = await paper_device(engine, nursery, alice)
    secrets_before = list(engine.ctx.registry.device(device_id).secrets)
    quote(engine)
    signal = make_signal([alice], signal_id="alice-only")
    pending = make_signal([alice], signal_id="alice-pending")
    async with engine.client() as strategy:
        assert (await post_signal(strategy, signal)).status_code == 201
        assert (await post_signal(strategy, pending)).status_code == 201
    async with engine.client(alice_token) as http:
        approved = await http.post(decision_url(signal), json={"decision": "approve"})
        position_id = approved.json()["approval"]["position_id"]
        approval_id = approved.json()["approval"]["id"]
    await wait_for(lambda: engine.node.state.positions[position_id].state.value == "open")

    names = {
        "signal": "strat-1/alice-pending/1",
        "position": position_id,
        "device": device_id,
        "user": alice,
    }
    missing = {  # things nobody has: A's must be answered exactly as these are
        "signal": "strat-1/nobody/1",
        "position": "position-nobody",
        "device": "device-nobody",
        "user": "u-nobody",
    }
    secrets = [alice, device_id, position_id, approval_id, "alice-only", "alice-pending"]
    failures = []
    async with engine.client(bob_token) as http:
        for case in CASES:
            path = case.path.format(**names)
            response = await http.request(case.method, path, json=case.json)
            label = f"{case.method} {case.path}"
            if response.status_code not in case.statuses:
                failures.append(f"{label}: {response.status_code} {response.text[:200]}")
            elif response.status_code == 200:
                leaked = [s for s in secrets if s in response.text]
                if leaked:
                    failures.append(f"{label}: mentions {leaked}")
            elif set(response.json()) - {"code", "message", "details"}:
                failures.append(f"{label}: not an error body: {response.text[:200]}")
            else:
                other = case.path.format(**missing)
                nothing = await http.request(case.method, other, json=case.json)
                seen = (response.status_code, response.json()["code"], response.json()["message"])
                unseen = (nothing.status_code, nothing.json()["code"], nothing.json()["message"])
                if seen != unseen:
                    failures.append(f"{label}: {seen} for A's, {unseen} for nobody's")
    assert not failures, "\n".join(failures)

    # Nothing of A's changed.
    assert engine.node.state.positions[position_id].state.value == "open"
    record = engine.ctx.registry.device(device_id)
    assert not record.revoked and record.secrets == secrets_before
    assert engine.node.devices[device_id].core.connected
    assert [a.user_id for a in engine.node.state.approvals.values()] == [alice]

    # While the owner and an admin still see and may act.
    admin = await engine.login("admin", ADMIN_PASSWORD)
    for token in (alice_token, admin):
        async with engine.client(token) as http:
            assert (await http.get(f"/api/v1/positions/{position_id}")).status_code == 200
            assert (await http.get(f"/api/v1/devices/{device_id}")).status_code == 200
    async with engine.client(admin) as http:
        closed = await http.post(f"/api/v1/positions/{position_id}/close")
        assert closed.status_code == 202 and closed.json()["command_id"]
