"""``tripwire run --nodes 2``: two node processes on one Postgres and a private Redis the
launcher starts itself; both serve, the partitions are split between them, a node killed with
-9 is started again, and SIGTERM stops everything (nodes, Redis) and exits 0."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
import trio

from persistence.db import Database
from persistence.redis_server import find_redis_server
from tests.e2e.conftest import free_port
from tests.processes import children, running

pytestmark = pytest.mark.slow


async def _ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(url + "/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def _owners(db: Database) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT owner, count(*) AS n FROM partitions"
        " WHERE owner IS NOT NULL AND expires_at > clock_timestamp() GROUP BY owner"
    )
    return {r["owner"]: int(r["n"]) for r in rows}


async def test_two_nodes_from_one_command(db: Database, pg_dsn: str, tmp_path: Path) -> None:
    if find_redis_server() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("NO REDIS: no redis-server binary for the launcher (CI=true requires it)")
        pytest.skip("NO REDIS: no redis-server binary for the launcher to start")
    port = free_port()
    while free_port() == port + 1:  # the launcher takes port and port + 1
        port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": pg_dsn,
        "TRIPWIRE_NODES": "2",
        "TRIPWIRE_PORT": str(port),
        "TRIPWIRE_STATE_DIR": str(tmp_path / "state"),
        "TRIPWIRE_FEED": "none",
        "TRIPWIRE_LOG_FORMAT": "json",
    }
    env.pop("REDIS_URL", None)
    log = os.open(tmp_path / "launcher.log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        launcher = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway.cli", "run"], env=env, stdout=log, stderr=log
        )
    finally:
        os.close(log)  # the launcher has its own copy
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    try:
        with trio.fail_after(120):
            while not all([await _ready(u) for u in urls]):
                await trio.sleep(0.3)
            while True:  # balanced: 32 each, give or take the hysteresis
                owners = await _owners(db)
                if len(owners) == 2 and all(31 <= n <= 33 for n in owners.values()):
                    break
                await trio.sleep(0.3)
        nodes = children(launcher.pid, b"gateway.cli")
        redis = children(launcher.pid, b"redis-server")
        assert len(nodes) == 2 and len(redis) == 1
        # A node that dies is started again; meanwhile the other serves every partition.
        os.kill(nodes[0], signal.SIGKILL)
        with trio.fail_after(60):
            while len(children(launcher.pid, b"gateway.cli")) < 2 or not all(
                [await _ready(u) for u in urls]
            ):
                await trio.sleep(0.3)
        now = children(launcher.pid, b"gateway.cli")
        assert nodes[0] not in now
        launcher.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            assert await launcher.wait() == 0
        assert not any(running(pid) for pid in [*now, *redis])
    finally:
        if launcher.returncode is None:
            launcher.kill()
