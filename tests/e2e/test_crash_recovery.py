"""kill -9 the engine at random points of a mixed workload, ten times, and check its promises.

The engine runs as a real process (``tripwire run``) on a real Postgres. The test is the rest
of the world: a strategy posting signed signals, a user approving them over REST, a simulated
EA (whose terminal, the "broker", survives every crash), and a feed publisher. At a random
moment the engine is killed with SIGKILL and started again. After each restart:

* every acknowledged operation is there: every signal answered 201/200 and every approval
  answered 201 is in Postgres;
* no command id was ever issued twice with different content (the EA keeps every command it
  received);
* nothing is duplicated: the broker never opened two positions for one engine position.

At the end every position the broker still holds must be closed by the engine when the market
moves through all the levels: every open position's SL/TP still fires.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from bench.e2e import wait_ready
from engine.instruments import DEFAULT_INSTRUMENTS
from gateway.auth import TokenIssuer
from gateway.registry import Registry
from persistence.bridge import open_bridge
from persistence.db import open_database
from persistence.embedded import EmbeddedPostgres
from protocol.codec import feed_codec
from protocol.feed import Quote, QuoteBatch
from protocol.signing import sign_signal_header
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.conftest import FEED_TOKEN, STRATEGY_ID, STRATEGY_SECRET, free_port
from tests.processes import children, running

pytestmark = pytest.mark.slow

JWT_SECRET = "crash-test-jwt-secret-0123456789abcdef"
TRIALS = 10
FEED = feed_codec("msgpack")


class World:
    """Everything outside the engine, which survives its crashes."""

    def __init__(self, device_id: str, secret: str, user_id: str) -> None:
        self.device_id, self.secret, self.user_id = device_id, secret, user_id
        self.mid = 1950.0
        self.prices: dict[str, tuple[float, float]] = {"XAUUSD": (1950.0, 1950.3)}
        self.terminal = PaperTerminal(
            DEFAULT_INSTRUMENTS, self.prices.get, PaperConfig(broker_stops=False)
        )
        self.commands: dict[str, bytes] = {}  # command id -> content (minus deadline, sig)
        self.conflicts: list[str] = []
        self.opened_tickets: dict[str, set[int]] = {}  # client id -> tickets the broker made
        self.acked_signals: set[tuple[str, str, int]] = set()
        self.acked_approvals: set[str] = set()
        self.token = TokenIssuer(JWT_SECRET.encode(), 24 * 3600).issue(user_id, "user")[0]
        self.signals = 0

    def record_command(self, command: Any, arrived_ns: int) -> None:
        content = msgspec.json.encode(
            {
                k: v
                for k, v in msgspec.structs.asdict(command).items()
                if k not in ("deadline_ms", "sig")
            }
        )
        earlier = self.commands.setdefault(command.command_id, content)
        if earlier != content:
            self.conflicts.append(command.command_id)

    def note_broker_positions(self) -> None:
        for p in self.terminal.positions.values():
            self.opened_tickets.setdefault(p.comment, set()).add(p.ticket)


class Engine:
    def __init__(self, dsn: str | None, state_dir: Path) -> None:
        """``dsn`` None: no DATABASE_URL, the engine's own embedded Postgres under
        ``state_dir/pg``."""
        self.dsn, self.state_dir = dsn, state_dir
        self.process: trio.Process | None = None
        self.port = 0

    async def start(self) -> None:
        self.port = free_port()
        env = dict(
            os.environ,
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
            TRIPWIRE_SNAPSHOT_INTERVAL_S="1",
            TRIPWIRE_LOGIN_BURST="1000",
        )
        if self.dsn is None:
            del env["DATABASE_URL"]
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway.cli", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        async with httpx.AsyncClient(base_url=self.http, timeout=2) as http:
            # Generous: on a cold machine (a fresh clone's first run) one start took over 60 s.
            await wait_ready(http, timeout_s=180, poll_s=0.1)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no shutdown, no final snapshot, no flush
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with trio.move_on_after(20):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()


async def _connect_ea(world: World, engine: Engine, nursery: trio.Nursery) -> SimulatedEA:
    ea = SimulatedEA(
        f"{engine.ws}/ws/device",
        world.device_id,
        world.secret,
        world.terminal,
        encoding="json",
        on_command=world.record_command,
    )
    nursery.start_soon(_run_ea, ea)
    with trio.fail_after(15):
        await ea.connected.wait()
    return ea


async def _run_ea(ea: SimulatedEA) -> None:
    # The engine dies under it at the kill: the next trial connects a new one.
    with contextlib.suppress(ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
        await ea.run()


async def _wait_reconciled(db: Any, world: World) -> None:
    """Until the engine holds, as live, every position the broker holds (its snapshot, read
    after the reconnect, settled the positions the crashes left unknown or pending)."""
    tickets = [p.ticket for p in world.terminal.positions.values()]
    with trio.fail_after(30):
        while await db.fetchval(
            "SELECT count(*) FROM positions WHERE device_id = $1"
            " AND state IN ('open', 'closing') AND ticket = ANY($2::bigint[])",
            world.device_id,
            tickets,
        ) < len(tickets):
            await trio.sleep(0.05)


async def _quote(ws: Any, world: World, bid: float) -> None:
    bid = round(bid, 3)
    world.prices["XAUUSD"] = (bid, round(bid + 0.3, 3))
    batch = QuoteBatch(
        quotes=[
            Quote(
                symbol="XAUUSD",
                bid=bid,
                ask=round(bid + 0.3, 3),
                time_ms=time.time_ns() // 1_000_000,
            )
        ]
    )
    await ws.send_message(FEED.encode(batch))


async def _workload(world: World, engine: Engine, rng: random.Random, seconds: float) -> None:
    """Signals, approvals, opens, acks, quotes and closes until cancelled (the kill)."""
    async with (
        httpx.AsyncClient(
            base_url=engine.http, timeout=5, headers={"Authorization": f"Bearer {world.token}"}
        ) as http,
        open_websocket_url(
            f"{engine.ws}/ws/feed?token={FEED_TOKEN}", subprotocols=["tripwire.v1.msgpack"]
        ) as feed,
    ):
        await _quote(feed, world, world.mid)
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            world.signals += 1
            sid = f"g{world.signals}"
            bid, ask = world.prices["XAUUSD"]
            side = rng.choice(["buy", "sell"])
            entry = ask if side == "buy" else bid
            sign = 1 if side == "buy" else -1
            body = json.dumps(
                {
                    "strategy_id": STRATEGY_ID,
                    "signal_id": sid,
                    "version": 1,
                    "audience": [world.user_id],
                    "symbol": "XAUUSD",
                    "side": side,
                    "entry": entry,
                    "sl": round(entry - sign * rng.uniform(0.5, 3.0), 3),
                    "tp": round(entry + sign * rng.uniform(0.5, 3.0), 3),
                    "created_at_ms": time.time_ns() // 1_000_000,
                }
            ).encode()
            header = sign_signal_header(
                body, STRATEGY_ID, STRATEGY_SECRET, time.time_ns() // 1_000_000
            )
            posted = await http.post(
                "/api/v1/signals",
                content=body,
                headers={
                    "X-Strategy-Id": STRATEGY_ID,
                    "X-Signature": header,
                    "Content-Type": "application/json",
                },
            )
            if posted.status_code in (200, 201):
                world.acked_signals.add((STRATEGY_ID, sid, 1))
                decided = await http.post(
                    f"/api/v1/signals/{STRATEGY_ID}/{sid}/1/decision", json={"decision": "approve"}
                )
                if decided.status_code == 201:
                    world.acked_approvals.add(decided.json()["approval"]["id"])
            world.mid += rng.uniform(-1.2, 1.2)
            await _quote(feed, world, world.mid)
            world.note_broker_positions()
            await trio.sleep(rng.uniform(0.0, 0.05))


async def _check_acknowledged(db: Any, world: World) -> None:
    signals = {
        (r["strategy_id"], r["signal_id"], r["version"])
        for r in await db.fetch("SELECT strategy_id, signal_id, version FROM signals")
    }
    assert world.acked_signals <= signals, world.acked_signals - signals
    approvals = {r["id"] for r in await db.fetch("SELECT id FROM approvals")}
    assert world.acked_approvals <= approvals, world.acked_approvals - approvals


async def _new_world(db: Any, name: str) -> World:
    """A user with a registered device, and the world around the engine."""
    registry = Registry(db)
    user = await registry.create_user(f"{name}-user", "password-0123")
    device, secret = await registry.register_device(user.id, f"{name} terminal")
    return World(device.id, secret, user.id)


async def test_kill_9_at_random_points_loses_and_doubles_nothing(pg_dsn, tmp_path) -> None:
    rng = random.Random(int(hashlib.sha256(pg_dsn.encode()).hexdigest(), 16) % 2**32)
    async with open_bridge() as bridge, open_database(bridge, pg_dsn) as db:
        world = await _new_world(db, "crash")
        engine = Engine(pg_dsn, tmp_path / "state")
        try:
            for _trial in range(TRIALS):
                await engine.start()
                async with trio.open_nursery() as nursery:
                    await _connect_ea(world, engine, nursery)
                    with trio.move_on_after(rng.uniform(0.5, 3.0)):
                        await _workload(world, engine, rng, seconds=10)
                    await engine.kill()  # anywhere: mid-request, mid-batch, mid-snapshot
                    nursery.cancel_scope.cancel()
                world.note_broker_positions()
                await _check_acknowledged(db, world)
            # A last start: the state recovered from the ten crashes must still protect every
            # position the broker holds. Move the market through every level, both ways.
            await engine.start()
            async with trio.open_nursery() as nursery:
                await _connect_ea(world, engine, nursery)
                await _wait_reconciled(db, world)
                async with open_websocket_url(
                    f"{engine.ws}/ws/feed?token={FEED_TOKEN}", subprotocols=["tripwire.v1.msgpack"]
                ) as feed:
                    for bid in (world.mid - 40, world.mid + 40):
                        for step in range(20):
                            await _quote(feed, world, world.mid + (bid - world.mid) * step / 19)
                            await trio.sleep(0.05)
                        with trio.move_on_after(10):
                            while world.terminal.positions:
                                await trio.sleep(0.1)
                        await _quote(feed, world, world.mid)
                        await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
            await _check_acknowledged(db, world)
        finally:
            await engine.stop()
    print(
        f"\nsignals={len(world.acked_signals)} approvals={len(world.acked_approvals)} "
        f"commands={len(world.commands)} broker_positions_ever={len(world.opened_tickets)} "
        f"executions={world.terminal.executions}"
    )
    assert world.conflicts == [], "a command id was issued twice with different content"
    doubled = {cid: t for cid, t in world.opened_tickets.items() if len(t) > 1}
    assert doubled == {}, "the broker opened two positions for one engine position"
    assert not world.terminal.positions, "a position's SL/TP did not fire after recovery"
    assert len(world.acked_approvals) >= TRIALS, "the workload should have approved plenty"
    assert world.commands, "the EA should have received commands"


async def test_a_graceful_stop_snapshots_everything_and_leaves_no_process(pg_dsn, tmp_path) -> None:
    rng = random.Random(5)
    async with open_bridge() as bridge, open_database(bridge, pg_dsn) as db:
        world = await _new_world(db, "stop")
        engine = Engine(pg_dsn, tmp_path / "state")
        try:
            await engine.start()
            assert engine.process is not None
            async with trio.open_nursery() as nursery:
                await _connect_ea(world, engine, nursery)
                await _workload(world, engine, rng, seconds=2.5)  # past a periodic snapshot
                nursery.cancel_scope.cancel()
            snapshotters = children(engine.process.pid, b"persistence.snapshotter")
            assert len(snapshotters) == 1, "the engine keeps one snapshotter process"
            await engine.stop()  # SIGTERM
            assert engine.process.returncode == 0
        finally:
            await engine.stop()
        # The final snapshot covers the whole journal: a restart replays nothing.
        newest = await db.fetchval("SELECT max(seq) FROM snapshots WHERE complete")
        assert newest == await db.fetchval("SELECT max(last_seq) FROM journal") > 0
        assert world.acked_approvals
    with trio.fail_after(10):
        while any(map(running, snapshotters)):
            await trio.sleep(0.05)


def _postmaster(pg: Path) -> int | None:
    """The pid in the embedded server's ``postmaster.pid``, if it names a running process."""
    try:
        pid = int((pg / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if running(pid) else None


async def test_the_embedded_postgres_stops_with_the_engine_after_a_kill_9(pg_folder) -> None:
    """kill -9 leaves the engine's embedded Postgres running; the next engine adopts it and
    must stop it at its SIGTERM like one it started (it used to stay, 4 times out of 4)."""
    pg = pg_folder / "pg"
    engine = Engine(None, pg_folder)
    try:
        await engine.start()
        first = _postmaster(pg)
        assert first is not None, "the engine starts its embedded Postgres"
        await engine.kill()
        assert _postmaster(pg) == first, "kill -9 leaves the postmaster running"

        await engine.start()
        assert _postmaster(pg) == first, "the restarted engine adopts it"
        await engine.stop()  # SIGTERM
        assert engine.process is not None and engine.process.returncode == 0
        with trio.move_on_after(30):
            while running(first):
                await trio.sleep(0.05)
        assert not running(first), "the adopted postmaster outlived the engine"
        assert _postmaster(pg) is None
    finally:
        await engine.stop()
        EmbeddedPostgres(pg).stop("immediate")  # whatever a failure left behind


async def _guard_after_report(http: httpx.AsyncClient, equity: float) -> dict[str, Any]:
    """``/guards``' drawdown once the engine has the account report of ``equity``."""
    with trio.fail_after(15):
        while True:
            guard: dict[str, Any] = (await http.get("/api/v1/guards")).json()["drawdown"]
            if guard["equity"] == equity:
                return guard
            await trio.sleep(0.05)


async def _report(world: World, engine: Engine, http: httpx.AsyncClient, balance: float) -> Any:
    """An EA session whose terminal reports ``balance`` (as equity too) at connect."""
    world.terminal.balance = balance
    async with trio.open_nursery() as nursery:
        await _connect_ea(world, engine, nursery)
        guard = await _guard_after_report(http, balance)
        nursery.cancel_scope.cancel()
    return guard


async def test_a_drawdown_block_lifts_after_a_restart_once_the_account_recovered(
    pg_dsn, tmp_path
) -> None:
    """16 % drawdown blocks opens; the engine restarts (SIGTERM); the EA reconnects at 1 %:
    opens are allowed and an approval is accepted (it used to read "level normal, opens_blocked
    true" and answer 422 "drawdown is critical" until a new dip past 10 %)."""
    async with open_bridge() as bridge, open_database(bridge, pg_dsn) as db:
        world = await _new_world(db, "guard")
    engine = Engine(pg_dsn, tmp_path / "state")
    headers = {"Authorization": f"Bearer {world.token}"}
    try:
        await engine.start()
        async with httpx.AsyncClient(base_url=engine.http, timeout=5, headers=headers) as http:
            assert (await _report(world, engine, http, 10_000.0))["level"] == "normal"
            blocked = await _report(world, engine, http, 8_400.0)
            assert blocked["level"] == "critical" and blocked["opens_blocked"]
        await engine.stop()  # SIGTERM: the journal is flushed, a final snapshot taken
        assert engine.process is not None and engine.process.returncode == 0

        await engine.start()
        async with (
            httpx.AsyncClient(base_url=engine.http, timeout=5, headers=headers) as http,
            open_websocket_url(
                f"{engine.ws}/ws/feed?token={FEED_TOKEN}", subprotocols=["tripwire.v1.msgpack"]
            ) as feed,
        ):
            before = (await http.get("/api/v1/guards")).json()["drawdown"]
            assert before["level"] == "critical" and before["opens_blocked"]  # kept
            world.terminal.balance = 9_900.0
            async with trio.open_nursery() as nursery:
                await _connect_ea(world, engine, nursery)
                guard = await _guard_after_report(http, 9_900.0)  # 1 % below the peak
                assert guard["level"] == "normal" and not guard["opens_blocked"], guard
                await _quote(feed, world, world.mid)
                approved = await _approve(http, world)
                assert approved.status_code == 201, approved.text
                nursery.cancel_scope.cancel()
        await engine.stop()
    finally:
        await engine.stop()


async def _approve(http: httpx.AsyncClient, world: World) -> httpx.Response:
    bid, ask = world.prices["XAUUSD"]
    body = json.dumps(
        {
            "strategy_id": STRATEGY_ID,
            "signal_id": "after-restart",
            "version": 1,
            "audience": [world.user_id],
            "symbol": "XAUUSD",
            "side": "buy",
            "entry": ask,
            "sl": round(ask - 2.0, 3),
            "tp": round(ask + 2.0, 3),
            "created_at_ms": time.time_ns() // 1_000_000,
        }
    ).encode()
    header = sign_signal_header(body, STRATEGY_ID, STRATEGY_SECRET, time.time_ns() // 1_000_000)
    posted = await http.post(
        "/api/v1/signals",
        content=body,
        headers={
            "X-Strategy-Id": STRATEGY_ID,
            "X-Signature": header,
            "Content-Type": "application/json",
        },
    )
    assert posted.status_code == 201, posted.text
    return await http.post(
        f"/api/v1/signals/{STRATEGY_ID}/after-restart/1/decision", json={"decision": "approve"}
    )
