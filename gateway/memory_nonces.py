"""The hello nonces of a node without Redis: an in-process memory behind the async interface."""

from __future__ import annotations

from protocol.nonces import MemoryNonceCache, check_vouched

__all__ = ["MemoryNonces"]


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
