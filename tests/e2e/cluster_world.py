"""Several real node processes on loopback, one Postgres, one Redis, and the world around them.

What :mod:`tests.e2e.test_cluster` drives (a test helper, not a test):

* :class:`Nodes`: ``tripwire run`` processes in cluster mode (``TRIPWIRE_NODE_URL``), each its
  own port, sharing the test's database and a private Redis; killed (SIGKILL), frozen (SIGSTOP)
  and stopped (SIGTERM) for real.
* :class:`World`: simulated EAs (``sim.ea``) whose terminals hold positions tagged as the
  engine's (adopted and armed at once), each connected to a random live node and following
  ``moved``; a feeder publishing a deterministic price path to one node's ``/ws/feed``; and
  the brute-force oracle of the quote that first crosses each position's SL or TP.

Every close command any EA receives is recorded with the node it came from and how far the feed
had got, so a test can say: each position closed exactly once, never before its oracle quote,
and late only if its touch fell inside a failover.
"""

from __future__ import annotations

import functools
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import open_websocket_url

from actors.directory import partition_of
from engine.instruments import DEFAULT_INSTRUMENTS
from gateway.auth import hash_password
from persistence.db import Database
from protocol.codec import feed_codec
from protocol.common import Side
from protocol.device import CloseCommand, TerminalPosition
from protocol.feed import Quote, QuoteBatch
from protocol.ids import client_id
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.conftest import FEED_TOKEN, free_port

__all__ = ["JWT_SECRET", "Close", "Nodes", "World", "rest"]

JWT_SECRET = "cluster-test-jwt-secret-0123456789abcdef"
SYMBOL = "XAUUSD"
SPREAD = 0.3
FEED = feed_codec("msgpack")
DIGITS = DEFAULT_INSTRUMENTS[SYMBOL].digits


def _port(ea: SimulatedEA) -> int:
    """The port of the node ``ea`` is connected to (where its last redirect led)."""
    return int(ea.redirects.target.split(":")[2].split("/")[0])


class Nodes:
    """``count`` cluster nodes on free loopback ports (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        dsn: str,
        redis_url: str,
        folder: Path,
        count: int,
        *,
        lease_s: float = 3.0,
    ) -> None:
        self.db, self.dsn, self.redis_url, self.folder = db, dsn, redis_url, folder
        self.ports = [free_port() for _ in range(count)]
        self.lease_s = lease_s
        self.processes: list[trio.Process | None] = [None] * count
        self.frozen: set[int] = set()

    def node_id(self, i: int) -> str:
        return f"node-{i}"

    def http(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def ws(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.ports[i]}"

    def index_of_port(self, port: int) -> int:
        return self.ports.index(port)

    def live(self) -> list[int]:
        """Nodes running and not frozen."""
        return [
            i
            for i, p in enumerate(self.processes)
            if p is not None and p.returncode is None and i not in self.frozen
        ]

    async def start(self, i: int) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.dsn,
            "REDIS_URL": self.redis_url,
            "TRIPWIRE_PORT": str(self.ports[i]),
            "TRIPWIRE_NODE_URL": self.http(i),
            "TRIPWIRE_NODE_ID": self.node_id(i),
            "TRIPWIRE_STATE_DIR": str(self.folder / "state"),
            "TRIPWIRE_FEED": "none",
            "TRIPWIRE_FEED_TOKEN": FEED_TOKEN,
            "TRIPWIRE_PAPER_DEVICE": "false",
            "TRIPWIRE_DEMO_STRATEGY": "false",
            "TRIPWIRE_JWT_SECRET": JWT_SECRET,
            "TRIPWIRE_LEASE_S": str(self.lease_s),
            "TRIPWIRE_STREAM_KEEP_S": "60",
            # Partition snapshots and compaction run during the test: a claim then recovers
            # from a snapshot and the journal after it, not from the journal alone.
            "TRIPWIRE_SNAPSHOT_INTERVAL_S": "2",
            "TRIPWIRE_DEVICE_HEARTBEAT_S": "1",
            "TRIPWIRE_DEVICE_STALE_AFTER_S": "3",
            "TRIPWIRE_MAX_WS_PER_ADDRESS": "0",
            "TRIPWIRE_MAX_HTTP_PER_ADDRESS": "0",
            "TRIPWIRE_LOG_FORMAT": "json",
        }
        log = os.open(self.folder / f"node{i}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.processes[i] = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cli", "run"], env=env, stdout=log, stderr=log
            )
        finally:
            os.close(log)

    def signal(self, i: int, signum: signal.Signals) -> None:
        process = self.processes[i]
        assert process is not None
        process.send_signal(signum)
        if signum is signal.SIGSTOP:
            self.frozen.add(i)
        elif signum is signal.SIGCONT:
            self.frozen.discard(i)

    async def wait_exit(self, i: int, timeout_s: float = 30) -> int | None:
        process = self.processes[i]
        assert process is not None
        with trio.move_on_after(timeout_s):
            return await process.wait()
        return None

    async def close(self) -> None:
        for i, process in enumerate(self.processes):
            if process is not None and process.returncode is None:
                if i in self.frozen:
                    process.send_signal(signal.SIGCONT)
                process.kill()
                with trio.move_on_after(10):
                    await process.wait()

    async def owners(self) -> dict[str, int]:
        """Live owner -> partitions held (a lapsed lease counts for nobody)."""
        rows = await self.db.fetch(
            "SELECT owner, count(*) AS n FROM partitions"
            " WHERE owner IS NOT NULL AND expires_at > clock_timestamp() GROUP BY owner"
        )
        return {r["owner"]: int(r["n"]) for r in rows}

    async def wait_owned_by(self, nodes: list[int], timeout_s: float = 90) -> None:
        """Until ``nodes`` own every partition between them, each within one of an even share
        (the balancing's hysteresis)."""
        names = {self.node_id(i) for i in nodes}
        with trio.fail_after(timeout_s):
            while True:
                owners = await self.owners()
                if (
                    set(owners) == names
                    and sum(owners.values()) == 64
                    and all(abs(n - 64 / len(nodes)) <= 1.5 for n in owners.values())
                ):
                    return
                await trio.sleep(0.3)

    async def owner_node(self, user_id: str) -> int | None:
        """The node index whose lease holds ``user_id``'s partition now."""
        owner = await self.db.fetchval(
            "SELECT owner FROM partitions WHERE id = $1 AND expires_at > clock_timestamp()",
            partition_of(user_id),
        )
        for i in range(len(self.ports)):
            if owner == self.node_id(i):
                return i
        return None

    async def metric(self, i: int, name: str) -> float:
        """The sum of every sample of ``name`` on node ``i``'s ``/metrics``."""
        async with httpx.AsyncClient(base_url=self.http(i), timeout=5) as http:
            text = (await http.get("/metrics")).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((name + " ", name + "{"))
        )


