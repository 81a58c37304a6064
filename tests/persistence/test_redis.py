"""Redis: the shared nonce cache, the tick bus and the read cache; and how they degrade.

Each test runs against a private ``redis-server`` (see ``tests/fixtures/redis.py``); the fault
tests kill it with SIGKILL mid-run and start it again, empty, on the same port.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import trio

from persistence import Bridge, ReadCache, RedisLink, RedisNonceCache
from protocol.errors import ConfigError, StaleHello, UsageError
from protocol.feed import Quote, QuoteBatch
from tests.fixtures.redis import RedisProcess


class DictNonces:
    """A minimal in-process cache with the ``protocol.nonces.MemoryNonceCache`` interface."""

    def __init__(self) -> None:
        self.expiry: dict[str, int] = {}

    def check_and_add(self, key: str, now_ms: int, ttl_ms: int) -> bool:
        if self.expiry.get(key, -1) > now_ms:
            return False
        self.expiry[key] = now_ms + ttl_ms
        return True


def _prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}:"


def _batch(n: int) -> QuoteBatch:
    return QuoteBatch(quotes=[Quote(symbol="XAUUSD", bid=2300.0 + n, ask=2300.5 + n, time_ms=n)])


@pytest.fixture
async def link(bridge: Bridge, redis_url: str) -> AsyncIterator[RedisLink]:
    opened = await RedisLink.open(bridge, redis_url)
    yield opened
    await opened.aclose()


async def _wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.02)


async def _wait_for_blocked_readers(link: RedisLink, count: int, seconds: float = 5.0) -> None:
    """Until ``count`` clients are blocked in XREAD (Redis's own CLIENT LIST says so)."""

    async def blocked() -> int:
        clients = await link.call(lambda client: client.client_list())
        return sum(1 for c in clients if c.get("cmd") == "xread")

    with trio.fail_after(seconds):
        while await blocked() < count:
            await trio.sleep(0.02)


# -- the nonce cache ------------------------------------------------------------------------


async def test_nonces_are_shared_between_nodes(link: RedisLink) -> None:
    prefix = _prefix()
    node_a = RedisNonceCache(link, DictNonces(), prefix=prefix)
    node_b = RedisNonceCache(link, DictNonces(), prefix=prefix)
    assert await node_a.check_and_add("n1", 1_000, 5_000)
    assert not await node_a.check_and_add("n1", 1_001, 5_000)  # replay on the same node
    assert not await node_b.check_and_add("n1", 1_002, 5_000)  # replay on another node
    assert await node_b.check_and_add("n2", 1_003, 5_000)
    assert node_a.replays_total == 1 and node_b.replays_total == 1
    assert node_a.degraded_total == 0 and not node_a.degraded
    with pytest.raises(UsageError):
        await node_a.check_and_add("n3", 1_000, 0)


async def test_a_burst_larger_than_the_pool_waits_instead_of_degrading(
    bridge: Bridge, redis_url: str
) -> None:
    link = await RedisLink.open(bridge, redis_url, max_connections=4)
    cache = RedisNonceCache(link, DictNonces(), prefix=_prefix())
    fresh: list[bool] = []

    async def check(i: int) -> None:
        fresh.append(await cache.check_and_add(f"burst-{i}", 0, 60_000))

    try:
        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(check, i)
    finally:
        await link.aclose()
    assert fresh == [True] * 300
    assert cache.degraded_total == 0


async def test_nonces_expire_with_their_window(link: RedisLink) -> None:
    cache = RedisNonceCache(link, DictNonces(), prefix=_prefix(), max_clock_skew_ms=0)
    assert await cache.check_and_add("n", 0, 100)
    await trio.sleep(0.25)  # Redis expires on its own clock (PX)
    assert await cache.check_and_add("n", 10_000, 100)  # and so does the local cache


async def test_nonces_outlive_the_window_by_the_clock_skew_between_nodes(link: RedisLink) -> None:
    """Node A's clock runs ``skew`` ahead of B's: a hello A took at the start of its window is
    still inside B's window 2 x window + skew later, so Redis must hold the nonce that long."""
    window_ms, skew_ms = 100, 2_000
    prefix = _prefix()
    node_a = RedisNonceCache(link, DictNonces(), prefix=prefix, max_clock_skew_ms=skew_ms)
    node_b = RedisNonceCache(link, DictNonces(), prefix=prefix, max_clock_skew_ms=skew_ms)
    assert RedisNonceCache(link, DictNonces()).max_clock_skew_ms == 1_000  # the default
    assert node_a.ttl_for(2 * window_ms) == 2 * window_ms + skew_ms
    assert await node_a.check_and_add("skewed", 0, 2 * window_ms)
    kept = await link.call(lambda r: r.pttl(prefix + "skewed"))
    assert 2 * window_ms < kept <= 2 * window_ms + skew_ms
    # Past twice the window, well inside the skew: the replay to B is still refused.
    await trio.sleep(0.3)
    assert not await node_b.check_and_add("skewed", 50, 2 * window_ms)
    # Without the skew it would have been forgotten by then.
    unskewed = RedisNonceCache(link, DictNonces(), prefix=_prefix(), max_clock_skew_ms=0)
    assert await unskewed.check_and_add("plain", 0, 2 * window_ms)
    await trio.sleep(0.3)
    assert await unskewed.check_and_add("plain", 10_000, 2 * window_ms)
    with pytest.raises(UsageError):
        RedisNonceCache(link, DictNonces(), max_clock_skew_ms=-1)


async def test_nonce_cache_degrades_and_recovers(
    bridge: Bridge, redis_server: RedisProcess
) -> None:
    link = await RedisLink.open(bridge, redis_server.url)
    cache = RedisNonceCache(link, DictNonces(), retry_after_s=0.2)
    try:
        assert await cache.check_and_add("before", 0, 60_000)
        redis_server.kill()
        # Down: answered by the local cache, replays at this node still refused, no raise.
        assert await cache.check_and_add("during", 1, 60_000)
        assert not await cache.check_and_add("during", 2, 60_000)
        assert not await cache.check_and_add("before", 3, 60_000)
        assert cache.degraded and cache.degraded_total == 3
        assert cache.state.outages_total == 1  # logged once, not per call

        redis_server.start()  # back, and empty
        await trio.sleep(0.25)
        assert await cache.check_and_add("after", 4, 60_000)
        assert not cache.degraded
        # A nonce first seen during the outage is still refused here after recovery.
        assert not await cache.check_and_add("during", 5, 60_000)
    finally:
        await link.aclose()


async def test_without_redis_only_hellos_signed_since_the_outage_are_vouched_for(
    bridge: Bridge, redis_server: RedisProcess
) -> None:
    link = await RedisLink.open(bridge, redis_server.url)
    cache = RedisNonceCache(link, DictNonces(), retry_after_s=0.2)
    try:
        # Healthy: Redis decides, however old the hello (the window check bounds that).
        assert await cache.check_and_add("a", 1_000, 60_000, signed_ms=10)
        redis_server.kill()
        # The outage is noticed at 2_000: a hello signed before may be one Redis knew.
        with pytest.raises(StaleHello) as info:
            await cache.check_and_add("b", 2_000, 60_000, signed_ms=1_999)
        assert info.value.details == {
            "ts_ms": 1_999,
            "not_before_ms": 2_000,
            "server_time_ms": 2_000,
        }
        # Still degraded (later retries fail too): the outage keeps its start.
        await trio.sleep(0.25)
        with pytest.raises(StaleHello):
            await cache.check_and_add("c", 3_000, 60_000, signed_ms=1_999)
        assert await cache.check_and_add("d", 3_001, 60_000, signed_ms=2_000)
        assert not await cache.check_and_add("d", 3_002, 60_000, signed_ms=2_000)
        assert cache.degraded_total == 4
        redis_server.start()
        await trio.sleep(0.25)
        assert await cache.check_and_add("e", 4_000, 60_000, signed_ms=10)
        assert not cache.degraded
    finally:
        await link.aclose()


# -- the tick bus ---------------------------------------------------------------------------


async def test_read_through_and_coalescing(link: RedisLink) -> None:
    cache = ReadCache(link, prefix=_prefix())
    loads = 0

    async def loader() -> bytes:
        nonlocal loads
        loads += 1
        await trio.sleep(0.1)
        return b'{"heavy": true}'

    results: list[bytes] = []

    async def read() -> None:
        results.append(await cache.get_or_load("analytics:u1", 60_000, loader))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(read)
    assert results == [b'{"heavy": true}'] * 10
    assert loads == 1 and cache.coalesced == 9  # a burst costs one query
    assert await cache.get_or_load("analytics:u1", 60_000, loader) == b'{"heavy": true}'
    assert loads == 1 and cache.hits == 1

    await cache.invalidate("analytics:u1")
    await cache.get_or_load("analytics:u1", 60_000, loader)
    assert loads == 2
    with pytest.raises(UsageError):
        await cache.get_or_load("k", 0, loader)


async def test_read_cache_ttl_and_loader_errors(link: RedisLink) -> None:
    cache = ReadCache(link, prefix=_prefix())
    values = iter([b"one", b"two"])

    async def loader() -> bytes:
        return next(values)

    assert await cache.get_or_load("k", 100, loader) == b"one"
    await trio.sleep(0.25)
    assert await cache.get_or_load("k", 100, loader) == b"two"  # expired, loaded again

    async def broken() -> bytes:
        raise LookupError("the database said no")

    with pytest.raises(LookupError):  # the loader's own errors propagate
        await cache.get_or_load("other", 1000, broken)


async def test_read_cache_degrades_and_recovers(bridge: Bridge, redis_server: RedisProcess) -> None:
    link = await RedisLink.open(bridge, redis_server.url)
    cache = ReadCache(link, retry_after_s=0.1)
    loads = 0

    async def loader() -> bytes:
        nonlocal loads
        loads += 1
        return b"fresh"

    try:
        assert await cache.get_or_load("k", 60_000, loader) == b"fresh"
        redis_server.kill()
        for _ in range(3):
            assert await cache.get_or_load("k", 60_000, loader) == b"fresh"  # never raises
        assert cache.degraded and cache.degraded_total == 3 and loads == 4
        await cache.invalidate("k")  # best effort, silent

        redis_server.start()
        await trio.sleep(0.15)
        assert await cache.get_or_load("k", 60_000, loader) == b"fresh"
        assert not cache.degraded
        assert await cache.get_or_load("k", 60_000, loader) == b"fresh"
        assert cache.hits == 1  # caching again
    finally:
        await link.aclose()


# -- the link -------------------------------------------------------------------------------


async def test_link_refuses_bad_urls_and_reports_a_dead_server(
    bridge: Bridge, redis_server: RedisProcess
) -> None:
    with pytest.raises(ConfigError):
        await RedisLink.open(bridge, "http://127.0.0.1:6379")
    link = await RedisLink.open(bridge, redis_server.url)
    try:
        assert await link.ping()
        redis_server.kill()
        assert not await link.ping()
    finally:
        await link.aclose()


def test_missing_redis_skips_loudly_but_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures import redis as fixture

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="NO REDIS"):
        fixture._skip_or_fail("no binary")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        fixture._skip_or_fail("no binary")
