"""End-to-end fixtures: the real runtime (Hypercorn, actors, journal) on a free loopback port,
against a fresh database of the session's real Postgres.

The engine runs in the test's own trio run, so tests can both talk to it over real sockets
(``httpx`` for REST, ``trio-websocket`` for the WebSockets) and look inside it (``engine.ctx``).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.composition import Services
from gateway.config import load_settings
from gateway.context import GatewayContext
from gateway.runtime import run

STRATEGY_ID = "strat-1"
STRATEGY_SECRET = b"strategy-secret-0123456789abcdef"
FEED_TOKEN = "feed-token-0123456789"
ADMIN_PASSWORD = "admin-password-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Engine:
    ctx: GatewayContext
    base_url: str
    ws_url: str
    services: Services | None = None
    """Everything the engine is made of (the fixtures' engines; None where only ``ctx`` is
    at hand)."""
    verify: Any = True
    """How its clients check its certificate (an ``ssl.SSLContext`` for an engine on TLS)."""

    @property
    def node(self) -> Any:
        return self.ctx.node

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=10, verify=self.verify
        )

    async def login(self, username: str, password: str) -> str:
        async with self.client() as http:
            response = await http.post(
                "/api/v1/auth/login", json={"username": username, "password": password}
            )
            response.raise_for_status()
            return str(response.json()["access_token"])

    async def user(self, username: str, password: str = "password-0123") -> tuple[str, str]:
        """A new user: ``(user id, access token)``."""
        user = await self.ctx.registry.create_user(username, password)
        return user.id, await self.login(username, password)


def engine_settings(tmp_path: Path, dsn: str, **overrides: Any) -> Any:
    port = free_port()
    values: dict[str, Any] = dict(
        host="127.0.0.1",
        port=port,
        database_url=dsn,
        state_dir=str(tmp_path / "state"),
        feed="none",
        paper_device=False,
        demo_strategy=False,
        admin_password=ADMIN_PASSWORD,
        jwt_secret="jwt-secret-for-tests-0123456789abcdef",
        strategies=f"{STRATEGY_ID}={STRATEGY_SECRET.decode()}",
        feed_token=FEED_TOKEN,
        snapshot_interval_s=3600.0,
        login_burst=1000,
        login_address_burst=1000,
    )
    values.update(overrides)
    return load_settings({}, **values)


@pytest.fixture
async def engine(nursery: trio.Nursery, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = engine_settings(tmp_path, pg_dsn)
    services = await nursery.start(run, settings)
    base, ws = f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}"
    yield Engine(services.gateway, base, ws, services)
