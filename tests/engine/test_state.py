"""The state fold: coalescing a batch equals applying it record by record; snapshots round-trip.

Recovery's fold of encoded batches is tested against the same oracle in ``test_replay.py``.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.lifecycle import PositionState
from engine.positions import Position
from engine.records import LevelsMoved, PositionSaved
from engine.state import EngineState
from tests.engine.positions import make_position

STATES = [PositionState.OPEN, PositionState.CLOSING, PositionState.CLOSED]


def position(i: int, state: PositionState, sl: int) -> Position:
    return make_position(i, user_id="u", state=state, open_price=1000, sl=sl, tp=2000, ticket=i)


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


@given(st.lists(record, max_size=60))
def test_coalesced_batch_equals_one_by_one(records) -> None:
    one, batch = EngineState(), EngineState()
    for r in records:
        one.apply(r)
    batch.apply_all(records, last_seq=len(records))
    assert batch.positions == one.positions
    assert batch.seq == len(records)


def test_snapshot_round_trip() -> None:
    state = EngineState()
    for i in range(3):
        state.apply(PositionSaved(position=position(i, PositionState.OPEN, 900 + i)))
    state.seq = 42
    back = EngineState.decode_snapshot(state.encode_snapshot())
    assert back.seq == 42 and back.positions == state.positions
