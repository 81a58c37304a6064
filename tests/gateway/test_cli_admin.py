"""The ``tripwire`` command as an operator uses it, in its own process against a test database:
``--version``, a taken port (one line, status 1), and the admin commands, whose effect a
registry loaded afterwards (the engine's next start) sees."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from gateway.config import parse_strategies
from gateway.registry import Registry
from persistence import open_bridge, open_database

pytestmark = pytest.mark.slow


def tripwire(
    tmp_path: Path, *args: str, stdin: str | None = None, **env_vars: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    env.pop("DATABASE_URL", None)
    env.update(PYTHONPATH=os.pathsep.join(sys.path), TRIPWIRE_STATE_DIR=str(tmp_path / "state"))
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        check=False,
        cwd=tmp_path,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _registry(dsn: str) -> Registry:
    async with open_bridge() as bridge, open_database(bridge, dsn) as db:
        registry = Registry(db)
        await registry.load()
        registry.db = None  # a snapshot of what the next start loads
        return registry


def test_version(tmp_path: Path) -> None:
    done = tripwire(tmp_path, "--version")
    assert done.returncode == 0
    assert done.stdout.startswith("tripwire ") and len(done.stdout.splitlines()) == 1


def test_a_port_in_use_is_one_line(tmp_path: Path, pg_dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tripwire(
            tmp_path,
            "run",
            "--port",
            str(port),
            "--feed",
            "none",
            "--paper-device",
            "false",
            "--demo-strategy",
            "false",
            DATABASE_URL=pg_dsn,
        )
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "tripwire run:" in line]
    assert errors == [f"tripwire run: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr


def test_user_and_device_commands(tmp_path: Path, pg_dsn: str) -> None:
    db = {"DATABASE_URL": pg_dsn}
    added = tripwire(
        tmp_path, "user", "add", "carol", "--password-stdin", stdin="pw-carol-123\n", **db
    )
    assert added.returncode == 0, added.stderr
    generated = tripwire(tmp_path, "user", "add", "dave", "--admin", **db)
    assert generated.returncode == 0, generated.stderr
    assert "password (shown once): " in generated.stdout
    again = tripwire(tmp_path, "user", "add", "carol", **db)
    assert again.returncode == 1
    assert [x for x in again.stderr.splitlines() if x.startswith("tripwire")] == [
        "tripwire user add: conflict: that username is taken"
    ]

    device = tripwire(tmp_path, "device", "add", "carol", "MT5 live", "--broker", "X", **db)
    assert device.returncode == 0, device.stderr
    device_id = device.stdout.split()[1]
    secret = device.stdout.split("secret (shown once): ")[1].strip()
    rotated = tripwire(tmp_path, "device", "rotate", device_id, "--grace-s", "0", **db)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.split("secret (shown once): ")[1].strip()

    registry = trio.run(_registry, pg_dsn)
    carol = registry.user(registry.by_name["carol"])
    assert carol.role == "user" and not carol.disabled
    assert registry.user(registry.by_name["dave"]).role == "admin"
    assert registry.device_secrets(device_id) == [new_secret.encode()]
    assert secret != new_secret

    assert tripwire(tmp_path, "device", "revoke", device_id, **db).returncode == 0
    assert tripwire(tmp_path, "user", "disable", "carol", **db).returncode == 0
    registry = trio.run(_registry, pg_dsn)
    assert registry.device_secrets(device_id) == [] and registry.devices[device_id].revoked
    assert registry.users[registry.by_name["carol"]].disabled
    unknown = tripwire(tmp_path, "device", "revoke", "d-nope", **db)
    assert unknown.returncode == 1 and "not_found" in unknown.stderr


def test_strategy_add_prints_the_setting(tmp_path: Path) -> None:
    current = "old=" + "s" * 20
    done = tripwire(tmp_path, "strategy", "add", "momentum", TRIPWIRE_STRATEGIES=current)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("TRIPWIRE_STRATEGIES="))
    strategies = parse_strategies(line.split("=", 1)[1].strip("'"))
    assert set(strategies) == {"old", "momentum"} and len(strategies["momentum"][0]) >= 32
    taken = tripwire(tmp_path, "strategy", "add", "old", TRIPWIRE_STRATEGIES=current)
    assert taken.returncode == 1 and "taken" in taken.stderr
