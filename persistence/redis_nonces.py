"""The nonce cache device handshakes share across nodes: Redis ``SET NX PX``.

A handshake nonce may be used once within its window. With several engine nodes behind one
address, only a shared store can tell that a nonce was already used on another node: each
check is ``SET <prefix><key> 1 NX PX <ttl>`` (set only if absent, expiring with the window),
and "was absent" means fresh.

Across nodes the TTL must also cover their clocks' disagreement. A hello signed at ``ts`` is
accepted by a node whose clock reads within ``ts ± window``. If node A's clock is ``skew`` ahead
of node B's, A accepts it from (true time) ``ts - window - skew`` on, and B still accepts it
until ``ts + window``: a span of ``2 * window + skew``. The callers pass ``2 * window``
(``protocol.nonces.replay_ttl_ms``); this cache adds ``max_clock_skew_ms``, the largest
difference between two nodes' clocks (keep them NTP-disciplined; 1 s is generous). Redis
expires keys by its own single clock, so the nodes' clocks matter only through the window.

When Redis is down the cache degrades to the in-process cache it was given (the protocol
package's ``MemoryNonceCache(max_entries)``, or anything with the same synchronous
``check_and_add(key, now_ms, ttl_ms) -> bool``): replays to this node are still refused,
replays to another node during the outage are not, which is the best one node can do. It
logs loudly once, counts every check served that way in ``degraded_total``, and retries
Redis every ``retry_after_s``.

The in-process cache is consulted on every check, not only during outages: that costs a
dict operation and closes the gap at the edges of an outage (a nonce first seen while Redis
was down, replayed to this node just after it came back, is still refused).

What the in-process cache cannot know is what Redis held when it failed: the nonces of hellos
presented before the outage (to this node before it started, or to other nodes). So a check
answered without Redis, given the hello's ``signed_ms``, applies
:func:`protocol.nonces.check_vouched` with the outage's start as the moment the local cache
became authoritative: a hello signed before the outage was noticed is refused with
``StaleHello`` (retryable; an honest EA signs a new hello), one signed since is checked
locally. Such checks are counted in ``degraded_total`` like every other.
"""

from __future__ import annotations

from typing import Protocol

from persistence.redis_link import Degradation, RedisLink
from protocol.errors import StorageError, UsageError
from protocol.nonces import check_vouched

__all__ = ["NonceCache", "RedisNonceCache"]


class NonceCache(Protocol):
    """The synchronous interface of an in-process nonce cache (``protocol.nonces``)."""

    def check_and_add(self, key: str, now_ms: int, ttl_ms: int) -> bool:
        """Record ``key`` for ``ttl_ms`` from ``now_ms``; False if it was already there."""
        ...


class RedisNonceCache:
    """Nonces shared through Redis, backed by an in-process cache (see the module docstring).

    Args:
        link: the Redis client.
        local: the in-process cache used alongside Redis and instead of it when it is down.
        prefix: key prefix in Redis (one namespace per deployment).
        retry_after_s: how long to stay on the local cache after a Redis failure.
        max_clock_skew_ms: the largest difference between two nodes' clocks; every nonce is
            kept that much longer than asked (see the module docstring).
    """

    def __init__(
        self,
        link: RedisLink,
        local: NonceCache,
        *,
        prefix: str = "tripwire:nonce:",
        retry_after_s: float = 2.0,
        max_clock_skew_ms: int = 1000,
    ) -> None:
        if max_clock_skew_ms < 0:
            raise UsageError("max_clock_skew_ms must not be negative", value=max_clock_skew_ms)
        self.link = link
        self.max_clock_skew_ms = max_clock_skew_ms
        self.local = local
        self.prefix = prefix
        self.state = Degradation("nonce_cache", retry_after_s)
        self.checks_total = 0
        self.replays_total = 0
        self.degraded_since_ms = 0
        """Wall-clock ms (the callers' ``now_ms``) at which the current outage was noticed: the
        local cache is authoritative from then on (meaningless while healthy)."""

    @property
    def degraded(self) -> bool:
        return self.state.degraded

    @property
    def degraded_total(self) -> int:
        """Checks answered by the local cache alone because Redis was unavailable."""
        return self.state.degraded_total

    def ttl_for(self, ttl_ms: int) -> int:
        """How long a nonce asked to be kept ``ttl_ms`` (twice the window) is kept."""
        return ttl_ms + self.max_clock_skew_ms

    async def check_and_add(
        self, key: str, now_ms: int, ttl_ms: int, *, signed_ms: int | None = None
    ) -> bool:
        """Record ``key`` for ``ttl_ms`` plus ``max_clock_skew_ms``; True if it is fresh, False
        if it is a replay.

        Never raises for Redis trouble itself.

        Raises:
            UsageError: ``ttl_ms`` is not positive.
            StaleHello: Redis did not answer and ``signed_ms`` is too early for the local
                cache to vouch for (see the module docstring).
        """
        if ttl_ms <= 0:
            raise UsageError("nonce ttl must be positive", ttl_ms=ttl_ms)
        self.checks_total += 1
        ttl_ms = self.ttl_for(ttl_ms)
        fresh = self.local.check_and_add(key, now_ms, ttl_ms)
        local_only = True
        if self.state.should_try():
            name = self.prefix + key
            try:
                remote = await self.link.call(lambda r: r.set(name, b"1", nx=True, px=ttl_ms))
            except StorageError as exc:
                if not self.state.degraded:
                    self.degraded_since_ms = now_ms
                self.state.failed(exc)
            else:
                self.state.succeeded()
                fresh = fresh and bool(remote)
                local_only = False
        if local_only:
            self.state.served_degraded()
            if signed_ms is not None:
                check_vouched(signed_ms, self.degraded_since_ms, now_ms)
        if not fresh:
            self.replays_total += 1
        return fresh
