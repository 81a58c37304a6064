"""The cluster tick path: per-symbol streams with contiguous seqs, the reader, replays, bars.

Real Redis (a private ``redis-server`` per test, killed and restarted by the outage test) and
real Postgres (the ``tick_bars`` table of migration 0007).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from persistence import Bridge, Database, RedisLink
from persistence.tick_bars import TickBar, TickBarStore, bar_path
from persistence.tick_reader import StreamReader, TickRing, seq_holes
from persistence.tick_streams import (
    AppendInFlight,
    Stamped,
    TickAppender,
    TickKeys,
    format_stream_id,
    parse_stream_id,
)
from protocol.common import Alert
from protocol.feed import Quote
from tests.fixtures.redis import RedisProcess


def _prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}:"


def _quote(n: int, symbol: str = "XAUUSD") -> Quote:
    return Quote(symbol=symbol, bid=2000.0 + n, ask=2000.5 + n, time_ms=1_000 + n)


@pytest.fixture
async def link(bridge: Bridge, redis_url: str) -> AsyncIterator[RedisLink]:
    opened = await RedisLink.open(bridge, redis_url)
    yield opened
    await opened.aclose()


@pytest.fixture
async def appenders() -> AsyncIterator[Callable[..., TickAppender]]:
    """Builds appenders and closes their connections after the test."""
    made: list[TickAppender] = []

    def make(link: RedisLink, **options: Any) -> TickAppender:
        made.append(TickAppender(link, **options))
        return made[-1]

    yield make
    for appender in made:
        await appender.aclose()


async def _collect(reader: StreamReader, into: list[Stamped]) -> None:
    async for item in reader:
        into.append(item)


async def _wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.02)


# -- pure pieces ----------------------------------------------------------------------------

ids = st.tuples(st.integers(0, 2**48), st.integers(0, 2**20))


@given(ids, ids)
def test_stream_ids_compare_as_integer_tuples(a: tuple[int, int], b: tuple[int, int]) -> None:
    pa, pb = parse_stream_id(format_stream_id(a)), parse_stream_id(format_stream_id(b).encode())
    assert (pa, pb) == (a, b)
    assert (pa < pb) == (a < b) and (pa == pb) == (a == b)


def test_string_order_of_stream_ids_is_wrong() -> None:
    assert "9-0" > "10-0"  # what comparing the strings would do
    assert parse_stream_id("9-0") < parse_stream_id(b"10-0")
    assert parse_stream_id("5-10") > parse_stream_id("5-9")


@given(st.sets(st.integers(0, 60)), st.integers(-5, 60), st.integers(-5, 70))
def test_seq_holes_against_a_set_oracle(present: set[int], after: int, upto: int) -> None:
    holes = seq_holes(sorted(present), after, upto)
    missing = {s for lo, hi in holes for s in range(lo, hi + 1)}
    assert missing == {s for s in range(after + 1, upto + 1) if s not in present}
    assert all(lo <= hi for lo, hi in holes)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(holes))  # maximal


def _bar(first: int, last: int, low: float, high: float, second: int = 1_700_000_000) -> TickBar:
    return TickBar(
        symbol="XAUUSD",
        second=second,
        first_seq=first,
        last_seq=last,
        bid_min=low,
        bid_max=high,
        ask_min=low + 0.5,
        ask_max=high + 0.5,
    )


def test_bar_path_tie_rule() -> None:
    single = bar_path(_bar(7, 7, 2000.0, 2000.0), 7, 7, None)
    assert [(p.seq, p.bid, p.ask) for p in single] == [(7, 2000.0, 2000.5)]
    bar = _bar(10, 19, 1990.0, 2030.0)
    near_low = bar_path(bar, 10, 19, 2000.0)
    assert [(p.seq, p.bid) for p in near_low] == [(10, 1990.0), (19, 2030.0)]
    near_high = bar_path(bar, 12, 15, 2025.0)
    assert [(p.seq, p.bid) for p in near_high] == [(12, 2030.0), (15, 1990.0)]
    tie = bar_path(bar, 10, 19, 2010.25)  # mids 1990.25 and 2030.25: equally near
    assert [p.bid for p in tie] == [1990.0, 2030.0]
    unknown = bar_path(bar, 10, 19, None)
    assert [p.bid for p in unknown] == [1990.0, 2030.0]
    assert all(p.bid <= p.ask for p in near_low + near_high)
    assert [p.time_ms for p in near_low] == [bar.second * 1000, bar.second * 1000 + 999]


def _stamped(seq: int, symbol: str = "XAUUSD") -> Stamped:
    return Stamped(symbol=symbol, seq=seq, stream_id=(seq, 0), quote=_quote(seq, symbol))


def test_ring_keeps_the_newest_in_seq_order() -> None:
    ring = TickRing(capacity=5)
    for seq in (1, 2, 3, 5, 6, 7):
        ring.add(_stamped(seq))
    ring.add(_stamped(4))  # late, inside the window: inserted in order
    ring.add(_stamped(6))  # repeated: ignored
    ring.add(_stamped(1))  # older than a full ring keeps: ignored
    assert [s.seq for s in ring.between("XAUUSD", 0, 100)] == [3, 4, 5, 6, 7]
    assert [s.seq for s in ring.between("XAUUSD", 4, 6)] == [5, 6]
    assert ring.between("EURUSD", 0, 100) == []
    ring.add(Stamped(symbol="XAUUSD", seq=9, stream_id=(0, 0), quote=_quote(9), synthetic=True))
    assert ring.newest("XAUUSD") == _stamped(7)  # synthetic quotes never enter the ring


# -- appending ------------------------------------------------------------------------------


async def test_concurrent_appenders_get_contiguous_seqs(
    bridge: Bridge, redis_url: str, appenders: Callable[..., TickAppender]
) -> None:
    prefix = _prefix()
    links = [await RedisLink.open(bridge, redis_url) for _ in range(2)]  # two nodes
    nodes = [appenders(link, keep_ms=600_000, prefix=prefix) for link in links]
    results: dict[int, list[Stamped]] = {0: [], 1: []}

    async def node(i: int) -> None:
        for n in range(40):
            batch = [_quote(i * 1000 + n * 3 + k, ("XAUUSD", "EURUSD")[k % 2]) for k in range(3)]
            results[i] += await nodes[i].append(batch)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node, 0)
            nursery.start_soon(node, 1)
    finally:
        for link in links:
            await link.aclose()
    everything = results[0] + results[1]
    assert len(everything) == 240
    for symbol in ("XAUUSD", "EURUSD"):
        mine = [s for s in everything if s.symbol == symbol]
        by_seq = sorted(mine, key=lambda s: s.seq)
        assert [s.seq for s in by_seq] == list(range(by_seq[0].seq, by_seq[0].seq + len(mine)))
        # stream order (ids as integer tuples) is seq order
        assert sorted(mine, key=lambda s: s.stream_id) == by_seq
        for i in (0, 1):  # each node's quotes of a symbol keep their call order
            own = [s.quote for s in by_seq if s in results[i]]
            assert own == [s.quote for s in results[i] if s.symbol == symbol]
    assert nodes[0].stats().appended == nodes[1].stats().appended == 120


async def test_one_batch_is_one_round_trip(
    link: RedisLink, appenders: Callable[..., TickAppender]
) -> None:
    appender = appenders(link, keep_ms=600_000, prefix=_prefix())
    await appender.append([_quote(0)])  # loads the script once (NOSCRIPT on a fresh server)

    async def commandstats() -> dict[str, int]:
        info: dict[str, Any] = await link.call(lambda r: r.info("commandstats"))
        return {name: stats["calls"] for name, stats in info.items()}

    before = await commandstats()
    calls_before, bridged_before = appender.conn.commands, link.bridge.calls_total
    batch = [_quote(n, ("XAUUSD", "EURUSD", "GBPUSD")[n % 3]) for n in range(90)]
    stamped = await appender.append(batch)
    assert appender.conn.commands - calls_before == 1  # one command on its own connection...
    assert link.bridge.calls_total == bridged_before  # ...none through the asyncio bridge...
    after = await commandstats()
    assert after["cmdstat_evalsha"] - before.get("cmdstat_evalsha", 0) == 1  # ...one EVALSHA
    changed = {name for name in after if after[name] != before.get(name)}
    # everything else that ran ran inside the script (plus our own INFO)
    assert changed <= {"cmdstat_evalsha", "cmdstat_info", "cmdstat_time", "cmdstat_exists"} | {
        "cmdstat_set",
        "cmdstat_incr",
        "cmdstat_xadd",
    }
    assert [s.quote for s in stamped] == batch
    assert appender.stats().script_calls == 2


async def test_streams_are_trimmed_by_time(
    link: RedisLink, appenders: Callable[..., TickAppender]
) -> None:
    prefix = _prefix()
    appender = appenders(link, keep_ms=1, prefix=prefix)
    key = TickKeys(prefix).stream("XAUUSD")
    appended = 0
    for n in range(200):  # bounded: MINID ~ drops whole macro nodes (100 entries) once old
        appended += len(await appender.append([_quote(n * 50 + k) for k in range(50)]))
        length = await link.call(lambda r: r.xlen(key))
        if length < appended:
            break
        await trio.sleep(0.002)
    else:
        pytest.fail("the stream was never trimmed")
    oldest: Any = await link.call(lambda r: r.xrange(key, count=1))
    assert int(oldest[0][1][b"s"]) > appended - length  # the oldest entries went first


# -- reading: gaps --------------------------------------------------------------------------


async def test_reader_detects_gaps_exactly_and_fills_them(
    link: RedisLink, db: Database, appenders: Callable[..., TickAppender]
) -> None:
    prefix = _prefix()
    bars = TickBarStore(db)
    alerts: list[Alert] = []
    gaps: list[tuple[str, int, int]] = []
    appender = appenders(link, keep_ms=600_000, prefix=prefix, bars=bars)
    reader = await StreamReader.open(
        link,
        prefix=prefix,
        bars=bars,
        count=1,  # one entry per read: the test decides when the reader reads
        on_alert=alerts.append,
        on_gap=lambda *gap: gaps.append(gap),
    )
    keys = TickKeys(prefix)
    batches = reader.batches()
    try:
        first = await appender.append([_quote(n) for n in range(3)])
        base = first[-1].seq
        reader.watch("XAUUSD")
        got: list[Stamped] = []

        async def read_one() -> None:
            got.extend(await batches.__anext__())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_one)
            await _wait_until(lambda: reader.symbols == {"XAUUSD"})
            later = await appender.append([_quote(n) for n in range(3, 8)])  # seqs base+1..+5
        assert [s.seq for s in got] == [base + 1]
        # base+2 and base+3 leave the stream before the reader gets to them
        stream = keys.stream("XAUUSD")
        gone = [format_stream_id(s.stream_id) for s in later[1:3]]
        await link.call(lambda r: r.xdel(stream, *gone))
        await bars.flush()
        got = await batches.__anext__()
        assert gaps == [("XAUUSD", base + 1, base + 4)]
        assert [(s.seq, s.synthetic) for s in got] == [
            (base + 2, True),
            (base + 3, True),
            (base + 4, False),
        ]
        assert got[-1] == later[3]
        assert {s.quote.bid for s in got[:2]} <= {2000.0 + n for n in range(8)}
        assert [a.kind for a in alerts] == ["tick_replay_bars"]

        # Two seqs lost without a trace (the counter moved, no entry, no bar).
        await link.call(lambda r: r.incrby(keys.seq("XAUUSD"), 2))
        last = await appender.append([_quote(9)])
        got = await batches.__anext__()
        assert [s.seq for s in got] == [base + 5]
        got = await batches.__anext__()
        assert [(s.seq, s.synthetic) for s in got] == [(last[0].seq, False)]
        assert gaps[-1] == ("XAUUSD", base + 5, base + 8)
        assert alerts[-1].kind == "tick_replay_missing" and alerts[-1].value == 2
        stats = reader.stats()
        assert stats.gaps_detected == 2 and stats.missing == 2 and stats.replayed_from_bars == 2
    finally:
        await batches.aclose()
        await reader.aclose()


async def test_watch_from_a_checkpoint_replays_then_follows(
    link: RedisLink, appenders: Callable[..., TickAppender]
) -> None:
    prefix = _prefix()
    appender = appenders(link, keep_ms=600_000, prefix=prefix)
    reader = await StreamReader.open(link, prefix=prefix)
    stamped = await appender.append([_quote(n) for n in range(6)])
    reader.watch("XAUUSD", after_seq=stamped[1].seq)
    got: list[Stamped] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, reader, got)
        await _wait_until(lambda: len(got) == 4)
        more = await appender.append([_quote(n) for n in range(6, 9)])
        await _wait_until(lambda: len(got) == 7)
        nursery.cancel_scope.cancel()
    await reader.aclose()
    assert got == stamped[2:] + more
    assert reader.stats().replayed_from_stream == 4 and reader.stats().gaps_detected == 0


# -- replays --------------------------------------------------------------------------------


async def test_replay_takes_ring_then_stream_then_bars_in_order(
    link: RedisLink, db: Database, appenders: Callable[..., TickAppender]
) -> None:
    prefix = _prefix()
    bars = TickBarStore(db)
    alerts: list[Alert] = []
    appender = appenders(link, keep_ms=600_000, prefix=prefix, bars=bars)
    ring = TickRing(capacity=10)
    reader = await StreamReader.open(
        link, prefix=prefix, bars=bars, ring=ring, on_alert=alerts.append
    )
    try:
        stamped: list[Stamped] = []
        for n in range(0, 30, 5):
            stamped += await appender.append([_quote(n + k) for k in range(5)])
        for item in stamped:
            ring.add(item)  # the newest 10 stay
        await bars.flush()
        checkpoint = stamped[2].seq
        # The stream is trimmed past the checkpoint: entries up to stamped[9] are gone.
        key = TickKeys(prefix).stream("XAUUSD")
        await link.call(
            lambda r: r.xtrim(key, minid=format_stream_id(stamped[10].stream_id), approximate=False)
        )

        replayed = await reader.replay("XAUUSD", checkpoint)
        real = [s for s in replayed.quotes if not s.synthetic]
        assert real == stamped[10:]
        assert (replayed.from_ring, replayed.from_stream) == (10, 10)
        synthetic = [s for s in replayed.quotes if s.synthetic]
        assert 1 <= len(synthetic) == replayed.from_bars <= 2 * 7  # at most 2 per bar
        assert {s.seq for s in synthetic} <= {s.seq for s in stamped[3:10]}
        assert synthetic[0].seq == stamped[3].seq and synthetic[-1].seq == stamped[9].seq
        # a bar's bounds span its whole second, quotes outside the replayed range included
        bids = [q.quote.bid for q in stamped]
        assert all(min(bids) <= s.quote.bid <= max(bids) for s in synthetic)
        assert [s.seq for s in replayed.quotes] == sorted(s.seq for s in replayed.quotes)
        assert replayed.missing == []
        assert [a.kind for a in alerts] == ["tick_replay_bars"]
        assert alerts[0].symbol == "XAUUSD"

        # Without bars, what the stream lost is reported missing (and alerted).
        bare = await StreamReader.open(link, prefix=prefix, ring=ring, on_alert=alerts.append)
        lost = await bare.replay("XAUUSD", checkpoint, stamped[12].seq)
        await bare.aclose()
        assert lost.missing == [(stamped[3].seq, stamped[9].seq)]
        assert [s.seq for s in lost.quotes] == [s.seq for s in stamped[10:13]]
        assert alerts[-1].kind == "tick_replay_missing"
    finally:
        await reader.aclose()


async def test_replay_from_bars_follows_the_tie_rule(link: RedisLink, db: Database) -> None:
    prefix = _prefix()
    bars = TickBarStore(db)
    ring = TickRing()
    ring.add(Stamped(symbol="XAUUSD", seq=100, stream_id=(5, 0), quote=_quote(0)))  # mid 2000.25
    for bar in (
        _bar(101, 110, 1990.0, 2030.0, second=1_700_000_000),  # low nearer: low, then high
        _bar(111, 120, 1995.0, 2026.0, second=1_700_000_001),  # after 2030.25: high first
        _bar(121, 121, 2010.0, 2010.0, second=1_700_000_002),  # one quote: exact
    ):
        for seq, bid in ((bar.first_seq, bar.bid_min), (bar.last_seq, bar.bid_max)):
            bars.add(bar.symbol, bar.second, seq, bid, bid + 0.5)
    await bars.flush()
    reader = await StreamReader.open(link, prefix=prefix, bars=bars, ring=ring)
    replayed = await reader.replay("XAUUSD", 100, 121)
    await reader.aclose()
    assert [(s.seq, s.quote.bid) for s in replayed.quotes] == [
        (101, 1990.0),
        (110, 2030.0),
        (111, 2026.0),
        (120, 1995.0),
        (121, 2010.0),
    ]
    assert all(s.synthetic for s in replayed.quotes)
    assert replayed.from_bars == 5 and replayed.missing == []


async def test_bars_from_several_nodes_merge_and_old_ones_are_trimmed(db: Database) -> None:
    node_a, node_b = TickBarStore(db), TickBarStore(db, keep_s=3_600, clock_s=lambda: 10_000)
    node_a.add("XAUUSD", 9_000, 5, 2000.0, 2000.5)
    node_a.add("XAUUSD", 9_000, 7, 2003.0, 2003.5)
    node_b.add("XAUUSD", 9_000, 6, 1999.0, 1999.5)
    node_b.add("XAUUSD", 5_000, 1, 2100.0, 2100.5)
    assert await node_a.flush() == 1 and await node_b.flush() == 2
    assert await node_a.flush() == 0
    assert await node_b.read("XAUUSD", 0, 100) == [
        TickBar(
            symbol="XAUUSD",
            second=5_000,
            first_seq=1,
            last_seq=1,
            bid_min=2100.0,
            bid_max=2100.0,
            ask_min=2100.5,
            ask_max=2100.5,
        ),
        TickBar(
            symbol="XAUUSD",
            second=9_000,
            first_seq=5,
            last_seq=7,
            bid_min=1999.0,
            bid_max=2003.0,
            ask_min=1999.5,
            ask_max=2003.5,
        ),
    ]
    assert await node_b.trim() == 1  # 5_000 < 10_000 - 3_600
    assert [b.second for b in await node_a.read("XAUUSD", 0, 100)] == [9_000]


# -- Redis going away -----------------------------------------------------------------------


async def test_redis_outage_holds_alerts_and_sweeps_in_order(
    bridge: Bridge, redis_server: RedisProcess, appenders: Callable[..., TickAppender]
) -> None:
    prefix = _prefix()
    link = await RedisLink.open(bridge, redis_server.url, op_timeout_s=0.3)
    alerts: list[Alert] = []
    appender = appenders(
        link,
        keep_ms=600_000,
        prefix=prefix,
        backlog_limit=5,
        retry_after_s=0.1,
        on_alert=alerts.append,
    )
    reader_alerts: list[Alert] = []
    reader = await StreamReader.open(
        link, prefix=prefix, retry_after_s=0.1, on_alert=reader_alerts.append
    )
    got: list[Stamped] = []
    try:
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                async for item in reader:
                    got.append(item)

            reader.watch("XAUUSD")
            nursery.start_soon(consume)
            await _wait_until(lambda: reader.symbols == {"XAUUSD"})
            before = await appender.append([_quote(n) for n in range(3)])
            await _wait_until(lambda: len(got) == 3)

            redis_server.kill()
            assert await appender.append([_quote(n) for n in range(3, 6)]) == []
            assert await appender.append([_quote(n) for n in range(6, 9)]) == []
            stats = appender.stats()
            assert (stats.backlog, stats.dropped, stats.outages) == (5, 1, 1)
            assert [a.kind for a in alerts] == ["tick_stream_down", "tick_backlog_overflow"]
            await _wait_until(lambda: reader.state.degraded)

            redis_server.start()  # back, and empty
            swept: list[Stamped] = []
            for _ in range(100):  # bounded: the pooled connections die once, then reconnect
                swept += await appender.sweep()
                if appender.backlog == 0:
                    break
                await trio.sleep(0.05)
            assert [s.quote for s in swept] == [_quote(n) for n in range(4, 9)]  # 3 dropped
            seqs = [s.seq for s in swept]
            assert seqs == list(range(seqs[0], seqs[0] + 5))
            assert seqs[0] > before[-1].seq  # a restarted counter starts above the old seqs
            assert appender.stats().swept == 5 and alerts[-1].kind == "tick_stream_recovered"
            assert len(alerts) == 3  # one alert per event, not per quote

            await _wait_until(lambda: len(got) == 8)  # the reader reconnected on its own
            nursery.cancel_scope.cancel()
        assert got == before + swept
        # Redis lost its memory: the jump is one gap nobody can fill, reported and alerted.
        assert reader.stats().gaps_detected == 1
        assert [a.kind for a in reader_alerts] == ["tick_replay_missing"]
    finally:
        await reader.aclose()
        await link.aclose()


async def test_foreign_entries_on_a_stream_are_counted_and_skipped(
    link: RedisLink, appenders: Callable[..., TickAppender]
) -> None:
    """Entries nobody of ours wrote (a bad seq, a missing field, a quote that does not decode)
    are counted as decode errors; the reader goes on."""
    prefix = _prefix()
    appender = appenders(link, keep_ms=600_000, prefix=prefix)
    reader = await StreamReader.open(link, prefix=prefix)
    stream = TickKeys(prefix).stream("XAUUSD")
    reader.watch("XAUUSD")
    got: list[Stamped] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, reader, got)
        await _wait_until(lambda: reader.symbols == {"XAUUSD"})
        for fields in (
            {"s": "not-a-number", "q": b"\x80"},
            {"s": "7"},
            {"q": b"\xc1\xc1"},
            {"s": "8", "q": b"\xc1 not msgpack"},
        ):
            await link.call(lambda r, f=fields: r.xadd(stream, f))
        ours = await appender.append([_quote(1)])
        await _wait_until(lambda: len(got) == 1)
        nursery.cancel_scope.cancel()
    await reader.aclose()
    assert got == ours
    assert reader.stats().decode_errors == 4


# -- appends from the caller's own call -------------------------------------------------------


async def test_an_append_from_the_callers_own_call_in_time_or_finished_later(
    link: RedisLink, appenders: Callable[..., TickAppender]
) -> None:
    appender = appenders(link, keep_ms=600_000, prefix=_prefix())
    assert appender.append_nowait([_quote(0)], 0.5) is None  # not connected yet: nothing done
    first = await appender.append([_quote(0)])
    now = appender.append_nowait([_quote(1), _quote(2)], 0.5)
    assert isinstance(now, list)
    assert [s.seq for s in now] == [first[0].seq + 1, first[0].seq + 2]
    flight = appender.append_nowait([_quote(3)], 0.0)  # no wait at all: left in flight
    assert isinstance(flight, AppendInFlight)
    assert appender.append_nowait([_quote(4)], 0.5) is None  # busy until it is finished
    later = await appender.finish(flight)
    assert [s.seq for s in later] == [first[0].seq + 3]
    assert appender.appended_total == 4 and appender.backlog == 0


async def test_an_append_from_the_callers_own_call_after_a_script_flush(
    link: RedisLink, appenders: Callable[..., TickAppender]
) -> None:
    """Redis lost the script (a restart, SCRIPT FLUSH): the quotes wait in the backlog, no
    outage is declared, and the next append loads the script and stamps them first."""
    alerts: list[Alert] = []
    appender = appenders(link, keep_ms=600_000, prefix=_prefix(), on_alert=alerts.append)
    first = await appender.append([_quote(0)])
    await link.call(lambda r: r.script_flush())
    assert appender.append_nowait([_quote(1), _quote(2)], 0.5) == []
    assert appender.backlog == 2 and alerts == []
    assert appender.append_nowait([_quote(3)], 0.5) is None  # a backlog: the task's work
    swept = await appender.append([_quote(3)])
    assert [s.quote.bid for s in swept] == [_quote(n).bid for n in (1, 2, 3)]
    assert [s.seq for s in swept] == [first[0].seq + n for n in (1, 2, 3)]


async def test_redis_dying_under_an_append_from_the_callers_own_call(
    bridge: Bridge, redis_server: RedisProcess, appenders: Callable[..., TickAppender]
) -> None:
    link = await RedisLink.open(bridge, redis_server.url, op_timeout_s=0.3)
    alerts: list[Alert] = []
    try:
        appender = appenders(link, keep_ms=600_000, prefix=_prefix(), on_alert=alerts.append)
        await appender.append([_quote(0)])
        redis_server.kill()
        assert appender.append_nowait([_quote(1)], 0.5) == []  # held, never dropped
        assert appender.backlog == 1
        assert [a.kind for a in alerts] == ["tick_stream_down"]
        assert appender.append_nowait([_quote(2)], 0.5) is None  # the task's work now
    finally:
        await link.aclose()
