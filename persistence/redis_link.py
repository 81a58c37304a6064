"""Redis for what several nodes share: one client on the asyncio bridge, and graceful decline.

Redis is optional for one node and required for several; either way it is never allowed to
take the engine down. Two pieces make that easy for the modules built on it
(:mod:`~persistence.redis_nonces`, :mod:`~persistence.tick_streams`, :mod:`~persistence.cache`):

* :class:`RedisLink` owns a redis-py asyncio client living on the bridge's loop and runs
  commands with a timeout. Every failure (refused, reset, timeout, Redis loading or
  read-only) comes out as one :class:`~protocol.errors.StorageError`. redis-py's own retries
  are switched off: a dead Redis must be noticed in milliseconds, and the callers know better
  than a generic retry what to do meanwhile.
* :class:`Degradation` is the state machine of one component: healthy, or degraded since an
  error with the next attempt paced by ``retry_after_s``. It logs loudly once per outage and
  once on recovery, never per call, and counts what was served degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
import trio

from persistence.bridge import Bridge
from protocol.errors import ConfigError, StorageError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

# redis-py is imported when a link is opened, not with this module: its import takes a quarter
# of a second, and every engine start (a restart after a crash too) imports this module, with
# or without a REDIS_URL.

__all__ = ["Degradation", "RedisLink"]

T = TypeVar("T")

_SCHEMES = ("redis://", "rediss://", "unix://")


class RedisLink:
    """A redis-py asyncio client on the bridge; create it with :meth:`open`.

    Opening never contacts Redis (the client connects lazily), so a Redis that is down at
    start-up degrades the components that use it instead of failing the engine's start.
    """

    def __init__(self, bridge: Bridge, client: aioredis.Redis, url: str, op_timeout_s: float):
        from redis.exceptions import RedisError

        self._failures = (RedisError, OSError, TimeoutError)
        self.bridge = bridge
        self.url = url
        self.op_timeout_s = op_timeout_s
        self._client = client

    @classmethod
    async def open(
        cls, bridge: Bridge, url: str, *, op_timeout_s: float = 0.5, max_connections: int = 64
    ) -> RedisLink:
        """Build the client (on the asyncio side, where its pool will live).

        Raises:
            ConfigError: ``url`` is not a ``redis://``, ``rediss://`` or ``unix://`` URL.
        """
        if not url.startswith(_SCHEMES):
            raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://", key=url)

        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        async def build() -> aioredis.Redis:
            # A blocking pool: when every connection is busy a caller waits (up to the
            # operation timeout) instead of failing at once, which would read as "Redis down".
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=op_timeout_s,
                socket_connect_timeout=op_timeout_s,
                socket_timeout=None,  # per-call timeouts below; XREAD BLOCK outlasts any default
                retry=Retry(NoBackoff(), 0),
            )
            return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it

        return cls(bridge, await bridge.run(build), url, op_timeout_s)

    async def call(
        self, fn: Callable[[aioredis.Redis], Awaitable[T]], *, timeout_s: float | None = None
    ) -> T:
        """Run ``await fn(client)`` on the asyncio side within ``timeout_s`` (default
        ``op_timeout_s``).

        Raises:
            StorageError: Redis failed, refused, or did not answer in time (``__cause__`` has
                the redis-py or OS error).
        """
        client = self._client
        limit = self.op_timeout_s if timeout_s is None else timeout_s

        async def run() -> T:
            return await asyncio.wait_for(fn(client), limit)

        try:
            return await self.bridge.run(run)
        except self._failures as exc:
            raise StorageError("redis unavailable", error=repr(exc)) from exc

    async def ping(self) -> bool:
        """Whether Redis answers now (never raises)."""
        try:
            return bool(await self.call(lambda client: client.ping()))
        except StorageError:
            return False

    async def aclose(self) -> None:
        """Close the client and its connections (before the bridge closes)."""
        client = self._client

        async def close() -> None:
            await client.aclose()

        # Closing connections to a dead server: nothing is left to release.
        with contextlib.suppress(*self._failures):
            await self.bridge.run(close)


class Degradation:
    """Healthy or degraded, for one Redis-backed component (see the module docstring).

    Attributes:
        degraded: True from a failure until the next success.
        degraded_total: operations served without Redis (a counter).
        outages_total: times the component went from healthy to degraded (a counter).
    """

    def __init__(self, component: str, retry_after_s: float = 2.0) -> None:
        self.component = component
        self.retry_after_s = retry_after_s
        self.degraded = False
        self.degraded_total = 0
        self.outages_total = 0
        self._retry_at = 0.0
        self._log = structlog.get_logger().bind(component=component)

    def should_try(self) -> bool:
        """Whether to try Redis now: always when healthy, once per ``retry_after_s`` when not."""
        return not self.degraded or trio.current_time() >= self._retry_at

    @property
    def retry_at(self) -> float:
        """When (trio clock) the next attempt is due while degraded."""
        return self._retry_at

    def failed(self, exc: BaseException, **context: Any) -> None:
        """Record a failure: degrade (logging once per outage) and pace the next attempt."""
        self._retry_at = trio.current_time() + self.retry_after_s
        if not self.degraded:
            self.degraded = True
            self.outages_total += 1
            self._log.error(
                "redis unavailable: degrading",
                error=getattr(exc, "details", {}).get("error", repr(exc)),
                retry_after_s=self.retry_after_s,
                **context,
            )

    def succeeded(self) -> None:
        """Record a success: leave the degraded state (logging the recovery once)."""
        if self.degraded:
            self.degraded = False
            self._log.info("redis available again", degraded_total=self.degraded_total)

    def served_degraded(self) -> None:
        self.degraded_total += 1
