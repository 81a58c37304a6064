"""Heavy reads through a short-TTL cache: Redis when configured, else this process's memory.

Histories (closed positions, reconciliation entries, alerts) and rendered charts are encoded
once and kept for a moment, so a burst of identical requests (a dashboard refreshing, a hundred
clients polling) costs one query or one render. Keys always name the caller (or say the data is
the same for everyone), so nobody is ever served another user's answer.

With Redis (``ctx.cache``, a :class:`~persistence.cache.ReadCache`) the entries are shared by
every node and survive a restart of this one. Without it, the same :class:`ReadCache` runs over
:class:`MemoryStore`, a bounded in-process map with the three Redis commands it uses: one code
path (and one single-flight rule) either way.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from persistence.cache import ReadCache

if TYPE_CHECKING:
    from gateway.context import GatewayContext

__all__ = ["MemoryStore", "cache_of", "read_through"]


class MemoryStore:
    """``get`` / ``set(px=)`` / ``delete`` over a bounded in-process map (oldest out first)."""

    def __init__(
        self, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> bytes | None:
        entry = self._entries.get(name)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[name]
            return None
        return entry[1]

    def set(self, name: str, value: bytes, px: int) -> None:
        self._entries[name] = (self.clock() + px / 1000, value)
        self._entries.move_to_end(name)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def delete(self, *names: str) -> None:
        for name in names:
            self._entries.pop(name, None)


class _MemoryLink:
    """What :class:`ReadCache` needs of a Redis link: ``await call(fn)`` runs ``fn(client)``."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def call(self, fn: Callable[[MemoryStore], Any]) -> Any:
        return fn(self.store)


def cache_of(ctx: GatewayContext) -> ReadCache:
    """The read cache of this request: Redis-backed if configured, else in-process."""
    if ctx.cache is not None:
        cache: ReadCache = ctx.cache
        return cache
    local = ctx.local_cache
    if local is None:
        local = ReadCache(_MemoryLink(MemoryStore()), prefix="")  # type: ignore[arg-type]
        ctx.local_cache = local
    return local


async def read_through(
    ctx: GatewayContext,
    key: str,
    loader: Callable[[], Awaitable[bytes]],
    ttl_ms: int | None = None,
) -> bytes:
    """The bytes cached under ``key``, else ``await loader()`` cached for ``ttl_ms``
    (default: the ``read_cache_ttl_ms`` setting)."""
    ttl = ttl_ms if ttl_ms is not None else ctx.settings.read_cache_ttl_ms
    return await cache_of(ctx).get_or_load("rest:" + key, ttl, loader)
