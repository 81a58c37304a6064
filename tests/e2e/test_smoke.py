"""The engine comes up, answers its probes and lets a user log in (real sockets)."""

from __future__ import annotations

from tests.e2e.conftest import ADMIN_PASSWORD


async def test_probes_login_and_openapi(engine) -> None:
    async with engine.client() as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["database"] is True
        bad = await http.post("/api/v1/auth/login", json={"username": "admin", "password": "x"})
        assert bad.status_code == 401 and bad.json()["code"] == "unauthorized"
        spec = (await http.get("/openapi.json")).json()
        assert "/api/v1/auth/login" in spec["paths"]
        metrics = await http.get("/metrics")
        assert "tripwire_quotes_total" in metrics.text
    token = await engine.login("admin", ADMIN_PASSWORD)
    async with engine.client(token) as http:
        me = (await http.get("/api/v1/auth/me")).json()
        assert me["role"] == "admin"
