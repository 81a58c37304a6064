"""Processes of the bridge's end-to-end tests: the engine (``tripwire run``), the fake MT5
terminal (``python -m sim.mt5.terminal``) and the bridge (``tripwire-ea``), each a real process
that a test can kill with SIGKILL and start again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import open_websocket_url

from bench.e2e import wait_ready
from protocol.codec import feed_codec
from protocol.feed import Quote, QuoteBatch
from protocol.signing import sign_signal_header
from sim.mt5.control import TerminalControl
from tests.e2e.conftest import FEED_TOKEN, STRATEGY_ID, STRATEGY_SECRET, free_port

ROOT = Path(__file__).resolve().parents[2]
FAKE_MT5 = ROOT / "sim" / "mt5" / "client"  # it holds only the MetaTrader5 package
JWT_SECRET = "bridge-test-jwt-secret-0123456789abcdef"
FEED = feed_codec("msgpack")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def admin(dsn: str, state_dir: Path, *args: str, stdin: str | None = None) -> str:
    """``tripwire <args>`` (the operator's CLI) against the test's database: its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=_env(DATABASE_URL=dsn, TRIPWIRE_STATE_DIR=str(state_dir)),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def provision(dsn: str, state_dir: Path) -> tuple[str, str, str]:
    """A trader and their MT5 device, through the CLI: ``(user id, device id, secret)``."""
    out = admin(dsn, state_dir, "user", "add", "trader", "--password-stdin", stdin="password-0123")
    user_id = re.search(r"id (\S+),", out)
    out = admin(dsn, state_dir, "device", "add", "trader", "MT5 live")
    device = re.search(r"device (\S+) added", out)
    secret = re.search(r"secret \(shown once\): (\S+)", out)
    assert user_id and device and secret, out
    return user_id.group(1), device.group(1), secret.group(1)


class EngineProcess:
    """``tripwire run`` on a fixed port (the bridge's URL survives a restart)."""

    def __init__(self, dsn: str, state_dir: Path, log: Path) -> None:
        self.dsn, self.state_dir, self.log = dsn, state_dir, log
        self.port = free_port()
        self.process: trio.Process | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = _env(
            DATABASE_URL=self.dsn,
            TRIPWIRE_PORT=str(self.port),
            TRIPWIRE_STATE_DIR=str(self.state_dir),
            TRIPWIRE_FEED="none",
            TRIPWIRE_PAPER_DEVICE="false",
            TRIPWIRE_DEMO_STRATEGY="false",
            TRIPWIRE_STRATEGIES=f"{STRATEGY_ID}={STRATEGY_SECRET.decode()}",
            TRIPWIRE_FEED_TOKEN=FEED_TOKEN,
            TRIPWIRE_JWT_SECRET=JWT_SECRET,
            TRIPWIRE_LOG_LEVEL="warning",
            TRIPWIRE_LOGIN_BURST="1000",
            TRIPWIRE_LOGIN_ADDRESS_BURST="1000",
        )
        with open(self.log, "ab") as log:  # noqa: ASYNC230 - opening a log, once per start
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cli", "run"], env=env, stdout=log, stderr=log
            )
        async with httpx.AsyncClient(base_url=self.http, timeout=2) as http:
            await wait_ready(http, timeout_s=180, poll_s=0.1)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with trio.move_on_after(20):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


