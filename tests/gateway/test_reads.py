"""The REST read cache without Redis: a bounded in-process store with a TTL, and one load for
a burst of identical misses."""

from __future__ import annotations

from types import SimpleNamespace

import trio

from gateway.rest.reads import MemoryStore, cache_of, read_through


def test_entries_expire_and_the_oldest_go_first() -> None:
    now = [100.0]
    store = MemoryStore(max_entries=2, clock=lambda: now[0])
    store.set("a", b"1", px=500)
    assert store.get("a") == b"1"
    now[0] += 0.5
    assert store.get("a") is None and len(store) == 0
    for name in ("x", "y", "z"):
        store.set(name, name.encode(), px=1000)
    assert store.get("x") is None and store.get("z") == b"z" and len(store) == 2
    store.delete("y", "missing")
    assert len(store) == 1


async def test_a_burst_of_misses_loads_once() -> None:
    ctx = SimpleNamespace(
        cache=None, local_cache=None, settings=SimpleNamespace(read_cache_ttl_ms=500)
    )
    loads = 0

    async def load() -> bytes:
        nonlocal loads
        loads += 1
        await trio.sleep(0.01)
        return b"[]"

    results = []

    async def read() -> None:
        results.append(await read_through(ctx, "k", load))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(read)
    assert results == [b"[]"] * 20 and loads == 1
    assert await read_through(ctx, "k", load) == b"[]" and loads == 1  # a hit now
    cache = cache_of(ctx)
    assert cache is cache_of(ctx) and cache.hits == 1 and cache.coalesced == 19
