"""The processes of one ``bench.cluster`` arm: a fresh database, a private Redis, the nodes.

``single``    one engine on today's single-node path: no ``TRIPWIRE_NODE_URL`` (quotes go
              straight to the symbol actors in process), no Redis;
``cluster1``  one node in cluster mode: ``TRIPWIRE_NODE_URL`` set, ticks through Redis
              Streams, partitions on Postgres leases;
``cluster2``  two nodes in cluster mode on one Postgres and one Redis.

Every node is ``bench.e2e_engine`` (the real runtime; node 0 also runs the raw echo server), in
the environment ``tripwire run --nodes N`` gives its nodes (``gateway.launcher``), each with its
own port, state folder and log (``<folder>/<tag>-node<i>.log``). Where the machine has a core per
node, node ``i`` is pinned to the ``i``-th core this process may use.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import trio

from bench.e2e import FEED_TOKEN, _cpu_s, start_engine
from gateway.config import Settings
from persistence.db import dsn_with_database
from persistence.embedded import EmbeddedPostgres
from persistence.redis_server import PrivateRedis, free_loopback_port

__all__ = ["ARMS", "PARTITIONS", "Arm", "Databases", "LoopThread", "Node", "open_arm", "scrape"]

ARMS = {"single": 1, "cluster1": 1, "cluster2": 2}
"""Each arm's node count."""

PARTITIONS = Settings().partitions
"""The cluster's partition count (the nodes run with the default)."""

_names = itertools.count(1)


class Databases:
    """A fresh database per arm and step: on the server of ``url`` (its user may create
    databases), else on an embedded Postgres of the harness's own under ``folder``. Never
    ``DATABASE_URL`` implicitly: creating and dropping databases is not for a server the
    harness was not pointed at."""

    def __init__(self, folder: Path, url: str | None) -> None:
        self.folder = folder
        self.url = url
        self.embedded: EmbeddedPostgres | None = None
        self.admin = url or ""

    async def start(self) -> None:
        if not self.url:
            self.embedded = EmbeddedPostgres(self.folder / "pg")
            self.admin = await trio.to_thread.run_sync(self.embedded.start)

    async def close(self) -> None:
        if self.embedded is not None:
            await trio.to_thread.run_sync(self.embedded.close)
            shutil.rmtree(self.folder / "pg", ignore_errors=True)  # ~120 MB: the logs stay

    async def fresh(self) -> str:
        name = f"bench_cluster_{os.getpid()}_{next(_names)}"
        await self._admin(f'CREATE DATABASE "{name}"')
        return dsn_with_database(self.admin, name)

    async def drop(self, dsn: str) -> None:
        name = dsn.split("?", 1)[0].rsplit("/", 1)[1]
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _admin(self, statement: str) -> None:
        async def execute() -> None:
            conn = await asyncpg.connect(self.admin, timeout=10)
            try:
                await conn.execute(statement)
            finally:
                await conn.close()

        # asyncpg needs an asyncio loop: a short-lived one in a thread.
        await trio.to_thread.run_sync(lambda: asyncio.run(execute()))


@dataclass
class Node:
    index: int
    port: int
    process: trio.Process
    http: httpx.AsyncClient
    log: Path
    cpu: int | None = None
    """The core it is pinned to (None: not pinned)."""

    @property
    def device_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/device"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def check_alive(self) -> None:
        if not self.alive:
            raise RuntimeError(
                f"node {self.index} exited with {self.process.returncode} (log: {self.log})"
            )


@dataclass(frozen=True, slots=True)
class LoopThread:
    """A node's main thread (its trio loop: the quote path, the actors, the sockets), read from
    ``/proc/PID/task/PID``: its CPU seconds, and how often it gave up the CPU (voluntary: it
    slept, waiting for a socket or a timer) or was made to (involuntary: preempted while it
    could run). The rest of a node's CPU is its other threads' (the asyncio bridge to Postgres
    and Redis)."""

    cpu_s: float = 0.0
    voluntary: int = 0
    involuntary: int = 0

    @classmethod
    def of(cls, pid: int) -> LoopThread:
        task = Path(f"/proc/{pid}/task/{pid}")
        try:
            status = (task / "status").read_text()
        except OSError:
            return cls(float("nan"))
        switches = {
            key: int(value)
            for key, _, value in (line.partition(":\t") for line in status.splitlines())
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
        }
        return cls(
            _cpu_s(pid, thread=pid),
            switches.get("voluntary_ctxt_switches", 0),
            switches.get("nonvoluntary_ctxt_switches", 0),
        )

    def __add__(self, other: LoopThread) -> LoopThread:
        return LoopThread(
            self.cpu_s + other.cpu_s,
            self.voluntary + other.voluntary,
            self.involuntary + other.involuntary,
        )

    def __sub__(self, other: LoopThread) -> LoopThread:
        return LoopThread(
            self.cpu_s - other.cpu_s,
            self.voluntary - other.voluntary,
            self.involuntary - other.involuntary,
        )


