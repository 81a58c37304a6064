"""The composition root: every long-lived part of ``tripwire run``, built once and typed.

:func:`open_services` builds them, in an order that needs no cycle:

1. Postgres: ``DATABASE_URL``, or an embedded server under ``<state_dir>/pg``; migrations.
2. The journal writer, its reader and the snapshot store; recovery (the newest snapshot plus
   the journal after it, the same fold a crash restart uses).
3. The registry (users, devices), with the demo user, its paper device and (if configured) an
   admin created on first start; Redis, if configured (nonces and the read cache).
4. The node (actors) over the recovered state; the notifier listening to it; the gateway's
   context and app around both.

The journal reports outages to the node's alert fan-out, and the node appends to the journal:
the journal is built first with an :class:`AlertRelay`, which the node is bound to once it
exists. :func:`gateway.runtime.serve` runs what this builds; leaving the block closes Redis,
the database and the embedded server, in that order.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from actors.clock import WallClock
from actors.node import Node, NodeConfig
from engine.instruments import DEFAULT_INSTRUMENTS
from engine.journal_index import encode_indexed_batch
from engine.quotes import QuoteLimits
from engine.records import Record
from engine.state import EngineState
from engine.user import Timing
from gateway.app import TripwireApp, create_app
from gateway.auth import HashingGate, LoginLimiter, TokenIssuer
from gateway.cluster import ClusterNode, FenceRelay, RecordRouter, open_cluster
from gateway.config import Settings, parse_strategies
from gateway.context import GatewayContext, NonceStore
from gateway.demo import DEMO_STRATEGY, Demo, ensure_demo
from gateway.edge import EdgeGuard
from gateway.memory_nonces import MemoryNonces
from gateway.metrics import Metrics
from gateway.notifications import NotificationStore
from gateway.notifier import Notifier, NotifierConfig
from gateway.placement import AllLocal, Ownership
from gateway.registry import Registry
from gateway.signal_source import SharedSignals
from persistence.bridge import Bridge, open_bridge
from persistence.cache import ReadCache
from persistence.db import Database, open_database
from persistence.embedded import EmbeddedPostgres
from persistence.journal_reader import JournalReader
from persistence.journal_writer import JournalWriter
from persistence.migrator import migrate
from persistence.partition_journal import PartitionJournalWriter
from persistence.projections import make_projection
from persistence.recovery import Recovered, load_state
from persistence.redis_link import RedisLink
from persistence.redis_nonces import RedisNonceCache
from persistence.signal_store import SignalStore
from persistence.snapshot_store import SnapshotStore
from protocol.common import Alert
from protocol.errors import ConfigError
from protocol.nonces import MemoryNonceCache

__all__ = ["AlertRelay", "Services", "open_services", "postgres_dsn", "secret_file", "timing_of"]


@dataclass(frozen=True, slots=True)
class Services:
    """What ``tripwire run`` is made of (see the module docstring for the order)."""

    settings: Settings
    clock: WallClock
    dsn: str
    """The database's DSN (the snapshotter process connects to it on its own)."""
    database: Database
    journal: JournalWriter[Record] | PartitionJournalWriter[Record]
    """The single node's journal, or a cluster node's fenced partition journal."""
    journal_reader: JournalReader
    snapshots: SnapshotStore | None
    """The single node's snapshots (None in a cluster: each partition snapshots itself)."""
    recovered: Recovered
    registry: Registry
    demo: Demo | None
    """The demo user and its paper device; None when the demo is off."""
    redis: RedisLink | None
    node: Node
    cluster: ClusterNode | None
    """This node's part of a cluster (None: a single node serving every user)."""
    notifier: Notifier
    gateway: GatewayContext
    app: TripwireApp
    metrics: Metrics
    edge: EdgeGuard


class AlertRelay:
    """The journal's alert sink, built before the node that fans alerts out.

    Alerts raised before :meth:`bind` (none in practice: the journal alerts only while its
    writer runs, which starts after the node is built) are kept and handed over on binding.
    """

    def __init__(self) -> None:
        self._publish: Callable[[list[Alert]], None] | None = None
        self._early: list[Alert] = []

    def __call__(self, alert: Alert) -> None:
        if self._publish is None:
            self._early.append(alert)
        else:
            self._publish([alert])

    def bind(self, publish: Callable[[list[Alert]], None]) -> None:
        self._publish = publish
        early, self._early = self._early, []
        if early:
            publish(early)