class TerminalProcess:
    """The fake MT5 terminal; it outlives every bridge and engine of a test, as a broker does."""

    def __init__(self, folder: Path, *options: str) -> None:
        self.address = str(folder / "terminal.sock")
        self.options = options
        self.process: subprocess.Popen[str] | None = None
        self.control: TerminalControl | None = None

    def start(self) -> TerminalControl:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sim.mt5.terminal", "--address", self.address, *self.options],
            env=_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"
        self.control = TerminalControl(self.address)
        return self.control

    def stop(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.process is not None:
            self.process.kill()
            self.process.wait()


class BridgeProcess:
    """``tripwire-ea`` (its console script's function), with the fake ``MetaTrader5`` on the
    path and the secret in the environment."""

    def __init__(
        self, engine: EngineProcess, terminal: TerminalProcess, device_id: str, secret: str,
        folder: Path,
    ) -> None:  # fmt: skip
        self.engine, self.terminal = engine, terminal
        self.device_id, self.secret, self.folder = device_id, secret, folder
        self.process: trio.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        env = _env(TRIPWIRE_DEVICE_SECRET=self.secret)
        env["PYTHONPATH"] = os.pathsep.join([str(FAKE_MT5), env["PYTHONPATH"]])
        with open(self.folder / "bridge.log", "ab") as log:  # noqa: ASYNC230 - as above
            self.process = await trio.lowlevel.open_process(
                [
                    sys.executable, "-c", "from tripwire_ea.cli import main; main()",
                    "--server", self.engine.ws, "--device-id", self.device_id,
                    "--state-dir", str(self.folder / "ea-state"),
                    "--terminal-path", self.terminal.address,
                    "--max-backoff-s", "1", "--poll-ms", "100", "--encoding", "json",
                ],
                env=env, stdout=log, stderr=log,
            )  # fmt: skip

    @property
    def killed(self) -> bool:
        return self.process is not None and self.process.poll() == -9

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class Trader:
    """The strategy that signs signals, the user who approves them, the feed that prices."""

    def __init__(self, engine: EngineProcess, user_id: str) -> None:
        self.engine, self.user_id = engine, user_id
        self.signals = 0
        self._token: str | None = None

    async def token(self) -> str:
        """One login (the JWT secret is fixed, so the token outlives an engine restart)."""
        if self._token is not None:
            return self._token
        async with httpx.AsyncClient(base_url=self.engine.http, timeout=10) as http:
            r = await http.post(
                "/api/v1/auth/login", json={"username": "trader", "password": "password-0123"}
            )
            r.raise_for_status()
            self._token = str(r.json()["access_token"])
            return self._token

    async def approve(self, side: str, entry: float, sl: float, tp: float) -> str:
        """Post a signed signal and approve it: the position id."""
        self.signals += 1
        sid = f"s{self.signals}"
        body = json.dumps({
            "strategy_id": STRATEGY_ID, "signal_id": sid, "version": 1,
            "audience": [self.user_id], "symbol": "XAUUSD", "side": side, "entry": entry,
            "sl": sl, "tp": tp, "volume": 0.1, "created_at_ms": now_ms(),
        }).encode()  # fmt: skip
        headers = {
            "X-Strategy-Id": STRATEGY_ID,
            "X-Signature": sign_signal_header(body, STRATEGY_ID, STRATEGY_SECRET, now_ms()),
            "Content-Type": "application/json",
        }
        token = await self.token()
        async with httpx.AsyncClient(
            base_url=self.engine.http, timeout=10, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            posted = await http.post("/api/v1/signals", content=body, headers=headers)
            assert posted.status_code == 201, posted.text
            decided = await http.post(
                f"/api/v1/signals/{STRATEGY_ID}/{sid}/1/decision", json={"decision": "approve"}
            )
            assert decided.status_code == 201, decided.text
            return str(decided.json()["approval"]["position_id"])

    async def devices(self) -> list[dict[str, Any]]:
        token = await self.token()
        async with httpx.AsyncClient(
            base_url=self.engine.http, timeout=10, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            r = await http.get("/api/v1/devices")
            r.raise_for_status()
            return list(r.json()["devices"])

    async def positions(self) -> list[dict[str, Any]]:
        token = await self.token()
        async with httpx.AsyncClient(
            base_url=self.engine.http, timeout=10, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            r = await http.get("/api/v1/positions", params={"state": "all", "limit": 1000})
            r.raise_for_status()
            return list(r.json()["positions"])


async def send_quote(feed: Any, bid: float, ask: float) -> None:
    batch = QuoteBatch(
        quotes=[Quote(symbol="XAUUSD", bid=bid, ask=ask, time_ms=now_ms())], sent_ms=now_ms()
    )
    await feed.send_message(FEED.encode(batch))


def open_feed(engine: EngineProcess) -> Any:
    return open_websocket_url(
        f"{engine.ws}/ws/feed?token={FEED_TOKEN}", subprotocols=["tripwire.v1.msgpack"]
    )