@dataclass
class Arm:
    """The running nodes of one arm (node 0 runs the echo server and takes the feed)."""

    name: str
    nodes: list[Node]
    echo_port: int
    redis: PrivateRedis | None = None
    pinned: dict[str, int] | None = field(default=None)

    @property
    def cluster(self) -> bool:
        return self.redis is not None

    async def metrics(self) -> list[dict[str, float]]:
        """Each live node's ``/metrics`` (a dead node's: empty)."""
        return [await scrape(node) if node.alive else {} for node in self.nodes]

    def cpu_s(self) -> float:
        """CPU seconds (user + system, every thread) the nodes have used, summed."""
        return sum(_cpu_s(node.process.pid) for node in self.nodes if node.alive)

    def loop_thread(self) -> LoopThread:
        """The nodes' main threads (each runs its trio loop), summed: see :class:`LoopThread`."""
        total = LoopThread()
        for node in self.nodes:
            if node.alive:
                total = total + LoopThread.of(node.process.pid)
        return total

    async def wait_partitions(self, timeout_s: float) -> None:
        """Until every partition is served and each live node serves within one of its fair
        share, ceil(partitions / nodes) (a single node: at once)."""
        if not self.cluster:
            return
        live = [n for n in self.nodes if n.alive]
        share = math.ceil(PARTITIONS / len(live))
        with trio.fail_after(timeout_s):
            while True:
                for node in live:
                    node.check_alive()
                owned = [m.get("tripwire_partitions_owned", 0) for m in await self.metrics()]
                owned = [owned[n.index] for n in live]
                if sum(owned) == PARTITIONS and all(abs(o - share) <= 1 for o in owned):
                    return
                await trio.sleep(0.25)

    async def wait_armed(self, target: int, timeout_s: float) -> None:
        """Until the live nodes' books hold at least ``target`` positions between them."""
        with trio.fail_after(timeout_s):
            while True:
                for node in self.nodes:
                    node.check_alive()
                armed = sum(m.get("tripwire_armed_positions", 0) for m in await self.metrics())
                if armed >= target:
                    return
                await trio.sleep(0.25)


async def scrape(node: Node) -> dict[str, float]:
    """A node's ``/metrics`` as {family sample name: value} (the largest value of a labelled
    family); empty when the node does not answer."""
    try:
        text = (await node.http.get("/metrics")).text
    except httpx.TransportError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            out[name] = max(out.get(name, -math.inf), float(value))
    return out


@contextlib.asynccontextmanager
async def open_arm(
    name: str,
    dsn: str,
    folder: Path,
    *,
    tag: str,
    pin: bool,
    log_level: str = "warning",
    ready_timeout_s: float = 120,
) -> AsyncIterator[Arm]:
    """Start arm ``name``'s nodes (and its Redis) on ``dsn``, their files named after ``tag``;
    stop them all on the way out, whatever happened (SIGTERM, SIGKILL after a short grace: the
    database is thrown away)."""
    count = ARMS[name]
    redis = PrivateRedis(folder / f"{tag}-redis") if name != "single" else None
    nodes: list[Node] = []
    arm = Arm(name, nodes, free_loopback_port(), redis)
    try:
        redis_url = ""
        if redis is not None:  # as gateway.launcher: the unix socket, the nodes are local
            await trio.to_thread.run_sync(redis.start)
            redis_url = redis.local_url
        cores = sorted(os.sched_getaffinity(0))
        if pin and len(cores) >= count:
            arm.pinned = {}
        for i in range(count):
            port = free_loopback_port()
            env = {"TRIPWIRE_FEED_TOKEN": FEED_TOKEN, "TRIPWIRE_LOG_LEVEL": log_level}
            if redis is not None:  # the environment gateway.launcher gives each node
                env.update(
                    REDIS_URL=redis_url,
                    TRIPWIRE_NODES="1",
                    TRIPWIRE_EXPECT_NODES=str(count),
                    TRIPWIRE_NODE_URL=f"http://127.0.0.1:{port}",
                    TRIPWIRE_NODE_ID=f"bench-{i}",
                )
            node_name = f"{tag}-node{i}"
            process = await start_engine(
                dsn, folder, port, arm.echo_port if i == 0 else 0, None, name=node_name, env=env
            )
            http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
            node = Node(i, port, process, http, folder / f"{node_name}.log")
            nodes.append(node)
            if arm.pinned is not None:
                node.cpu = cores[i]
                os.sched_setaffinity(process.pid, {cores[i]})
                arm.pinned[f"node{i}"] = cores[i]
        for node in nodes:
            await _wait_up(node, ready_timeout_s)
        yield arm
    finally:
        with trio.CancelScope(shield=True):
            await _stop_all(nodes)
            if redis is not None:
                await trio.to_thread.run_sync(redis.close)


async def _wait_up(node: Node, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while True:
            node.check_alive()
            try:
                if (await node.http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.2)


async def _stop_all(nodes: list[Node], grace_s: float = 5.0) -> None:
    for node in nodes:
        if node.alive:
            node.process.terminate()
    with trio.move_on_after(grace_s):
        for node in nodes:
            await node.process.wait()
    for node in nodes:
        if node.alive:
            node.process.kill()
            await node.process.wait()
        await node.http.aclose()
