"""The state fold: coalescing a batch equals applying it record by record; snapshots round-trip."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.lifecycle import PositionState
from engine.positions import Position
from engine.records import AlertRaised, LevelsMoved, PositionSaved, encode_batch
from engine.state import EngineState, Replay
from protocol.common import Alert, AlertLevel, Side

STATES = [PositionState.OPEN, PositionState.CLOSING, PositionState.CLOSED]


def position(i: int, state: PositionState, sl: int) -> Position:
    return Position(
        id=f"p{i}",
        user_id="u",
        device_id="d",
        account="1",
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.1,
        state=state,
        open_price=1000,
        sl=sl,
        tp=2000,
        ticket=i,
    )


record = st.one_of(
    st.builds(
        lambda i, s, sl: PositionSaved(position=position(i, s, sl)),
        st.integers(0, 4),
        st.sampled_from(STATES),
        st.integers(1, 999),
    ),
    st.builds(
        lambda i, sl, t: LevelsMoved(position_id=f"p{i}", sl=sl, tp=2000, time_ms=t),
        st.integers(0, 4),
        st.integers(1, 999),
        st.integers(0, 10**6),
    ),
)


alert = st.builds(
    lambda t: AlertRaised(
        alert=Alert(kind="spread", level=AlertLevel.WARNING, message="wide", time_ms=t)
    ),
    st.integers(0, 10**6),
)


@given(st.lists(record, max_size=60))
def test_coalesced_batch_equals_one_by_one(records) -> None:
    one, batch = EngineState(), EngineState()
    for r in records:
        one.apply(r)
    batch.apply_all(records, last_seq=len(records))
    assert batch.positions == one.positions
    assert batch.seq == len(records)


@given(
    st.lists(st.one_of(record, alert), max_size=60),
    st.lists(st.integers(1, 8), min_size=1, max_size=20),
    st.integers(0, 3),
)
def test_replay_of_encoded_batches_equals_one_by_one(records, sizes, skip) -> None:
    """Recovery's path: batches as bytes, saves decoded last, history skipped unread, the first
    batch straddling the snapshot (its first ``skip`` records already in it)."""
    base = [PositionSaved(position=position(i, PositionState.OPEN, 500 + i)) for i in range(5)]
    one, lazy = EngineState(), EngineState()
    for r in base:
        one.apply(r)
        lazy.apply(r)
    skip = min(skip, len(records))
    for r in records[skip:]:
        one.apply(r)
    replay, start, k, folded = Replay(lazy), 0, 0, 0
    while start < len(records):
        size = sizes[k % len(sizes)]
        batch = records[start : start + size]
        folded += replay.add_payload(encode_batch(batch), max(0, skip - start), start + size)
        start, k = start + size, k + 1
    replay.finish()
    assert lazy.positions == one.positions
    assert folded == len(records) - skip


def test_snapshot_round_trip() -> None:
    state = EngineState()
    for i in range(3):
        state.apply(PositionSaved(position=position(i, PositionState.OPEN, 900 + i)))
    state.seq = 42
    back = EngineState.decode_snapshot(state.encode_snapshot())
    assert back.seq == 42 and back.positions == state.positions
