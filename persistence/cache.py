"""A read-through cache with a short TTL for the heavy REST reads (analytics, histories).

``await cache.get_or_load(key, ttl_ms, loader)`` returns the cached bytes for ``key`` if Redis
has them, else awaits ``loader()`` (which queries Postgres and encodes the answer, msgpack or
JSON, as the endpoint will send it), stores the result for ``ttl_ms`` and returns it. The TTL is
short (seconds): the cache absorbs bursts of identical reads, it is not a source of truth, so
there is no invalidation protocol beyond :meth:`ReadCache.invalidate` for the obvious cases.

Concurrent misses of the same key in this process share one ``loader()`` call (a burst of
identical requests costs one query, not one each).

When Redis is down everything still works, slower: the loader is called directly,
``degraded`` is True, ``degraded_total`` counts it, and no Redis error ever reaches the
caller. Errors of the loader itself propagate unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from persistence.redis_link import Degradation, RedisLink
from protocol.errors import StorageError, UsageError

__all__ = ["ReadCache"]


class _Flight:
    """One in-progress load that concurrent callers of the same key wait for."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: bytes | None = None


class ReadCache:
    """Short-TTL read-through cache of encoded responses (see the module docstring).

    Attributes:
        hits, misses: Redis lookups that found / did not find the key.
        coalesced: calls that waited for another caller's load instead of loading.
    """

    def __init__(
        self, link: RedisLink, *, prefix: str = "tripwire:cache:", retry_after_s: float = 2.0
    ) -> None:
        self.link = link
        self.prefix = prefix
        self.state = Degradation("read_cache", retry_after_s)
        self._flights: dict[str, _Flight] = {}
        self.hits = 0
        self.misses = 0
        self.coalesced = 0

    @property
    def degraded(self) -> bool:
        return self.state.degraded

    @property
    def degraded_total(self) -> int:
        """Reads served straight from the loader because Redis was unavailable."""
        return self.state.degraded_total

    async def get_or_load(
        self, key: str, ttl_ms: int, loader: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """The bytes cached under ``key``, or ``await loader()`` (then cached for ``ttl_ms``).

        Raises:
            UsageError: ``ttl_ms`` is not positive.
            Exception: whatever ``loader`` raises (never a Redis error).
        """
        if ttl_ms <= 0:
            raise UsageError("cache ttl must be positive", ttl_ms=ttl_ms)
        name = self.prefix + key
        if self.state.should_try():
            try:
                cached = await self.link.call(lambda r: r.get(name))
            except StorageError as exc:
                self.state.failed(exc)
            else:
                self.state.succeeded()
                if cached is not None:
                    # redis-py types a reply for either client mode; ours answers bytes
                    assert isinstance(cached, bytes), type(cached)
                    self.hits += 1
                    return cached
                self.misses += 1
                value = await self._load(key, loader)
                await self._store(name, value, ttl_ms)
                return value
        self.state.served_degraded()
        return await self._load(key, loader)

    async def invalidate(self, *keys: str) -> None:
        """Forget ``keys`` (best effort: a failure only degrades, the TTL cleans up anyway)."""
        if not keys or not self.state.should_try():
            return
        names = [self.prefix + key for key in keys]
        try:
            await self.link.call(lambda r: r.delete(*names))
        except StorageError as exc:
            self.state.failed(exc)
        else:
            self.state.succeeded()

    async def _store(self, name: str, value: bytes, ttl_ms: int) -> None:
        try:
            await self.link.call(lambda r: r.set(name, value, px=ttl_ms))
        except StorageError as exc:
            self.state.failed(exc)

    async def _load(self, key: str, loader: Callable[[], Awaitable[bytes]]) -> bytes:
        flight = self._flights.get(key)
        if flight is not None:
            self.coalesced += 1
            await flight.done.wait()
            if flight.value is not None:
                return flight.value
            return await loader()  # the leader failed or was cancelled: load for ourselves
        flight = self._flights[key] = _Flight()
        try:
            flight.value = await loader()
            return flight.value
        finally:
            del self._flights[key]
            flight.done.set()