def timing_of(settings: Settings) -> Timing:
    """The user cores' retry rules from the settings (the other deadlines keep their defaults)."""
    return Timing(
        max_close_attempts=settings.close_max_attempts,
        retry_base=settings.retry_backoff_ms,
        retry_cap=settings.retry_backoff_max_ms,
    )


def secret_file(path: Path, nbytes: int = 48) -> bytes:
    """A secret kept in the state dir (created once, readable by the owner only)."""
    if path.exists():
        return path.read_bytes().strip()
    value = secrets.token_urlsafe(nbytes).encode()
    path.write_bytes(value)
    path.chmod(0o600)
    return value


@asynccontextmanager
async def postgres_dsn(settings: Settings, state_dir: Path) -> AsyncIterator[str]:
    """The DSN of ``DATABASE_URL``, or of an embedded server started (and stopped) here."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    server = EmbeddedPostgres(state_dir / "pg")
    structlog.get_logger().info(
        "starting the embedded Postgres", component="runtime", directory=str(state_dir / "pg")
    )
    try:
        yield await trio.to_thread.run_sync(server.start)
    finally:
        await trio.to_thread.run_sync(server.close)


@asynccontextmanager
async def _redis(
    settings: Settings, bridge: Bridge, started_ms: int
) -> AsyncIterator[tuple[NonceStore, ReadCache | None, RedisLink | None]]:
    """The nonce cache, the read cache and the Redis link (memory-only without Redis).

    ``started_ms`` is when the in-process nonce memory starts to watch (see MemoryNonces).
    """
    if not settings.redis_url:
        yield MemoryNonces(trusted_since_ms=started_ms), None, None
        return
    link = await RedisLink.open(bridge, settings.redis_url)
    structlog.get_logger().info(
        "using Redis", component="runtime", url=settings.redis_url.split("@")[-1]
    )
    try:
        # The local memory's own start needs no rule here: it is consulted alone only in an
        # outage, and RedisNonceCache then vouches from the outage's start, which is later.
        yield RedisNonceCache(link, MemoryNonceCache(1_000_000)), ReadCache(link), link
    finally:
        await link.aclose()


async def _notifier(settings: Settings, db: Database, node: Node, clock: WallClock) -> Notifier:
    """The notifier, with every user's channels loaded, listening to the node's actors."""
    store = NotificationStore(db)
    await store.load()
    notifier = Notifier(
        store,
        node.instruments,
        clock,
        NotifierConfig(
            queue=settings.notify_queue,
            workers=settings.notify_workers,
            timeout_s=settings.notify_timeout_s,
            attempts=settings.notify_attempts,
            backoff_s=settings.notify_backoff_s,
            backoff_cap_s=settings.notify_backoff_cap_s,
            telegram_api=settings.notify_telegram_api,
            allow_internal=settings.notify_private_urls,
        ),
    )
    node.notify = notifier.offer
    node.on_alerts(notifier.offer_alerts)
    return notifier


@asynccontextmanager
async def open_services(
    settings: Settings, ownership: Ownership | None = None
) -> AsyncIterator[Services]:
    """Build every part of the engine from ``settings``; nothing runs yet (see
    :func:`gateway.runtime.serve`). Leaving the block releases what was opened here.

    ``ownership`` says which node serves each user (``gateway.placement``); None: this one
    serves everyone (a single node)."""
    state_dir = Path(settings.state_dir)
    await trio.Path(state_dir).mkdir(parents=True, exist_ok=True)
    clock = WallClock()
    cluster_mode = settings.node_url is not None
    async with (
        postgres_dsn(settings, state_dir) as dsn,
        open_bridge() as bridge,
        open_database(bridge, dsn) as db,
    ):
        await migrate(db)
        instruments = DEFAULT_INSTRUMENTS
        alerts = AlertRelay()
        router = RecordRouter(settings.partitions)
        fences = FenceRelay()
        journal: JournalWriter[Record] | PartitionJournalWriter[Record]
        if cluster_mode:
            # Each partition is recovered when this node claims it (gateway.cluster): the
            # node starts empty, and its records go to the fenced partition journal.
            journal = PartitionJournalWriter(
                db,
                encode_indexed_batch,
                make_projection(instruments),
                router,
                on_alert=alerts,
                on_fenced=fences,
            )
            reader = JournalReader(db)
            snapshots = None
            recovered = Recovered(EngineState(), 0, 0, 0.0)
        else:
            journal = JournalWriter(
                db, encode_indexed_batch, make_projection(instruments), on_alert=alerts
            )
            reader = JournalReader(db)
            snapshots = SnapshotStore(db, writer=journal)
            recovered = await load_state(reader, snapshots)
        registry = Registry(db)
        await registry.load()
        strategies = parse_strategies(settings.strategies)
        if settings.demo_strategy:
            strategies.setdefault(DEMO_STRATEGY, [secret_file(state_dir / "demo-strategy.key")])
        demo = await ensure_demo(registry, settings)
        jwt_secret = (
            settings.jwt_secret.encode()
            if settings.jwt_secret
            else secret_file(state_dir / "jwt.key")
        )
        async with (
            _redis(settings, bridge, clock.now_ms()) as (nonces, cache, redis),
            AsyncExitStack() as stack,
        ):
            node = Node(
                journal=journal,
                directory=registry,
                state=recovered.state,
                clock=clock,
                instruments=instruments,
                # The welcome tells the EA heartbeat_s and device_stale_ms; the gateway pings
                # and closes (4004) by them.
                config=NodeConfig(
                    quote_limits=QuoteLimits(max_ahead_ms=settings.quote_max_ahead_ms),
                    heartbeat_s=settings.device_heartbeat_s,
                    device_stale_ms=settings.device_stale_after_s * 1000,
                    timing=timing_of(settings),
                ),
            )
            alerts.bind(node.publish_alerts)
            router.bind(node)
            cluster = None
            if cluster_mode:
                if redis is None:
                    raise ConfigError(
                        "cluster mode (TRIPWIRE_NODE_URL) needs Redis: set REDIS_URL",
                        variable="REDIS_URL",
                    )
                assert isinstance(journal, PartitionJournalWriter)
                cluster = await stack.enter_async_context(
                    open_cluster(settings, db, redis, node, journal, alerts)
                )
                node.gate = cluster
                node.speaks_for_market = cluster.speaks_for_market
                fences.bind(cluster.on_fenced)
                ownership = cluster
            notifier = await _notifier(settings, db, node, clock)
            metrics = Metrics()
            node.probes.fire_latency = metrics.observe_fire
            ctx = GatewayContext(
                settings=settings,
                node=node,
                registry=registry,
                nonces=nonces,
                tokens=TokenIssuer(jwt_secret, settings.jwt_ttl_s),
                clock=clock,
                journal=journal,
                db=db,
                cache=cache,
                strategies=strategies,
                limiter=LoginLimiter(
                    settings.login_burst,
                    settings.login_refill_s,
                    settings.login_address_burst,
                    settings.login_address_refill_s,
                ),
                hashing=HashingGate(settings.login_max_hashing),
                metrics=metrics,
                journal_writer=journal,
                notifier=notifier,
                ownership=ownership if ownership is not None else AllLocal(),
                # A cluster's nodes share signals through Postgres (gateway.signal_source).
                quote_sink=None if cluster is None else cluster.offer_quotes,
                cluster_metrics=None if cluster is None else cluster.metrics,
                signal_source=(
                    SharedSignals(node, SignalStore(db)) if settings.node_url is not None else None
                ),
            )
            app = create_app(ctx)
            yield Services(
                settings=settings,
                clock=clock,
                dsn=dsn,
                database=db,
                journal=journal,
                journal_reader=reader,
                snapshots=snapshots,
                recovered=recovered,
                registry=registry,
                demo=demo,
                redis=redis,
                node=node,
                cluster=cluster,
                notifier=notifier,
                gateway=ctx,
                app=app,
                metrics=metrics,
                edge=app.edge,
            )