async def rest(
    nodes: Nodes,
    token: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    node: int | None = None,
) -> httpx.Response:
    """A REST call to ``node`` (default: a random live one) that follows a ``307`` to the
    node serving the user, sending the bearer token again (clients drop it across hosts), and
    waits out a ``503`` while nobody serves the partition (bounded)."""
    url = nodes.http(random.choice(nodes.live()) if node is None else node) + path
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=10) as http:
        with trio.fail_after(30):
            while True:
                response = await http.request(method, url, json=body, headers=headers)
                if response.status_code == 307:
                    url = response.headers["Location"]
                elif response.status_code == 503 and "Retry-After" in response.headers:
                    await trio.sleep(0.2)
                else:
                    return response


@dataclass(frozen=True)
class Close:
    device: str
    ticket: int
    command_id: str
    node_port: int
    arrived: float
    """trio time."""
    feed_index: int
    """How many quotes the feeder had sent when it arrived."""


@dataclass
class World:
    """Devices with positions, a price path and its oracle (see the module docstring)."""

    devices: int = 9
    per_device: int = 12
    quotes: int = 1200
    rate: float = 50.0
    seed: int = 7
    device_ids: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    path: list[tuple[float, float]] = field(default_factory=list)
    positions: dict[tuple[str, int], tuple[Side, float, float]] = field(default_factory=dict)
    oracle: dict[tuple[str, int], int] = field(default_factory=dict)
    """(device, ticket) -> index of the first quote of the path crossing its SL or TP."""
    closes: list[Close] = field(default_factory=list)
    welcomes: list[tuple[str, int, float]] = field(default_factory=list)
    """(device, node port, trio time) of every welcome."""
    redirects_followed: int = 0
    """``moved`` frames the EAs followed to reach the node serving them."""
    sent: int = 0
    sent_at: list[float] = field(default_factory=list)
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.users = [f"cu-{rng.randrange(16**8):08x}" for _ in range(self.devices)]
        self.device_ids = [f"cd-{i:02d}" for i in range(self.devices)]
        self.secrets = [f"secret-{i:02d}-" + "s" * 24 for i in range(self.devices)]
        for k in range(self.quotes):
            # Two slow swings and a little noise: every level gets crossed at its own time.
            mid = 1950.0 + 2.5 * math.sin(k / 90) + 1.2 * math.sin(k / 23) + rng.uniform(-0.1, 0.1)
            bid = round(mid, DIGITS)
            self.path.append((bid, round(bid + SPREAD, DIGITS)))
        bid0, ask0 = self.path[0]
        for d in self.device_ids:
            for t in range(self.per_device):
                side = Side.BUY if t % 2 else Side.SELL
                entry = ask0 if side is Side.BUY else bid0
                sign = 1 if side is Side.BUY else -1
                sl = round(entry - sign * rng.uniform(0.8, 5.0), DIGITS)
                tp = round(entry + sign * rng.uniform(0.8, 5.0), DIGITS)
                self.positions[(d, 1000 + t)] = (side, sl, tp)
        for key, (side, sl, tp) in self.positions.items():
            for k, (bid, ask) in enumerate(self.path):
                crossed = (bid <= sl or bid >= tp) if side is Side.BUY else (ask >= sl or ask <= tp)
                if crossed:
                    self.oracle[key] = k
                    break
        self.prices[SYMBOL] = self.path[0]

    def user_of(self, device: str) -> str:
        return self.users[self.device_ids.index(device)]

    async def seed_database(self, db: Database) -> None:
        """Users and devices straight into Postgres (argon2 through the API is slow)."""
        password = hash_password("cluster-password")
        rows = list(enumerate(zip(self.device_ids, self.users, strict=True)))
        await db.executemany(
            "INSERT INTO users (id, username, password_hash, settings) VALUES ($1, $2, $3, $4)",
            [(u, u, password, {}) for u in self.users],
        )
        await db.executemany(
            "INSERT INTO devices (id, user_id, name, account_login, broker)"
            " VALUES ($1, $2, 'cluster', $3, 'test')",
            [(d, u, str(i)) for i, (d, u) in rows],
        )
        await db.executemany(
            "INSERT INTO device_secrets (device_id, secret) VALUES ($1, $2)",
            [(d, s.encode()) for d, s in zip(self.device_ids, self.secrets, strict=True)],
        )

    def terminal(self, device: str) -> PaperTerminal:
        terminal = PaperTerminal(
            DEFAULT_INSTRUMENTS, self.prices.get, PaperConfig(broker_stops=False), login=device
        )
        bid0, ask0 = self.path[0]
        for (d, ticket), (side, sl, tp) in self.positions.items():
            if d != device:
                continue
            terminal.positions[ticket] = TerminalPosition(
                ticket=ticket,
                symbol=SYMBOL,
                side=side,
                volume=0.1,
                open_price=ask0 if side is Side.BUY else bid0,
                open_time_ms=0,
                sl=sl,
                tp=tp,
                # The engine's tag: a found position it opened is watched at once.
                comment=client_id(f"C{device}{ticket}"),
            )
        return terminal

    async def run_device(self, nodes: Nodes, index: int, rng: random.Random) -> None:
        """One terminal, connected to a random live node, again and again (following moved).

        The same terminal across connections: its positions and the command ids it executed
        (a repeated id is answered, not executed again)."""
        device, secret = self.device_ids[index], self.secrets[index]
        terminal = self.terminal(device)
        while True:
            live = nodes.live()
            if not live:
                await trio.sleep(0.2)
                continue
            port = nodes.ports[rng.choice(live)]
            ea = SimulatedEA(f"ws://127.0.0.1:{port}/ws/device", device, secret, terminal)
            ea.on_command = functools.partial(self._on_command, device, ea)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(ea.run)
                    if ea.welcome is not None:
                        self.welcomes.append((device, _port(ea), trio.current_time()))
                        self.redirects_followed += len(ea.moved)
            except Exception:  # a node that is gone or frozen: another one, shortly
                pass
            await trio.sleep(0.3)

    def _on_command(self, device: str, ea: SimulatedEA, command: Any, _arrived_ns: int) -> None:
        if isinstance(command, CloseCommand):
            self.closes.append(
                Close(
                    device,
                    command.ticket,
                    command.command_id,
                    _port(ea),
                    trio.current_time(),
                    self.sent,
                )
            )

    async def feed(self, nodes: Nodes, node: int, until: int | None = None) -> None:
        """Publish the path at ``rate`` to ``node``'s ``/ws/feed``, from where it stands up to
        ``until`` (the end by default); each quote when it is due (a late one at once)."""
        url = f"{nodes.ws(node)}/ws/feed?token={FEED_TOKEN}"
        stop = len(self.path) if until is None else until
        async with open_websocket_url(url, subprotocols=["tripwire.v1.msgpack"]) as ws:
            start = trio.current_time() - self.sent / self.rate
            while self.sent < stop:
                await trio.sleep_until(start + self.sent / self.rate)
                bid, ask = self.path[self.sent]
                self.prices[SYMBOL] = (bid, ask)
                quote = Quote(symbol=SYMBOL, bid=bid, ask=ask, time_ms=time.time_ns() // 1_000_000)
                await ws.send_message(FEED.encode(QuoteBatch(quotes=[quote])))
                self.sent_at.append(trio.current_time())
                self.sent += 1

    def distinct_closes(self) -> dict[tuple[str, int], set[str]]:
        out: dict[tuple[str, int], set[str]] = {}
        for c in self.closes:
            out.setdefault((c.device, c.ticket), set()).add(c.command_id)
        return out

    def first_close(self) -> dict[tuple[str, int], Close]:
        out: dict[tuple[str, int], Close] = {}
        for c in self.closes:
            out.setdefault((c.device, c.ticket), c)
        return out

    async def wait_closed(self, timeout_s: float = 30) -> None:
        """Until every position the oracle crosses has a close (bounded)."""
        with trio.move_on_after(timeout_s):
            while set(self.oracle) - set(self.distinct_closes()):
                await trio.sleep(0.2)
