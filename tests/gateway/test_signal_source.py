"""Signals in a cluster: two nodes (two pools, two engine states) over one database.

Postgres decides which post of a signal is the first: posted to both nodes at once, a signal is
new on exactly one, and both answer with that first record. A signal either node recorded is
found by the other and folded into its state (for its user actors and views). The record reads
back exactly as it was received. One node alone (``LocalSignals``) keeps today's path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.node import MemoryJournal, Node
from engine.records import SignalSaved, signal_key
from engine.state import RETENTION_MS
from gateway.signal_source import LocalSignals, SharedSignals
from persistence import Bridge, Database, open_database
from persistence.signal_store import SignalStore
from protocol.common import Side
from protocol.device import OrderType
from protocol.signals import BreakEvenSpec, Signal, TrailingSpec

NOW = 1_800_000_000_000


def make_signal(signal_id: str = "s1", audience: list[str] | None = None, **fields: Any) -> Signal:
    values: dict[str, Any] = dict(
        strategy_id="strat",
        signal_id=signal_id,
        audience=audience or ["u-alice"],
        symbol="XAUUSD",
        side=Side.BUY,
        entry=2000.5,
        sl=1995.5,
        tp=2010.5,
        volume=0.1,
        created_at_ms=NOW,
        expires_at_ms=NOW + 900_000,
    )
    values.update(fields)
    return Signal(**values)


@pytest.fixture
async def other_db(bridge: Bridge, pg_dsn: str) -> AsyncIterator[Database]:
    async with open_database(bridge, pg_dsn, retry_for_s=5) as opened:
        yield opened


@pytest.fixture
def nodes(db: Database, other_db: Database) -> tuple[SharedSignals, SharedSignals]:
    return SharedSignals(Node(), SignalStore(db)), SharedSignals(Node(), SignalStore(other_db))


async def test_posted_to_two_nodes_at_once_a_signal_is_new_on_exactly_one(
    nodes: tuple[SharedSignals, SharedSignals],
) -> None:
    a, b = nodes
    answers: list[tuple[SignalSaved, bool]] = []

    async def post(source: SharedSignals, signal: Signal, received_ms: int) -> None:
        answers.append(await source.accept(SignalSaved(signal=signal, received_ms=received_ms)))

    for n in range(20):
        signal = make_signal(f"race-{n}")
        answers.clear()
        async with trio.open_nursery() as nursery:
            for i, source in enumerate([a, b, a, b]):
                nursery.start_soon(post, source, signal, NOW + i)
        assert sum(new for _, new in answers) == 1
        first = next(saved for saved, new in answers if new)
        assert all(saved == first for saved, _ in answers)
        key = signal_key("strat", f"race-{n}", 1)
        assert a.node.state.signals[key] == first == b.node.state.signals[key]


async def test_a_signal_recorded_on_one_node_is_found_on_the_other(
    nodes: tuple[SharedSignals, SharedSignals],
) -> None:
    a, b = nodes
    signal = make_signal("found", audience=["u-alice", "u-bob"])
    key = signal_key("strat", "found", 1)
    saved, new = await a.accept(SignalSaved(signal=signal, received_ms=NOW + 5))
    assert new and key not in b.node.state.signals
    assert await b.get(key) == saved
    assert b.node.state.signals[key] == saved  # cached: user actors and views see it
    # A repeat on B answers A's record without writing anything.
    again, new = await b.accept(
        SignalSaved(signal=make_signal("found", comment="x"), received_ms=1)
    )
    assert not new and again == saved
    assert await b.get(signal_key("strat", "missing", 1)) is None
    assert await b.get("no-slashes") is None and await b.get("a/b/99999999999") is None


async def test_recent_lists_every_nodes_signals_for_their_audience(
    nodes: tuple[SharedSignals, SharedSignals],
) -> None:
    a, b = nodes
    await a.accept(SignalSaved(signal=make_signal("for-alice"), received_ms=NOW))
    await b.accept(SignalSaved(signal=make_signal("for-bob", ["u-bob"]), received_ms=NOW + 1))
    gone = make_signal("gone", expires_at_ms=NOW - RETENTION_MS - 1)
    await b.accept(SignalSaved(signal=gone, received_ms=NOW - RETENTION_MS - 2))

    def ids(found: list[SignalSaved]) -> list[str]:
        return [s.signal.signal_id for s in found]

    assert ids(await a.recent(NOW, "u-alice")) == ["for-alice"]
    assert ids(await a.recent(NOW, "u-bob")) == ["for-bob"]
    assert ids(await b.recent(NOW, None)) == ["for-bob", "for-alice"]  # newest received first
    assert await b.recent(NOW, "u-nobody") == []


# Values as the API accepts them (msgspec checks the constraints when the row is read back,
# as it does when a signal is posted).
_price = st.floats(min_value=1e-9, max_value=1e9, exclude_max=True)
_distance = st.floats(min_value=0, max_value=1e9, exclude_max=True)
_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}", fullmatch=True)
_times = st.integers(0, 2**53)


@st.composite
def signals(draw: st.DrawFn) -> Signal:
    return Signal(
        strategy_id=draw(_ids),
        signal_id=draw(_ids),
        audience=draw(st.lists(_ids, min_size=1, max_size=5)),
        version=draw(st.integers(1, 2**31 - 1)),
        symbol=draw(st.from_regex(r"[A-Za-z0-9_.#+!-]{1,32}", fullmatch=True)),
        side=draw(st.sampled_from(Side)),
        order_type=draw(st.sampled_from(OrderType)),
        entry=draw(_price),
        sl=draw(st.none() | _price),
        tp=draw(st.none() | _price),
        volume=draw(st.none() | st.floats(min_value=1e-6, max_value=1e6)),
        risk_percent=draw(st.none() | st.floats(min_value=1e-6, max_value=100)),
        created_at_ms=draw(_times),
        expires_at_ms=draw(st.none() | _times),
        comment=draw(st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=64)),
        max_slippage_points=draw(st.none() | st.integers(0, 2**31 - 1)),
        trailing=draw(
            st.none()
            | st.builds(TrailingSpec, distance=_price, step=_distance, activation=_distance)
        ),
        break_even=draw(st.none() | st.builds(BreakEvenSpec, trigger=_price, offset=_distance)),
    )


async def test_a_signal_reads_back_exactly(db: Database) -> None:
    store = SignalStore(db)
    seen: set[str] = set()

    @settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(signal=signals(), received_ms=st.integers(0, 253_402_300_799_000))
    def check(signal: Signal, received_ms: int) -> None:
        key = signal_key(signal.strategy_id, signal.signal_id, signal.version)
        if key in seen:
            return
        seen.add(key)
        trio.from_thread.run(roundtrip, signal, received_ms, key)

    async def roundtrip(signal: Signal, received_ms: int, key: str) -> None:
        assert await store.insert_once(signal, received_ms)
        assert await store.get(key) == SignalSaved(signal=signal, received_ms=received_ms)
        assert not await store.insert_once(signal, received_ms + 1)

    await trio.to_thread.run_sync(check)


async def test_one_node_keeps_its_signals_in_its_state() -> None:
    node = Node(journal=MemoryJournal())
    local = LocalSignals(node)
    saved = SignalSaved(signal=make_signal("local"), received_ms=NOW)
    assert await local.accept(saved) == (saved, True)
    assert await local.accept(SignalSaved(signal=saved.signal, received_ms=NOW + 1)) == (
        saved,
        False,
    )
    assert node.state.signals == {signal_key("strat", "local", 1): saved}
    assert await local.get(signal_key("strat", "local", 1)) == saved
    assert await local.recent(NOW, "u-bob") == [saved]  # the routes filter the audience
