"""Streams a node feeds alone: muted out of the blocking read, delivered from the appends.

Real Redis (a private ``redis-server`` per test). "This node" appends with one appender and
hands each reply to the reader (``StreamReader.appended``), as ``gateway.cluster`` does, under
one lock shared with the polls; "another node" appends with a second appender.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cluster import DeliveryOrder
from persistence import Bridge, RedisLink, open_bridge
from persistence.tick_reader import StreamReader
from persistence.tick_streams import AppendInFlight, TickAppender, TickKeys
from protocol.feed import Quote

SYMBOL = "XAUUSD"


def _quotes(first: int, n: int) -> list[Quote]:
    """Quotes whose bid names them (this node's from 1,000, the other's from 5,000)."""
    return [
        Quote(symbol=SYMBOL, bid=float(k), ask=float(k) + 0.5, time_ms=k)
        for k in range(first, first + n)
    ]


class World:
    """This node (appender, reader, delivery order) and another node's appender."""

    def __init__(self, link: RedisLink, **reader_options: Any) -> None:
        prefix = f"test:{uuid.uuid4().hex[:8]}:"
        self.link = link
        self.keys = TickKeys(prefix)
        self.ours = TickAppender(link, keep_ms=600_000, prefix=prefix)
        self.theirs = TickAppender(link, keep_ms=600_000, prefix=prefix)
        self.reader_options = {"prefix": prefix, "block_ms": 20, **reader_options}
        self.order = DeliveryOrder()
        self.seen: list[float] = []
        self.lock = trio.Lock()
        self.next_ours = 1_000
        self.next_theirs = 5_000

    async def start(self, nursery: trio.Nursery) -> None:
        self.reader = await StreamReader.open(self.link, **self.reader_options)
        self.reader.watch(SYMBOL)
        nursery.start_soon(self._read)
        with trio.fail_after(5):
            while self.reader.symbols != {SYMBOL}:
                await trio.sleep(0.005)

    async def aclose(self) -> None:
        await self.reader.aclose()
        await self.ours.aclose()
        await self.theirs.aclose()

    async def _read(self) -> None:
        async for batch in self.reader.batches():
            self._take(batch, own=False)

    def _take(self, batch: Any, *, own: bool) -> None:
        self.seen += [q.bid for q in self.order.fresh(batch, own=own)]

    async def append_ours(self, n: int) -> None:
        async with self.lock:
            stamped = await self.ours.append(_quotes(self.next_ours, n))
            got = await self.reader.appended(stamped, self.order.last)
        self.next_ours += n
        self._take(got.delivered, own=False)
        self._take(got.left, own=True)

    async def fed_alone(self, appends: int) -> None:
        """This node appends one quote at a time until the reader mutes the symbol."""
        for _ in range(appends):
            await self.append_ours(1)
        await _until(lambda: self.reader.muted == {SYMBOL})

    async def append_ours_now(self, n: int, wait_s: float) -> None:
        """As ``gateway.cluster`` from a feed's call: appended and delivered without waiting
        where it can be, else finished (or appended) the waiting way, in order."""
        quotes = _quotes(self.next_ours, n)
        self.next_ours += n
        async with self.lock:
            done = self.ours.append_nowait(quotes, wait_s)
            if done is None:
                done = await self.ours.append(quotes)
            elif isinstance(done, AppendInFlight):
                done = await self.ours.finish(done)
            got = self.reader.appended_nowait(done, self.order.last)
            if got is None:
                got = await self.reader.appended(done, self.order.last)
        self._take(got.delivered, own=False)
        self._take(got.left, own=True)

    async def append_theirs(self, n: int) -> None:
        await self.theirs.append(_quotes(self.next_theirs, n))
        self.next_theirs += n

    async def poll(self, quiet_s: float = 0.0) -> None:
        async with self.lock:
            found = await self.reader.poll(self.ours.conn, self.order.last, quiet_s)
        self._take(found, own=False)

    async def stream(self) -> list[float]:
        """The truth: every entry's quote, in stream order."""
        entries: Any = await self.link.call(lambda r: r.xrange(self.keys.stream(SYMBOL)))
        decoder = __import__("msgspec").msgpack.Decoder(Quote)
        return [decoder.decode(fields[b"q"]).bid for _, fields in entries]

    async def settle(self) -> list[float]:
        """Poll and let the reader read until everything in the stream was delivered."""
        truth = await self.stream()
        with trio.fail_after(10):
            while len(self.seen) < len(truth):
                await self.poll()
                await trio.sleep(0.01)
        await trio.sleep(0.05)  # nothing more arrives late
        return truth


