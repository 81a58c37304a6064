"""Tokens and roles: every bad token is a 401 with a code, every admin endpoint a 403 for users;
the caller's settings round-trip into the live actor; admins create users."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from gateway.auth import TokenIssuer
from tests.e2e.conftest import ADMIN_PASSWORD

# One endpoint of every token-protected blueprint (GET, no body needed).
PROTECTED = [
    "/api/v1/auth/me",
    "/api/v1/me/settings",
    "/api/v1/signals",
    "/api/v1/approvals",
    "/api/v1/positions",
    "/api/v1/devices",
    "/api/v1/reconciliation",
    "/api/v1/guards",
    "/api/v1/alerts",
    "/api/v1/audit",
    "/api/v1/market/prices",
    "/api/v1/market/XAUUSD/candles",
    "/api/v1/analytics",
    "/api/v1/charts/equity.png",
]


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(engine, user_id: str, good: str) -> dict[str, tuple[str | None, str]]:
    """Name -> (Authorization header or None, the error code expected)."""
    secret = engine.ctx.settings.jwt_secret.encode()
    now = int(time.time())
    expired, _ = TokenIssuer(secret, ttl_s=60).issue(user_id, "user", now_s=now - 3600)
    other_key, _ = TokenIssuer(b"another-key-that-is-long-enough-0123456789").issue(user_id, "user")
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered = f"{header}.{_b64({**claims, 'role': 'admin'})}.{signature}"
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({**claims, 'role': 'admin'})}."
    hs512 = jwt.encode({**claims, "role": "admin"}, secret, algorithm="HS512")
    return {
        "expired": (f"Bearer {expired}", "expired"),
        "tampered": (f"Bearer {tampered}", "bad_signature"),
        "other key": (f"Bearer {other_key}", "bad_signature"),
        "alg none": (f"Bearer {unsigned}", "bad_signature"),
        "other algorithm": (f"Bearer {hs512}", "bad_signature"),
        "garbage": ("Bearer not.a.token", "bad_signature"),
        "bearer without token": ("Bearer", "unauthorized"),
        "basic": ("Basic YWRtaW46eA==", "unauthorized"),
        "missing": (None, "unauthorized"),
    }


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_bad_tokens_are_401_everywhere(engine) -> None:
    user_id, good = await engine.user("mallory")
    cases = bad_tokens(engine, user_id, good)
    async with engine.client() as http:
        for name, (header, code) in cases.items():
            headers = {} if header is None else {"Authorization": header}
            for path in PROTECTED:
                response = await http.get(path, headers=headers)
                assert response.status_code == 401, (name, path, response.text)
                assert response.json()["code"] == code, (name, path, response.json())
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            # Writes too, and before the body is even looked at.
            response = await http.post("/api/v1/devices", headers=headers, content=b"{not json")
            assert response.status_code == 401, (name, response.text)
        good_headers = {"Authorization": f"Bearer {good}"}
        for path in PROTECTED:
            if path == "/api/v1/audit":
                continue
            response = await http.get(path, headers=good_headers)
            assert response.status_code == 200, (path, response.text)


async def test_admin_endpoints_refuse_users(engine) -> None:
    _, token = await engine.user("eve")
    async with engine.client(token) as http:
        audit = await http.get("/api/v1/audit")
        assert audit.status_code == 403 and audit.json()["code"] == "forbidden"
        create = await http.post(
            "/api/v1/users", json={"username": "eve2", "password": "password-0123"}
        )
        assert create.status_code == 403 and create.json()["code"] == "forbidden"
        assert "eve2" not in engine.ctx.registry.by_name


async def test_admin_creates_users(engine) -> None:
    admin = await engine.login("admin", ADMIN_PASSWORD)
    async with engine.client(admin) as http:
        created = await http.post(
            "/api/v1/users",
            json={"username": "bob", "password": "bob-password-1", "role": "user"},
        )
        assert created.status_code == 201, created.text
        assert created.json()["username"] == "bob" and created.json()["role"] == "user"
        again = await http.post(
            "/api/v1/users", json={"username": "BOB", "password": "bob-password-1"}
        )
        assert again.status_code == 409 and again.json()["code"] == "conflict"
        for bad in (
            {"username": "", "password": "bob-password-1"},
            {"username": "x y", "password": "bob-password-1"},
            {"username": "carol", "password": "short"},
            {"username": "carol", "password": "carol-password", "role": "root"},
        ):
            response = await http.post("/api/v1/users", json=bad)
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["code"] == "malformed"
        entries = (await http.get("/api/v1/audit", params={"action": "user.create"})).json()
        outcomes = sorted(e["outcome"] for e in entries["entries"])
        assert outcomes == ["201", "409:conflict"]
    token = await engine.login("bob", "bob-password-1")
    async with engine.client(token) as http:
        assert (await http.get("/api/v1/auth/me")).json()["username"] == "bob"


async def test_settings_round_trip_into_the_actor(engine) -> None:
    user_id, token = await engine.user("trader")
    async with engine.client(token) as http:
        current = (await http.get("/api/v1/me/settings")).json()
        assert current["sizing"] == "fixed" and current["drawdown"]["critical"] == 0.15
        wanted = {
            **current,
            "fixed_volume": 0.25,
            "max_deviation_pips": 12.5,
            "drawdown": {"warning": 0.05, "critical": 0.08, "on_critical": "close_all"},
        }
        updated = await http.put("/api/v1/me/settings", json=wanted)
        assert updated.status_code == 200, updated.text
        assert updated.json()["fixed_volume"] == 0.25
        assert (await http.get("/api/v1/me/settings")).json() == updated.json()
        core = engine.node.users[user_id].core
        assert core.settings.fixed_volume == 0.25
        assert core.guard.limits.on_critical == "close_all"
        row = await engine.ctx.db.fetchval("SELECT settings FROM users WHERE id = $1", user_id)
        assert row["max_deviation_pips"] == 12.5
        guards = (await http.get("/api/v1/guards")).json()
        assert guards["drawdown"]["limits"]["critical"] == 0.08
        for bad in (
            {"fixed_volume": -1},
            {"fixed_volume": 0},
            {"risk_percent": 250},
            {"max_delay_ms": -5},
            {"drawdown": {"warning": 0.2, "critical": 0.1}},
            {"drawdown": {"on_critical": "panic"}},
            {"sizing": "martingale"},
            {"fixed_volume": "lots"},
        ):
            response = await http.put("/api/v1/me/settings", json={**current, **bad})
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["code"] == "malformed"
        malformed = await http.put(
            "/api/v1/me/settings",
            content=b"{",
            headers={"Content-Type": "application/json"},
        )
        assert malformed.status_code == 400
        assert core.settings.fixed_volume == 0.25  # nothing bad got through


async def test_a_disabled_users_token_is_refused_at_once(engine) -> None:
    """The token is still validly signed and unexpired: only the registry knows it no longer
    stands for anyone, and every endpoint asks it."""
    user_id, token = await engine.user("leaver")
    admin = await engine.login("admin", ADMIN_PASSWORD)
    async with engine.client(token) as http, engine.client(admin) as as_admin:
        assert (await http.get("/api/v1/auth/me")).status_code == 200
        disabled = await as_admin.post(f"/api/v1/users/{user_id}/disable")
        assert disabled.status_code == 200, disabled.text
        for path in PROTECTED:
            response = await http.get(path)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["code"] == "unauthorized"
        assert (await http.post("/api/v1/devices", json={"name": "x"})).status_code == 401
        assert (await as_admin.get("/api/v1/auth/me")).status_code == 200  # others unaffected
    assert engine.ctx.registry.devices_of(user_id) == []


async def test_an_admin_enables_a_disabled_user_again(engine) -> None:
    user_id, token = await engine.user("returner")
    admin = await engine.login("admin", ADMIN_PASSWORD)
    async with engine.client(token) as http, engine.client(admin) as as_admin:
        assert (await as_admin.post(f"/api/v1/users/{user_id}/disable")).status_code == 200
        assert (await http.get("/api/v1/auth/me")).status_code == 401
        # Only an admin may, and only for a user that exists.
        refused = await http.post(f"/api/v1/users/{user_id}/enable")
        assert refused.status_code == 401  # a disabled user's own token stands for nobody
        missing = await as_admin.post("/api/v1/users/no-such-user/enable")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        enabled = await as_admin.post(f"/api/v1/users/{user_id}/enable")
        assert enabled.status_code == 200, enabled.text
        assert enabled.json() == {
            "id": user_id,
            "username": "returner",
            "role": "user",
            "disabled": False,
        }
        assert (await http.get("/api/v1/auth/me")).status_code == 200  # honoured again
        entries = (await as_admin.get("/api/v1/audit", params={"action": "user.enable"})).json()
        assert sorted((e["target_id"], e["outcome"]) for e in entries["entries"]) == sorted(
            [("no-such-user", "404:not_found"), (user_id, "200")]
        )
    other_id, other = await engine.user("bystander")
    async with engine.client(other) as http:
        forbidden = await http.post(f"/api/v1/users/{user_id}/enable")
        assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
    assert engine.ctx.registry.is_active(user_id) and engine.ctx.registry.is_active(other_id)
    assert await engine.login("returner", "password-0123")  # it can log in again
