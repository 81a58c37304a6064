"""The in-memory nonce cache against a brute-force oracle, its bounds and its keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ReplayDetected, SignatureExpired, StaleHello, StorageError, UsageError
from protocol.nonces import (
    AsyncNonceCache,
    MemoryNonceCache,
    NonceCache,
    check_nonce,
    check_vouched,
    nonce_key,
    replay_ttl_ms,
)

OPS = st.lists(
    st.tuples(st.sampled_from("abcde"), st.integers(0, 50), st.integers(1, 40)), max_size=60
)


@given(OPS, st.integers(1, 6))
def test_matches_a_brute_force_oracle(ops: list[tuple[str, int, int]], max_entries: int) -> None:
    cache = MemoryNonceCache(max_entries)
    seen: dict[str, int] = {}  # key -> expiry
    now = 0
    for key, step, ttl in ops:
        now += step
        live = {k: e for k, e in seen.items() if e > now}
        if key in live:
            expected: bool | str = False
        elif len(live) >= max_entries:
            expected = "full"
        else:
            expected = True
            live[key] = now + ttl
        seen = live
        if expected == "full":
            with pytest.raises(StorageError):
                cache.check_and_add(key, now, ttl)
        else:
            assert cache.check_and_add(key, now, ttl) is expected
        assert len(cache) == len(seen) <= max_entries


def test_a_nonce_is_remembered_for_twice_the_window() -> None:
    cache = MemoryNonceCache()
    window = 5_000
    check_nonce(cache, "ea-1", "n" * 16, 1_000, window)
    with pytest.raises(ReplayDetected):
        check_nonce(cache, "ea-1", "n" * 16, 1_000 + 2 * window - 1, window)
    # Another device may use the same nonce.
    check_nonce(cache, "ea-2", "n" * 16, 1_000, window)
    # After twice the window no valid hello can carry it any more, so it may be forgotten.
    check_nonce(cache, "ea-1", "n" * 16, 1_000 + 2 * window, window)
    assert replay_ttl_ms(window) == 10_000


def test_a_full_cache_fails_closed_and_recovers_as_entries_expire() -> None:
    cache = MemoryNonceCache(max_entries=2)
    assert cache.check_and_add("a", 0, 10)
    assert cache.check_and_add("b", 0, 20)
    with pytest.raises(StorageError):
        cache.check_and_add("c", 5, 10)
    assert not cache.check_and_add("a", 5, 10)  # still a replay, full or not
    assert cache.check_and_add("c", 10, 10)  # "a" expired at 10
    assert len(cache) == 2


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        MemoryNonceCache(0)
    with pytest.raises(UsageError):
        MemoryNonceCache().check_and_add("a", 0, 0)


def test_keys_and_protocols() -> None:
    assert nonce_key("dev:1@x", "abcdefghijklmnop") == "tw:nonce:dev:1@x:abcdefghijklmnop"
    cache: NonceCache = MemoryNonceCache()
    assert cache.check_and_add("k", 0, 1)

    class Fake:
        async def check_and_add(self, key: str, now_ms: int, ttl_ms: int) -> bool:
            return True

    remote: AsyncNonceCache = Fake()
    assert remote is not None


@given(st.integers(0, 10**13), st.integers(0, 10**13), st.integers(0, 10**13))
def test_a_memory_vouches_only_for_hellos_signed_since_it_took_over(
    signed: int, since: int, now: int
) -> None:
    try:
        check_vouched(signed, since, now)
    except StaleHello as exc:
        assert signed < since
        assert exc.details == {"ts_ms": signed, "not_before_ms": since, "server_time_ms": now}
        # An EA that only knows "expired" recovers the same way: it is one.
        assert isinstance(exc, SignatureExpired) and exc.code == "stale_hello"
    else:
        assert signed >= since


def test_a_memory_cache_knows_when_it_took_over() -> None:
    assert MemoryNonceCache().trusted_since_ms == 0
    assert MemoryNonceCache(10, trusted_since_ms=1_234).trusted_since_ms == 1_234
