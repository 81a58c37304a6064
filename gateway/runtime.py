"""``tripwire run``: the whole engine in one trio run.

:func:`run` is :func:`gateway.composition.open_services` then :func:`serve` until SIGINT or
SIGTERM. :func:`serve` runs the services as nested lifetimes: the snapshotter process outlives
the journal writer, which outlives the node and everything that feeds it (the notifier, the
gateway on Hypercorn, the feed, the paper device, the demo strategy, the periodic snapshots),
so whatever they append is written.

Shutdown (``shutdown_trigger`` returns): stop intake (the server stops accepting), let the
actors drain, flush the journal, take a final snapshot, stop.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import Awaitable, Callable

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from actors import gc_policy
from actors.clock import WallClock
from actors.node import Node
from actors.upstream_feed import websocket_feed
from gateway.access import on_access_ended
from gateway.cluster import ClusterNode, send_moved
from gateway.composition import Services, open_services
from gateway.config import Settings, is_loopback
from gateway.context import QuoteSink
from gateway.demo import DEMO_DEVICE, run_demo_strategy
from gateway.front import serve_front
from gateway.ws_client import serve_client
from gateway.ws_device import serve_device
from gateway.ws_feed import serve_feed
from persistence.snapshotter import SnapshotProcess, take_snapshot
from protocol.errors import StorageError
from sim.paper_terminal import run_paper_device
from sim.price_feed import random_walk, replay

__all__ = ["run", "serve", "wait_for_signal"]

ShutdownTrigger = Callable[[], Awaitable[None]]
"""Returns when the engine is to stop (a signal; a test's event)."""

_log = structlog.get_logger(component="runtime")  # lazy: configured at first use


async def wait_for_signal() -> None:
    """Return at the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            _log.info("shutting down", signal=signal.Signals(signum).name)
            return


async def run(
    settings: Settings,
    *,
    shutdown_trigger: ShutdownTrigger = wait_for_signal,
    task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Build the engine from ``settings`` and run it until ``shutdown_trigger`` returns (or
    until cancelled); reports the services started once the engine serves."""
    async with open_services(settings) as services:

        async def serving(*, task_status: trio.TaskStatus[None]) -> None:
            await serve(services, shutdown_trigger=shutdown_trigger, task_status=task_status)

        async with trio.open_nursery() as nursery:
            await nursery.start(serving)
            task_status.started(services)


async def serve(
    services: Services,
    *,
    shutdown_trigger: ShutdownTrigger = wait_for_signal,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``services`` until ``shutdown_trigger`` returns, then shut them down in order."""
    settings = services.settings
    async with contextlib.AsyncExitStack() as stack:
        snapshotter = None
        if services.cluster is None:  # a cluster node snapshots each partition itself
            # The snapshotter process ends with this block, however it ends.
            snapshotter = await stack.enter_async_context(
                SnapshotProcess(
                    services.dsn, log_format=settings.log_format, log_level=settings.log_level
                )
            )
        storage = await stack.enter_async_context(trio.open_nursery())
        await storage.start(services.journal.run)
        async with trio.open_nursery() as engine:
            await _start_engine(engine, services, snapshotter, shutdown_trigger, task_status)
        storage.cancel_scope.cancel()  # the writer still writes what is pending (shielded)
    _log.info("tripwire stopped")


async def _start_engine(
    engine: trio.Nursery,
    services: Services,
    snapshotter: SnapshotProcess | None,
    shutdown_trigger: ShutdownTrigger,
    task_status: trio.TaskStatus[None],
) -> None:
    settings, node, ctx, cluster = (
        services.settings,
        services.node,
        services.gateway,
        services.cluster,
    )
    await engine.start(node.run)
    await engine.start(services.notifier.run)
    # Revocations and disables made elsewhere (another node, tripwire admin) close here too.
    services.registry.on_access_ended(functools.partial(on_access_ended, ctx))
    await engine.start(services.registry.follow)
    gc_policy.settle(settings.gc_gen0)  # the recovered state is long-lived (gc_policy)
    if cluster is not None:
        cluster.bind_moved(functools.partial(send_moved, ctx))
        await engine.start(cluster.run)
    _start_feed(engine, settings, ctx.offer_quotes, services.clock)
    demo = services.demo
    if settings.paper_device and demo is not None:
        if cluster is None:
            engine.start_soon(run_paper_device, node, DEMO_DEVICE)
        else:
            engine.start_soon(_paper_device_where_owned, cluster, node, demo.user_id)
    if settings.demo_strategy and demo is not None:
        engine.start_soon(run_demo_strategy, ctx, demo)
    periodic = trio.CancelScope()
    if snapshotter is not None:
        engine.start_soon(_snapshots, snapshotter, settings.snapshot_interval_s, periodic)
    stop_serving = trio.Event()
    await _start_http(engine, services, stop_serving.wait)
    ctx.ready = True
    _announce(services)
    task_status.started()
    await shutdown_trigger()
    ctx.ready = False
    stop_serving.set()  # stop intake first
    if cluster is not None:
        # Hand every partition over in order (the others claim them), bounded.
        with trio.move_on_after(max(10.0, 2 * settings.lease_s)):
            await cluster.hand_over_all()
    await node.shutdown()
    with trio.move_on_after(10):
        await services.journal.flush()
        periodic.cancel()
        if snapshotter is not None:
            await _final_snapshot(snapshotter, services)
    engine.cancel_scope.cancel()


async def _paper_device_where_owned(cluster: ClusterNode, node: Node, user_id: str) -> None:
    """The demo's paper device runs on whichever node serves the demo user (it is an
    in-process terminal): started when this node adopts the user, stopped before it lets the
    user go (polled: the partition moves seldom)."""
    while True:
        while not cluster.serves(user_id):  # noqa: ASYNC110
            await trio.sleep(0.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_paper_device, node, DEMO_DEVICE)
            while cluster.serves(user_id):  # noqa: ASYNC110
                await trio.sleep(0.5)
            nursery.cancel_scope.cancel()


async def _start_http(
    nursery: trio.Nursery, services: Services, shutdown_trigger: ShutdownTrigger
) -> None:
    """The gateway on Hypercorn, or on the front that takes the tick path's sockets off the
    HTTP stack (``ws_direct``: gateway.front, gateway.wsdirect); returns once it listens."""
    settings, ctx = services.settings, services.gateway
    hypercorn = _hypercorn_config(settings)
    if not settings.ws_direct:
        await nursery.start(
            functools.partial(
                hypercorn_serve, services.app, hypercorn, shutdown_trigger=shutdown_trigger
            )
        )
        return
    await nursery.start(
        functools.partial(
            serve_front,
            services.app,
            hypercorn,
            host=settings.host,
            port=settings.port,
            direct={
                "/ws/device": functools.partial(serve_device, ctx),
                "/ws/feed": functools.partial(serve_feed, ctx),
                "/ws/client": functools.partial(serve_client, ctx),
            },
            max_message=hypercorn.websocket_max_message_size,
            edge=services.edge,
            shutdown_trigger=shutdown_trigger,
        )
    )


def _announce(services: Services) -> None:
    settings, recovered = services.settings, services.recovered
    scheme = "https" if settings.tls_cert else "http"
    url = f"{scheme}://{settings.host}:{settings.port}"
    _log.info(
        "tripwire is running",
        dashboard=url + "/",
        api=url + "/docs",
        metrics=url + "/metrics",
        recovered_positions=len(recovered.state.positions),
        replayed_records=recovered.records,
    )
    if services.demo is not None:
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


async def _snapshots(
    snapshots: SnapshotProcess, interval_s: float, scope: trio.CancelScope
) -> None:
    """Ask the snapshotter process for a snapshot every ``interval_s`` (its own core, at idle
    priority, not the tick path's), until ``scope`` is cancelled."""
    with scope:
        while True:
            await trio.sleep(interval_s)
            try:
                await snapshots.take()
            except (OSError, StorageError) as exc:
                _log.warning("snapshot failed; the journal keeps everything", error=str(exc))


async def _final_snapshot(snapshots: SnapshotProcess, services: Services) -> None:
    """The shutdown snapshot: by the snapshotter process, which holds the state already; in
    this process, from the database, if it cannot."""
    try:
        await snapshots.take()
    except (OSError, StorageError) as exc:
        _log.warning("the snapshotter failed at shutdown; snapshotting here", error=str(exc))
        assert services.snapshots is not None  # a single node's (a cluster has no snapshotter)
        await take_snapshot(services.journal_reader, services.snapshots)


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


def _start_feed(
    nursery: trio.Nursery, settings: Settings, sink: QuoteSink, clock: WallClock
) -> None:
    feed = settings.feed
    if feed == "replay":
        nursery.start_soon(
            functools.partial(
                replay,
                sink,
                clock,
                speed=settings.replay_speed,
                loop=True,
                start_s=settings.replay_start_s,
                data_dir=settings.data_dir,
            )
        )
    elif feed == "random":
        nursery.start_soon(
            functools.partial(random_walk, sink, clock, "XAUUSD", 1950.0, 0.3, digits=3)
        )
        nursery.start_soon(
            functools.partial(random_walk, sink, clock, "EURUSD", 1.1, 0.00012, digits=5, seed=2)
        )
    elif feed.startswith(("ws://", "wss://")):
        nursery.start_soon(websocket_feed, sink, feed)
