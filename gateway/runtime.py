"""``tripwire run``: the whole engine in one trio run.

Start-up, in order (each step's failure stops the start with a clear message):

1. Postgres: ``DATABASE_URL``, or an embedded server under ``<state_dir>/pg``; migrations.
2. Recovery: the newest snapshot plus the journal after it (the same fold a crash restart uses);
   every in-flight command is then marked for reconciliation by the node.
3. The registry (users, devices), with the demo user, its paper device and (if configured) an
   admin created on first start.
4. The node (actors), the journal writer, the notifier, the gateway on Hypercorn, the feed,
   the paper device, the demo strategy, and the periodic snapshotter (a separate process).

SIGINT or SIGTERM: stop intake (the server stops accepting), let the actors drain, flush the
journal, take a final snapshot, stop.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from actors import heap
from actors.clock import WallClock
from actors.feeds import random_walk, replay, websocket_feed
from actors.node import Node, NodeConfig
from actors.paper import run_paper_device
from engine.instruments import DEFAULT_INSTRUMENTS
from engine.journal_index import encode_indexed_batch
from engine.quotes import QuoteLimits
from engine.user import Timing
from gateway.app import create_app
from gateway.auth import HashingGate, LoginLimiter, TokenIssuer
from gateway.config import Settings, is_loopback, parse_strategies
from gateway.context import GatewayContext
from gateway.demo import DEMO_DEVICE, DEMO_STRATEGY, ensure_demo, run_demo_strategy
from gateway.front import serve_front
from gateway.notifications import NotificationStore
from gateway.notifier import Notifier, NotifierConfig
from gateway.registry import Registry
from gateway.ws_device import serve_device
from gateway.ws_feed import serve_feed
from persistence.bridge import open_bridge
from persistence.db import open_database
from persistence.embedded import EmbeddedPostgres
from persistence.journal_reader import JournalReader
from persistence.journal_writer import JournalWriter
from persistence.migrator import migrate
from persistence.projections import make_projection
from persistence.recovery import load_state
from persistence.snapshot_store import SnapshotStore
from persistence.snapshotter import SnapshotProcess, take_snapshot
from protocol.errors import StorageError
from protocol.nonces import MemoryNonceCache, check_vouched

__all__ = ["MemoryNonces", "serve", "timing_of"]


class MemoryNonces:
    """The in-process nonce cache behind the async interface the handshake uses.

    Without Redis this memory is all the node has, and it starts empty: a hello used before a
    restart is unknown to it. So it vouches only for hellos signed after it was created
    (``trusted_since_ms``, the node's start; ``protocol.nonces.check_vouched``): an older one,
    a captured hello replayed across the restart, is refused with ``stale_hello``, and an
    honest EA, which signs every hello when it connects, gets in at once. That costs no
    database write per handshake, where a nonce table in Postgres would cost one per connect.
    """

    def __init__(self, max_entries: int = 1_000_000, *, trusted_since_ms: int = 0) -> None:
        self.cache = MemoryNonceCache(max_entries, trusted_since_ms=trusted_since_ms)
        self.degraded_total = 0
        """Checks that fell back to this memory from a shared store: none, there is none."""

    async def check_and_add(
        self, key: str, now_ms: int, ttl_ms: int, *, signed_ms: int | None = None
    ) -> bool:
        if signed_ms is not None:
            check_vouched(signed_ms, self.cache.trusted_since_ms, now_ms)
        return self.cache.check_and_add(key, now_ms, ttl_ms)


def _secret_file(path: Path, nbytes: int = 48) -> bytes:
    """A secret kept in the state dir (created once, readable by the owner only)."""
    if path.exists():
        return path.read_bytes().strip()
    value = secrets.token_urlsafe(nbytes).encode()
    path.write_bytes(value)
    path.chmod(0o600)
    return value


async def _snapshots(
    snapshots: SnapshotProcess, interval_s: float, scope: trio.CancelScope, log: Any
) -> None:
    """Ask the snapshotter process for a snapshot every ``interval_s`` (its own core, at idle
    priority, not the tick path's), until ``scope`` is cancelled."""
    with scope:
        while True:
            await trio.sleep(interval_s)
            try:
                await snapshots.take()
            except (OSError, StorageError) as exc:
                log.warning("snapshot failed; the journal keeps everything", error=str(exc))


async def _final_snapshot(snapshots: SnapshotProcess, db: Any, log: Any) -> None:
    """The shutdown snapshot: by the snapshotter process, which holds the state already; in
    this process, from the database, if it cannot."""
    try:
        await snapshots.take()
    except (OSError, StorageError) as exc:
        log.warning("the snapshotter failed at shutdown; snapshotting here", error=str(exc))
        await take_snapshot(JournalReader(db), SnapshotStore(db))


def timing_of(settings: Settings) -> Timing:
    """The user cores' retry rules from the settings (the other deadlines keep their defaults)."""
    return Timing(
        max_close_attempts=settings.close_max_attempts,
        retry_base=settings.retry_backoff_ms,
        retry_cap=settings.retry_backoff_max_ms,
    )


def _hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.websocket_max_message_size = max(settings.device_max_frame, settings.client_max_frame)
    config.websocket_ping_interval = 20.0
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 5.0
    if settings.tls_cert and settings.tls_key:
        config.certfile, config.keyfile = settings.tls_cert, settings.tls_key
    return config


async def serve(
    settings: Settings, *, task_status: trio.TaskStatus[GatewayContext] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the engine until SIGINT/SIGTERM (or until cancelled)."""
    log = structlog.get_logger().bind(component="runtime")
    state_dir = Path(settings.state_dir)
    await trio.Path(state_dir).mkdir(parents=True, exist_ok=True)
    if settings.data_dir:
        os.environ["TRIPWIRE_DATA_DIR"] = settings.data_dir
    server: EmbeddedPostgres | None = None
    dsn = settings.database_url
    if dsn is None:
        server = EmbeddedPostgres(state_dir / "pg")
        log.info("starting the embedded Postgres", directory=str(state_dir / "pg"))
        dsn = await trio.to_thread.run_sync(server.start)
    try:
        async with open_bridge() as bridge, open_database(bridge, dsn) as db:
            await migrate(db)
            await _run(settings, log, state_dir, bridge, db, dsn, task_status)
    finally:
        if server is not None:
            await trio.to_thread.run_sync(server.close)


async def _run(
    settings: Settings,
    log: Any,
    state_dir: Path,
    bridge: Any,
    db: Any,
    dsn: str,
    task_status: trio.TaskStatus[GatewayContext],
) -> None:
    clock = WallClock()
    instruments = DEFAULT_INSTRUMENTS
    node_ref: list[Node] = []

    def on_journal_alert(alert: Any) -> None:
        if node_ref:
            node_ref[0].publish_alerts([alert])

    journal: JournalWriter[Any] = JournalWriter(
        db, encode_indexed_batch, make_projection(instruments), on_alert=on_journal_alert
    )
    recovered = await load_state(JournalReader(db), SnapshotStore(db))
    registry = Registry(db)
    await registry.load()
    strategies = parse_strategies(settings.strategies)
    if settings.demo_strategy:
        strategies.setdefault(DEMO_STRATEGY, [_secret_file(state_dir / "demo-strategy.key")])
    demo = await ensure_demo(registry, settings)
    nonces, cache, redis_link = await _redis(settings, bridge, log, clock.now_ms())
    jwt_secret = (
        settings.jwt_secret.encode() if settings.jwt_secret else _secret_file(state_dir / "jwt.key")
    )
    node = Node(
        journal=journal,
        directory=registry,
        state=recovered.state,
        clock=clock,
        instruments=instruments,
        # The welcome tells the EA heartbeat_s and device_stale_ms; the gateway pings and
        # closes (4004) by them.
        config=NodeConfig(
            quote_limits=QuoteLimits(max_ahead_ms=settings.quote_max_ahead_ms),
            heartbeat_s=settings.device_heartbeat_s,
            device_stale_ms=settings.device_stale_after_s * 1000,
            timing=timing_of(settings),
        ),
    )
    node_ref.append(node)
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
    )
    ctx.extras["journal"] = journal
    notifier = await _notifier(settings, db, node, clock)
    ctx.extras["notifier"] = notifier
    ctx.limiter = LoginLimiter(
        settings.login_burst,
        settings.login_refill_s,
        settings.login_address_burst,
        settings.login_address_refill_s,
    )
    ctx.hashing = HashingGate(settings.login_max_hashing)
    app = create_app(ctx)
    metrics = ctx.extras["metrics"]
    node.fire_probe = metrics.observe_fire
    stop_serving = trio.Event()
    # The snapshotter process ends with this block, however it ends.
    async with (
        SnapshotProcess(
            dsn, log_format=settings.log_format, log_level=settings.log_level
        ) as snapshots,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(journal.run)
        node_scope = trio.CancelScope()

        async def run_node(*, task_status: trio.TaskStatus[Node]) -> None:
            with node_scope:
                await node.run(task_status=task_status)

        await nursery.start(run_node)
        await nursery.start(notifier.run)
        heap.settle(settings.gc_gen0)  # the recovered state is long-lived: see actors/heap.py
        _start_feed(nursery, settings, node, clock)
        if settings.paper_device and demo is not None:
            nursery.start_soon(run_paper_device, node, DEMO_DEVICE)
        if settings.demo_strategy and demo is not None:
            nursery.start_soon(run_demo_strategy, ctx, demo)
        periodic = trio.CancelScope()
        nursery.start_soon(_snapshots, snapshots, settings.snapshot_interval_s, periodic, log)
        hypercorn = _hypercorn_config(settings)
        if settings.ws_direct:
            # The tick path's sockets off the HTTP stack (gateway.front, gateway.wsdirect).
            direct = {
                "/ws/device": functools.partial(serve_device, ctx),
                "/ws/feed": functools.partial(serve_feed, ctx),
            }
            await nursery.start(
                functools.partial(
                    serve_front,
                    app,
                    hypercorn,
                    host=settings.host,
                    port=settings.port,
                    direct=direct,
                    max_message=hypercorn.websocket_max_message_size,
                    edge=ctx.extras.get("edge"),
                    shutdown_trigger=stop_serving.wait,
                )
            )
        else:
            await nursery.start(
                functools.partial(
                    hypercorn_serve, app, hypercorn, shutdown_trigger=stop_serving.wait
                )
            )
        ctx.ready = True
        scheme = "https" if settings.tls_cert else "http"
        url = f"{scheme}://{settings.host}:{settings.port}"
        log.info(
            "tripwire is running",
            dashboard=url + "/",
            api=url + "/docs",
            metrics=url + "/metrics",
            recovered_positions=len(recovered.state.positions),
            replayed_records=recovered.records,
        )
        if demo is not None:
            # The password only where nobody else can reach the engine (and its output).
            password = (
                settings.demo_password if is_loopback(settings.host) else "(TRIPWIRE_DEMO_PASSWORD)"
            )
            print(
                f"\n  Tripwire is running: open {url}/ and log in as "
                f"{settings.demo_user} / {password}\n"
                f"  API docs: {url}/docs   metrics: {url}/metrics   stop: Ctrl-C\n",
                flush=True,
            )
        task_status.started(ctx)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("shutting down", signal=signal.Signals(signum).name)
                break
        ctx.ready = False
        stop_serving.set()  # stop intake first
        await node.shutdown()
        with trio.move_on_after(10):
            await journal.flush()
            periodic.cancel()
            await _final_snapshot(snapshots, db, log)
        if redis_link is not None:
            await redis_link.aclose()
        nursery.cancel_scope.cancel()
    log.info("tripwire stopped")


async def _notifier(settings: Settings, db: Any, node: Node, clock: WallClock) -> Notifier:
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


def _start_feed(nursery: trio.Nursery, settings: Settings, node: Node, clock: WallClock) -> None:
    feed = settings.feed
    if feed == "replay":
        nursery.start_soon(
            functools.partial(
                replay,
                node.offer_quotes,
                clock,
                speed=settings.replay_speed,
                loop=True,
                start_s=settings.replay_start_s,
            )
        )
    elif feed == "random":
        nursery.start_soon(
            functools.partial(
                random_walk, node.offer_quotes, clock, "XAUUSD", 1950.0, 0.3, digits=3
            )
        )
        nursery.start_soon(
            functools.partial(
                random_walk, node.offer_quotes, clock, "EURUSD", 1.1, 0.00012, digits=5, seed=2
            )
        )
    elif feed.startswith(("ws://", "wss://")):
        nursery.start_soon(websocket_feed, node.offer_quotes, feed)


async def _redis(
    settings: Settings, bridge: Any, log: Any, started_ms: int
) -> tuple[Any, Any, Any]:
    """The nonce cache, the read cache and the Redis link (memory-only without Redis).

    ``started_ms`` is when the in-process nonce memory starts to watch (see MemoryNonces).
    """
    if not settings.redis_url:
        return MemoryNonces(trusted_since_ms=started_ms), None, None
    from persistence.cache import ReadCache
    from persistence.redis_link import RedisLink
    from persistence.redis_nonces import RedisNonceCache

    link = await RedisLink.open(bridge, settings.redis_url)
    log.info("using Redis", url=settings.redis_url.split("@")[-1])
    # The local memory's own start needs no rule here: it is consulted alone only in an
    # outage, and RedisNonceCache then vouches from the outage's start, which is later.
    return RedisNonceCache(link, MemoryNonceCache(1_000_000)), ReadCache(link), link
