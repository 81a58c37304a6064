"""Nonce caches: the memory that turns a replayed hello into :class:`ReplayDetected`.

A signed hello is valid for ``window_ms`` on either side of the server's clock, so a copy of
it could be replayed for up to ``2 * window_ms`` after the original was first seen (signed at
``now + window``, replayed at ``ts + window``). A nonce is therefore remembered for
:func:`replay_ttl_ms` = twice the window, and a second sighting inside that time is a replay.

Rules of operation:

* Spend a nonce only *after* :func:`protocol.signing.verify_hello` succeeded, so that nobody
  without the device's secret can fill the cache or burn a device's nonces.
* Keys are :func:`nonce_key` (device id and nonce): nonces are unique per device, not global.
* Two implementations share one contract, ``check_and_add(key, now_ms, ttl_ms) -> bool``
  (``True``: first sighting, now remembered; ``False``: a replay):

  - :class:`MemoryNonceCache` here, synchronous, for one node and for tests;
  - the Redis one in ``persistence/`` (:class:`AsyncNonceCache`), for several nodes behind one
    load balancer: ``SET <key> 1 NX PX <ttl_ms>`` answers both questions in one atomic round
    trip (``OK`` = first sighting, nil = replay) and Redis expires the key itself.

* Bounded memory fails closed: a full memory cache refuses new nonces with
  :class:`~protocol.errors.StorageError` (the gateway answers "try again later") rather than
  forget an unexpired one and let a replay in.
* **A memory vouches only for what it can have seen.** An in-process cache starts empty (a
  restart without Redis), and one that takes over from Redis (an outage) never saw the nonces
  Redis holds, so it is *authoritative* only from ``trusted_since_ms`` on: a hello signed
  before then (``ts_ms < trusted_since_ms``) may have been used before and is refused with
  :class:`~protocol.errors.StaleHello` (:func:`check_vouched`), whatever its nonce. Retryable:
  the EA signs a new hello, whose ``ts_ms`` is its clock *now*, and is let in at once (an EA
  whose clock lags by ``d`` waits ``d``, corrected by the error's ``server_time_ms``). A
  captured hello cannot be re-signed, so a replay across a restart or failover is refused.
  The one case this does not cover is a hello whose ``ts_ms`` was already ahead of the
  server's clock when it was used (an EA whose clock runs fast, by up to the window) and that
  is replayed after a restart that took less than that lead. Covering it too would mean
  ``ts_ms >= trusted_since_ms + window_ms`` and locking every EA out for a whole window after
  each restart; we keep EAs honest about their clocks instead (the welcome gives the offset).
"""

from __future__ import annotations

import heapq
from typing import Final, Protocol

from protocol.errors import ReplayDetected, StaleHello, StorageError, UsageError

__all__ = [
    "NONCE_KEY_PREFIX",
    "AsyncNonceCache",
    "MemoryNonceCache",
    "NonceCache",
    "check_nonce",
    "check_vouched",
    "nonce_key",
    "replay_ttl_ms",
]

NONCE_KEY_PREFIX: Final = "tw:nonce:"


def nonce_key(device_id: str, nonce: str) -> str:
    """The cache key of a device's nonce: ``tw:nonce:<device_id>:<nonce>``.

    Unambiguous although device ids may contain ``:``: a nonce never does, so the nonce is
    whatever follows the last colon.
    """
    return f"{NONCE_KEY_PREFIX}{device_id}:{nonce}"


def replay_ttl_ms(window_ms: int) -> int:
    """How long a nonce must be remembered for a signature window of ``window_ms``."""
    return 2 * window_ms


def check_vouched(signed_ms: int, trusted_since_ms: int, now_ms: int) -> None:
    """Refuse a hello signed before the memory checking it became authoritative.

    Raises:
        StaleHello: ``signed_ms < trusted_since_ms``; ``details`` has ``ts_ms``,
            ``not_before_ms`` (= ``trusted_since_ms``) and ``server_time_ms``.
    """
    if signed_ms < trusted_since_ms:
        raise StaleHello(
            "the hello was signed before this server could check its nonce: sign a new one "
            "with ts_ms >= not_before_ms",
            ts_ms=signed_ms,
            not_before_ms=trusted_since_ms,
            server_time_ms=now_ms,
        )


