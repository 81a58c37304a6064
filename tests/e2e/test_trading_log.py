"""Trading events are logged at info with their ids, in JSON everywhere when asked.

The real ``tripwire run`` in its own process, ``--log-format json``, the demo on and the
replay at ten times real speed: a login (ours), an approval (the demo's own), an open, its
fill, the SL/TP fire and the close all happen within seconds. Its standard error, which the
snapshotter child writes to as well (a snapshot a second here), must be JSON line by line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import free_port

pytestmark = pytest.mark.slow

FIRED = {"sl", "tp", "broker_sl", "broker_tp"}


def _lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # any console line fails here


def _closed_by_stop(events: list[dict[str, Any]]) -> bool:
    return any(e["event"] == "position closed" and e.get("reason") in FIRED for e in events)


def test_trading_events_are_logged_as_json_with_their_ids(pg_dsn: str, tmp_path: Path) -> None:
    port = free_port()
    err = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    env.update(PYTHONPATH=os.pathsep.join(sys.path))
    command = [
        sys.executable, "-m", "gateway.cli", "--log-format", "json", "run",
        "--host", "127.0.0.1", "--port", str(port), "--database-url", pg_dsn,
        "--state-dir", str(tmp_path / "state"), "--log-format", "json",
        "--log-level", "debug", "--feed", "replay", "--replay-speed", "10",
        "--snapshot-interval-s", "1",
        "--jwt-secret", "jwt-secret-for-tests-0123456789abcdef",
    ]  # fmt: skip
    with err.open("w") as stderr:
        engine = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path
        )
    try:
        deadline = time.monotonic() + 90
        token = None
        while time.monotonic() < deadline and engine.poll() is None:
            try:
                if token is None:
                    response = httpx.post(
                        f"http://127.0.0.1:{port}/api/v1/auth/login",
                        json={"username": "demo", "password": "demo-password"},
                        timeout=5,
                    )
                    token = response.json()["access_token"]
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            events = _lines(err)
            snapshots = [e for e in events if e.get("component") == "snapshotter"]
            if token and _closed_by_stop(events) and snapshots:
                break
            time.sleep(0.5)
        assert engine.poll() is None, err.read_text()[-3000:]
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=60)
    events = _lines(err)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_name.setdefault(e["event"], []).append(e)

    (login,) = by_name["login"]
    user_id = login["user_id"]
    assert login["level"] == "info"
    (approval,) = [a for a in by_name["approval"] if a["user_id"] == user_id]
    position_id = approval["position_id"]
    assert approval["decision"] == "approve" and approval["approval_id"]

    def one(name: str, **match: Any) -> dict[str, Any]:
        found = [
            e
            for e in by_name.get(name, [])
            if e.get("position_id") == position_id and all(e.get(k) == v for k, v in match.items())
        ]
        assert found, (name, match, [e["event"] for e in events][-80:])
        assert found[0]["level"] in {"info", "warning"}
        return found[0]

    opened = one("position opened")
    assert opened["user_id"] == user_id and opened["device_id"] == "paper-1"
    assert opened["symbol"] == "XAUUSD"
    open_cmd = one("command issued", kind="open")
    assert open_cmd["command_id"] and open_cmd["device_id"] == "paper-1"
    assert one("command resolved", command_id=open_cmd["command_id"])["outcome"]
    closed = one("position closed")
    assert closed["reason"] in FIRED and closed["user_id"] == user_id
    if closed["reason"] in {"sl", "tp"}:  # the engine's trigger (not the broker's own stop)
        fired = one("stop fired")
        assert fired["command_id"] and fired["symbol"] == "XAUUSD"
        assert one("command issued", kind="close", command_id=fired["command_id"])
    # The snapshotter child logged (in JSON: _lines parsed every line), at debug only.
    snapshots = [e for e in events if e.get("component") == "snapshotter"]
    assert snapshots and all(e["level"] == "debug" for e in by_name["snapshot written"])