@pytest.fixture
async def world(link: RedisLink) -> AsyncIterator[Callable[..., Any]]:
    made: list[World] = []

    def make(**options: Any) -> World:
        made.append(World(link, **options))
        return made[-1]

    yield make
    for w in made:
        await w.aclose()


@pytest.fixture
async def link(bridge: Bridge, redis_url: str) -> AsyncIterator[RedisLink]:
    opened = await RedisLink.open(bridge, redis_url)
    yield opened
    await opened.aclose()


async def _until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not condition():
            await trio.sleep(0.005)


async def test_a_stream_fed_alone_leaves_the_read(world: Callable[..., World]) -> None:
    w = world(mute_after=3)
    async with trio.open_nursery() as nursery:
        await w.start(nursery)
        await w.append_ours(1)  # the read starts the order (nothing was delivered yet)
        await _until(lambda: len(w.seen) == 1)
        for _ in range(3):
            await w.append_ours(1)
        await _until(lambda: w.reader.muted == {SYMBOL})
        read_before = w.reader.conn.commands
        for _ in range(5):
            await w.append_ours(2)
        await trio.sleep(0.1)  # five blocks of the read's 20 ms: it would have woken
        stats = w.reader.stats()
        nursery.cancel_scope.cancel()
    assert w.seen == [float(k) for k in range(1_000, 1_014)]
    assert w.seen == await w.stream()
    assert stats.muted == 1 and stats.mutes == 1 and stats.gaps_detected == 0
    # The reader's own connection has nothing to read: no XREAD wakes for these appends.
    assert w.reader.conn.commands == read_before


async def test_another_nodes_entries_come_first_and_bring_the_read_back(
    world: Callable[..., World],
) -> None:
    w = world(mute_after=2, mute_holdoff_s=60)
    async with trio.open_nursery() as nursery:
        await w.start(nursery)
        await w.fed_alone(3)
        await w.append_theirs(2)
        await w.append_ours(1)  # its seq jumps: the other node's two are replayed before it
        assert w.seen == [1_000.0, 1_001.0, 1_002.0, 5_000.0, 5_001.0, 1_003.0]
        await _until(lambda: not w.reader.muted)
        for _ in range(5):  # the hold-off: fed alone again, it stays in the read
            await w.append_ours(1)
        await w.append_theirs(1)
        truth = await w.settle()
        stats = w.reader.stats()
        nursery.cancel_scope.cancel()
    assert w.seen == truth
    assert stats.muted == 0 and stats.mutes == 1 and stats.unmutes == 1


async def test_a_poll_finds_another_nodes_entries_while_this_node_is_quiet(
    world: Callable[..., World],
) -> None:
    w = world(mute_after=2)
    async with trio.open_nursery() as nursery:
        await w.start(nursery)
        await w.fed_alone(3)
        await w.poll()  # only own entries there: nothing, and the symbol stays muted
        assert w.reader.muted == {SYMBOL} and len(w.seen) == 3
        await w.append_theirs(3)
        await w.poll()
        assert w.seen[3:] == [5_000.0, 5_001.0, 5_002.0]
        await _until(lambda: not w.reader.muted)
        await w.append_theirs(1)  # back in the read: no poll needed
        await _until(lambda: len(w.seen) == 7)
        nursery.cancel_scope.cancel()
    assert w.seen == await w.stream()
    assert w.reader.stats().polls == 2


async def test_a_stream_this_node_just_appended_to_is_not_polled(
    world: Callable[..., World],
) -> None:
    """Its next own append checks it anyway: the poll skips it until it has been quiet for
    ``quiet_s``, and then finds what another node appended meanwhile."""
    now = [100.0]
    w = world(mute_after=2, monotonic=lambda: now[0])
    async with trio.open_nursery() as nursery:
        await w.start(nursery)
        # Two appends: the second asks for the mute, which the read loop applies after it,
        # so the last own append moved the stream while it was still in the read.
        await w.fed_alone(2)
        await w.append_theirs(2)
        now[0] += 0.05
        await w.poll(quiet_s=0.1)
        assert w.reader.stats().polls == 0  # no command was sent
        assert w.reader.muted == {SYMBOL} and len(w.seen) == 2
        now[0] += 0.1
        await w.poll(quiet_s=0.1)
        assert w.reader.stats().polls == 1 and w.seen[2:] == [5_000.0, 5_001.0]
        await _until(lambda: not w.reader.muted)
        nursery.cancel_scope.cancel()
    assert w.seen == await w.stream()