class NonceCache(Protocol):
    """A synchronous nonce cache (:class:`MemoryNonceCache`)."""

    def check_and_add(self, key: str, now_ms: int, ttl_ms: int) -> bool:
        """True if ``key`` was not seen in the last ``ttl_ms`` (it is now remembered until
        ``now_ms + ttl_ms``), False if it was: a replay.

        Raises:
            StorageError: the cache cannot take the key right now (fail closed).
        """
        ...


class AsyncNonceCache(Protocol):
    """The same contract, awaited: the Redis cache in ``persistence/`` implements it with
    ``SET key 1 NX PX ttl_ms`` (``now_ms`` unused: Redis keeps the time)."""

    async def check_and_add(
        self, key: str, now_ms: int, ttl_ms: int, *, signed_ms: int | None = None
    ) -> bool:
        """As :meth:`NonceCache.check_and_add`. With ``signed_ms`` (the hello's ``ts_ms``), a
        check answered by an in-process memory alone applies :func:`check_vouched` too.

        Raises:
            StaleHello: the memory that answered cannot vouch for a hello signed then.
            StorageError: the cache cannot take the key right now (fail closed).
        """
        ...


class MemoryNonceCache:
    """A bounded in-memory :class:`NonceCache` for one node.

    Entries expire at ``now_ms + ttl_ms``; every call first drops what has expired (a heap
    ordered by expiry, so that costs O(log n) per expired entry). At ``max_entries`` unexpired
    entries a new key is refused with StorageError. Size it for the peak handshake rate times
    the TTL: 10 s of 1,000 handshakes a second is 10,000 entries, about 2 MB.

    ``trusted_since_ms`` is when this memory became authoritative (its creation, at the
    node's start; see the module rules): :func:`check_vouched` refuses hellos it cannot vouch
    for. It is data, not a clock reading here: the caller passes its ``now``.
    """

    __slots__ = ("_expiry", "_heap", "max_entries", "trusted_since_ms")

    def __init__(self, max_entries: int = 100_000, *, trusted_since_ms: int = 0) -> None:
        if max_entries < 1:
            raise UsageError("max_entries must be positive")
        self.max_entries = max_entries
        self.trusted_since_ms = trusted_since_ms
        self._expiry: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _expire(self, now_ms: int) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now_ms:
            _, key = heapq.heappop(heap)
            del expiry[key]

    def check_and_add(self, key: str, now_ms: int, ttl_ms: int) -> bool:
        """See :meth:`NonceCache.check_and_add`.

        Raises:
            UsageError: ``ttl_ms`` is not positive.
            StorageError: ``max_entries`` unexpired keys are held already.
        """
        if ttl_ms <= 0:
            raise UsageError("ttl_ms must be positive")
        self._expire(now_ms)
        # Whatever is still here has not expired: a second sighting is a replay. (A key is in
        # the heap exactly once, with the expiry the dict holds; nothing to reconcile.)
        if key in self._expiry:
            return False
        if len(self._expiry) >= self.max_entries:
            raise StorageError(
                "nonce cache is full", entries=len(self._expiry), limit=self.max_entries
            )
        expires = now_ms + ttl_ms
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))
        return True


def check_nonce(cache: NonceCache, device_id: str, nonce: str, now_ms: int, window_ms: int) -> None:
    """Spend a verified hello's nonce in a synchronous cache.

    (With an :class:`AsyncNonceCache`, await ``check_and_add(nonce_key(...), now_ms,
    replay_ttl_ms(window_ms))`` and raise ReplayDetected on False: the same three lines.)

    Raises:
        ReplayDetected: the nonce was seen within ``2 * window_ms``.
        StorageError: the cache is full.
    """
    if not cache.check_and_add(nonce_key(device_id, nonce), now_ms, replay_ttl_ms(window_ms)):
        raise ReplayDetected("nonce already used", device_id=device_id)
