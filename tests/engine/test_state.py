"""Engine state snapshots round-trip.

Recovery's fold of encoded batches is tested against the record-by-record fold in
``test_replay.py``.
"""

from __future__ import annotations

from engine.lifecycle import PositionState
from engine.positions import Position
from engine.records import PositionSaved
from engine.state import EngineState
from tests.engine.position_helpers import make_position


def position(i: int, state: PositionState, sl: int) -> Position:
    return make_position(i, user_id="u", state=state, open_price=1000, sl=sl, tp=2000, ticket=i)


def test_snapshot_round_trip() -> None:
    state = EngineState()
    for i in range(3):
        state.apply(PositionSaved(position=position(i, PositionState.OPEN, 900 + i)))
    state.seq = 42
    back = EngineState.decode_snapshot(state.encode_snapshot())
    assert back.seq == 42 and back.positions == state.positions
