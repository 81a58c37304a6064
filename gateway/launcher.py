"""``tripwire run --nodes N``: N node processes on this machine, one Postgres, one Redis.

The launcher runs no engine itself. It provides what the nodes share, then starts and watches
them (docs/operations.md, "Several nodes"):

1. Postgres: ``DATABASE_URL``, or the embedded server under the state dir (as ``make run``);
   migrated once here, so N nodes do not queue on the migration lock at start.
2. Redis: ``REDIS_URL``, or a private ``redis-server`` on a free loopback port; neither: a
   clear error (cluster mode carries its ticks on Redis Streams).
3. The shared secrets in the state dir (the JWT key, the demo strategy's key), created here
   before any node starts: two nodes creating them at once would each keep their own, and a
   token issued by one would be refused by the other.
4. Node ``i`` listens on ``port + i`` and announces ``http(s)://host:port+i`` as its URL (where
   other nodes redirect its devices). Node 0 also runs the configured price feed and the demo
   strategy; every node takes ``/ws/feed`` publishers, and the quotes of all reach every node
   through the streams.

A node that exits on its own (a crash, a kill -9) is started again after a pause that doubles
from 1 s to 30 s; meanwhile the others claim its partitions (its advisory lock went with it). At
SIGINT/SIGTERM every node gets SIGTERM (each hands its partitions over in order and stops), then
SIGKILL after ``_STOP_GRACE_S``; then Redis and Postgres stop, in that order.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import structlog
import trio

from gateway.composition import postgres_dsn, secret_file
from gateway.config import Settings, env_name
from persistence.bridge import open_bridge
from persistence.db import open_database
from persistence.migrator import migrate
from persistence.redis_server import PrivateRedis

__all__ = ["launch", "node_environment"]

_STOP_GRACE_S = 20.0
_RESTART_FIRST_S = 1.0
_RESTART_CAP_S = 30.0

_log = structlog.get_logger(component="launcher")


def node_environment(
    settings: Settings, index: int, dsn: str, redis_url: str, base: Mapping[str, str]
) -> dict[str, str]:
    """The environment of node ``index``: ``base`` (the launcher's own) with its place in the
    cluster (see the module docstring)."""
    port = settings.port + index
    scheme = "https" if settings.tls_cert else "http"
    env = dict(base)
    env.update(
        {
            "DATABASE_URL": dsn,
            "REDIS_URL": redis_url,
            env_name("nodes"): "1",
            env_name("expect_nodes"): str(settings.nodes),
            env_name("port"): str(port),
            env_name("node_url"): f"{scheme}://{settings.host}:{port}",
            env_name("node_id"): f"{settings.node_id or 'node'}-{index}",
            env_name("state_dir"): settings.state_dir,
        }
    )
    if index > 0:
        env[env_name("feed")] = "none"
        env[env_name("demo_strategy")] = "false"
    return env


async def launch(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    environ: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``settings.nodes`` nodes until ``shutdown_trigger`` returns; reports their URLs."""
    state_dir = Path(settings.state_dir)
    await trio.Path(state_dir).mkdir(parents=True, exist_ok=True)
    secret_file(state_dir / "jwt.key")
    secret_file(state_dir / "demo-strategy.key")
    redis: PrivateRedis | None = None
    async with postgres_dsn(settings, state_dir) as dsn:
        async with open_bridge() as bridge, open_database(bridge, dsn) as db:
            await migrate(db)
        if settings.redis_url:
            redis_url = settings.redis_url
        else:
            redis = PrivateRedis(state_dir / "redis")
            await trio.to_thread.run_sync(redis.start)
            redis_url = redis.local_url  # its unix socket: the nodes run on this machine
            _log.info("started a private Redis", url=redis_url)
        try:
            base = dict(os.environ if environ is None else environ)
            envs = [
                node_environment(settings, i, dsn, redis_url, base) for i in range(settings.nodes)
            ]
            stopping = trio.Event()
            async with trio.open_nursery() as nursery:
                for i, env in enumerate(envs):
                    nursery.start_soon(_keep_running, i, env, stopping)
                urls = [env[env_name("node_url")] for env in envs]
                _log.info("nodes started", nodes=len(urls), urls=urls)
                task_status.started(urls)
                await shutdown_trigger()
                stopping.set()
        finally:
            if redis is not None:
                await trio.to_thread.run_sync(redis.close)
    _log.info("all nodes stopped")


async def _keep_running(index: int, env: dict[str, str], stopping: trio.Event) -> None:
    """Run node ``index`` until ``stopping``; start it again whenever it exits on its own."""
    pause = _RESTART_FIRST_S
    command = [sys.executable, "-m", "gateway.cli", "run"]
    while not stopping.is_set():
        # Its own session: a Ctrl-C at the terminal reaches the launcher alone, which stops
        # the nodes in order (a node signalled twice would die before handing over).
        process = await trio.lowlevel.open_process(command, env=env, start_new_session=True)
        _log.info("node started", node=index, pid=process.pid, url=env[env_name("node_url")])
        async with trio.open_nursery() as watch:

            async def stop_on_request(process: trio.Process = process) -> None:
                await stopping.wait()
                await _stop(process)

            watch.start_soon(stop_on_request)
            code = await process.wait()
            watch.cancel_scope.cancel()
        if stopping.is_set():
            _log.info("node stopped", node=index, code=code)
            return
        _log.error("node exited; starting it again", node=index, code=code, in_s=pause)
        with trio.move_on_after(pause):
            await stopping.wait()
        pause = min(pause * 2, _RESTART_CAP_S)


async def _stop(process: trio.Process) -> None:
    """SIGTERM (a node hands its partitions over, then exits), SIGKILL after the grace."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(_STOP_GRACE_S):
        await process.wait()
        return
    _log.warning("node did not stop in time; killing it", pid=process.pid)
    process.kill()
    await process.wait()