async def test_a_stream_this_node_stopped_feeding_goes_back_to_the_read(
    world: Callable[..., World],
) -> None:
    """An idle node is not woken by polls: a muted stream no own append moved for
    ``unmute_idle_s`` is polled once more, then read (blocked) like any other."""
    now = [100.0]
    w = world(mute_after=2, unmute_idle_s=5.0, monotonic=lambda: now[0])
    async with trio.open_nursery() as nursery:
        await w.start(nursery)
        await w.fed_alone(2)
        now[0] += 1.0
        await w.poll(quiet_s=0.1)  # quiet, not idle yet: polled, and still muted
        await trio.sleep(0.06)  # three blocks of the read's 20 ms: a change would have applied
        assert w.reader.muted == {SYMBOL}
        now[0] += 5.0
        await w.poll(quiet_s=0.1)
        await _until(lambda: not w.reader.muted)
        assert w.reader.stats().polls == 2
        await w.append_theirs(2)  # the read brings them: no poll
        await _until(lambda: len(w.seen) == 4)
        for _ in range(2):  # fed again: muted again (no hold-off, no other node was seen)
            await w.append_ours(1)
        await _until(lambda: w.reader.muted == {SYMBOL})
        truth = await w.settle()
        stats = w.reader.stats()
        nursery.cancel_scope.cancel()
    assert w.seen == truth
    assert (stats.mutes, stats.unmutes, stats.gaps_detected) == (2, 1, 0)


async def test_unmute_all_puts_every_muted_stream_back_and_muting_can_be_held(
    world: Callable[..., World],
) -> None:
    w = world(mute_after=2)
    async with trio.open_nursery() as nursery:
        await w.start(nursery)
        await w.fed_alone(3)
        w.reader.muting_allowed = False
        w.reader.unmute_all()
        await w.append_ours(1)  # before the unmute applies: still delivered from the append
        await _until(lambda: not w.reader.muted)
        for _ in range(4):
            await w.append_ours(1)
        await trio.sleep(0.06)
        assert not w.reader.muted  # held: fed alone, it stays in the read
        truth = await w.settle()
        nursery.cancel_scope.cancel()
    assert w.seen == truth


# -- every interleaving: each entry once, in the stream's order ---------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("ours"), st.integers(1, 4)),
        st.tuples(st.just("ours_now"), st.integers(1, 4)),
        st.tuples(st.just("ours_late"), st.integers(1, 4)),
        st.tuples(st.just("theirs"), st.integers(1, 3)),
        st.tuples(st.just("poll"), st.just(0)),
        st.tuples(st.just("wait"), st.integers(0, 30)),
    ),
    max_size=40,
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=ops, mute_after=st.integers(1, 4))
def test_each_entry_once_in_stream_order_whoever_appends(
    redis_url: str, plan: list[tuple[str, int]], mute_after: int
) -> None:
    """Muting, unmuting (no hold-off: it flaps), polls and reads interleaved as hypothesis
    chooses: the node delivers exactly the stream, in order."""

    async def scenario() -> tuple[list[float], list[float]]:
        async with open_bridge() as bridge:
            link = await RedisLink.open(bridge, redis_url)
            w = World(link, mute_after=mute_after, mute_holdoff_s=0.0)
            try:
                async with trio.open_nursery() as nursery:
                    await w.start(nursery)
                    for kind, n in plan:
                        if kind == "ours":
                            await w.append_ours(n)
                        elif kind in ("ours_now", "ours_late"):
                            await w.append_ours_now(n, 0.5 if kind == "ours_now" else 0.0)
                        elif kind == "theirs":
                            await w.append_theirs(n)
                        elif kind == "poll":
                            await w.poll()
                        else:
                            await trio.sleep(n / 1000)
                    truth = await w.settle()
                    nursery.cancel_scope.cancel()
            finally:
                await w.aclose()
                await link.aclose()
        return w.seen, truth

    seen, truth = trio.run(scenario)
    assert seen == truth
