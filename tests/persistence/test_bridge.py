"""The trio-to-asyncio bridge: results, concurrency, cancellation, errors, shutdown."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest
import trio

from persistence import Bridge, open_bridge
from protocol.errors import UsageError


async def _add(a: int, b: int, delay: float = 0.0) -> int:
    await asyncio.sleep(delay)
    return a + b


async def test_returns_the_coroutine_result_computed_on_the_loop_thread(bridge: Bridge) -> None:
    async def where() -> int:
        asyncio.get_running_loop()  # raises unless we really are on an asyncio loop
        return threading.get_ident()

    assert await bridge.run(_add, 2, 3) == 5
    loop_thread = await bridge.run(where)
    assert loop_thread != threading.get_ident()
    assert loop_thread == await bridge.run(where)  # one loop, one thread


async def test_many_concurrent_calls_without_a_thread_each(bridge: Bridge) -> None:
    release = asyncio.Event()
    waiting = 0

    async def wait_for_release(i: int) -> int:
        nonlocal waiting
        waiting += 1
        await release.wait()
        return i * 2

    results: dict[int, int] = {}
    threads_before = threading.active_count()
    peak_threads = 0

    async def one(i: int) -> None:
        results[i] = await bridge.run(wait_for_release, i)

    async with trio.open_nursery() as nursery:
        for i in range(1000):
            nursery.start_soon(one, i)
        with trio.fail_after(10):
            # The counter moves on the asyncio thread: polling it is the honest way to wait.
            while waiting < 1000:
                await trio.sleep(0.01)
        peak_threads = threading.active_count()
        assert bridge.inflight == 1000
        bridge.loop.call_soon_threadsafe(release.set)
    assert results == {i: i * 2 for i in range(1000)}
    assert bridge.inflight == 0
    # A thousand parked calls and not a thread more (a thread per call would show here).
    assert peak_threads <= threads_before + 1


async def test_exceptions_propagate_with_their_type() -> None:
    async def boom() -> None:
        raise KeyError("the asyncio side")

    async with open_bridge() as bridge:
        with pytest.raises(KeyError, match="the asyncio side"):
            await bridge.run(boom)
        assert await bridge.run(_add, 1, 1) == 2  # the bridge is still usable


async def test_trio_cancellation_cancels_the_asyncio_side_and_waits_for_it(
    bridge: Bridge,
) -> None:
    seen: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # cleanup that takes a moment (a rollback, say)
            seen.append("cleaned up")
            raise

    started = time.monotonic()
    with trio.move_on_after(0.1) as scope:
        await bridge.run(slow)
    assert scope.cancelled_caught
    # run() returned only after the asyncio task finished its cleanup.
    assert seen == ["cleaned up"]
    assert time.monotonic() - started < 5
    assert bridge.inflight == 0


async def test_a_call_that_finishes_despite_cancellation_returns_its_value(
    bridge: Bridge,
) -> None:
    async def shielded() -> int:
        return await asyncio.shield(_add(20, 22, 0.05))

    async def stubborn() -> int:
        try:
            return await shielded()
        except asyncio.CancelledError:
            return 42  # swallowed: the work completed anyway

    with trio.CancelScope() as scope:
        scope.cancel()
        # Already cancelled before the call: nothing is scheduled at all.
        with pytest.raises(trio.Cancelled):
            await bridge.run(stubborn)
    values: list[int] = []
    with trio.move_on_after(0.01) as scope:
        values.append(await bridge.run(stubborn))
        await trio.sleep(1)  # the cancellation is delivered at the next checkpoint instead
    assert scope.cancelled_caught
    assert values == [42]


async def test_trio_stays_responsive_while_a_slow_asyncio_call_runs(bridge: Bridge) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    def blocking_sleep() -> None:
        time.sleep(0.5)  # even a call that blocks the asyncio loop leaves trio alone

    async def slow_and_blocking() -> None:
        await asyncio.sleep(0.25)
        blocking_sleep()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await bridge.run(slow_and_blocking)
        nursery.cancel_scope.cancel()
    # 75 ticks fit in 0.75 s; a blocked trio loop would have managed one or two.
    assert ticks >= 30


async def test_clean_shutdown_cancels_leftover_tasks_and_joins_the_thread() -> None:
    leftover_cancelled = threading.Event()

    async def background() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            leftover_cancelled.set()
            raise

    async def spawn() -> None:
        asyncio.get_running_loop().create_task(background())
        await asyncio.sleep(0)

    async with open_bridge() as bridge:
        await bridge.run(spawn)
        loop = bridge.loop
        thread = bridge._thread
    assert leftover_cancelled.is_set()
    assert loop.is_closed()
    assert not thread.is_alive()
    assert bridge.closed
    with pytest.raises(UsageError):
        await bridge.run(_add, 1, 2)


async def test_functions_that_work_before_awaiting_run_on_the_loop(bridge: Bridge) -> None:
    def needs_a_loop() -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_result(7)
        return future

    async def call() -> int:
        return await needs_a_loop()

    assert await bridge.run(call) == 7
    assert await bridge.run(needs_a_loop) == 7  # called on the loop thread, not here


async def test_the_gil_switch_interval_is_lowered_while_open_and_restored() -> None:
    before = sys.getswitchinterval()
    async with open_bridge(gil_switch_interval_s=0.0005):
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert sys.getswitchinterval() == before
    async with open_bridge(gil_switch_interval_s=None):
        assert sys.getswitchinterval() == before
