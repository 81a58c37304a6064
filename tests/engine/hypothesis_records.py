"""Hypothesis strategies for journal records (test helpers): positions saved, moved, closed
and saved again under a few ids, history, commands and guards, as a journal holds them."""

from __future__ import annotations

from hypothesis import strategies as st

from engine.lifecycle import PositionState
from engine.positions import Position
from engine.records import (
    AlertRaised,
    AuditEntry,
    AuditRecorded,
    CommandIssued,
    CommandResolved,
    GuardSaved,
    LevelsMoved,
    PositionSaved,
)
from protocol.common import Alert, AlertLevel, Side
from protocol.device import CloseCommand
from tests.engine.position_helpers import make_position

STATES = [PositionState.OPEN, PositionState.CLOSING, PositionState.CLOSED, PositionState.REJECTED]
IDS = st.integers(0, 7)  # few ids: every position is saved and moved many times


def position(i: int, state: PositionState, sl: int, modify_count: int = 0) -> Position:
    side = Side.BUY if i % 2 else Side.SELL
    return make_position(
        i,
        side=side,
        state=state,
        open_price=1000,
        sl=sl,
        tp=2000,
        ticket=i,
        modify_count=modify_count,
    )


saved = st.builds(
    lambda i, s, sl, m: PositionSaved(position=position(i, s, sl, m)),
    IDS,
    st.sampled_from(STATES),
    st.integers(1, 999),
    st.integers(0, 5),
)
moved = st.builds(
    lambda i, sl, tp, t: LevelsMoved(position_id=f"p{i}", sl=sl, tp=tp, time_ms=t),
    IDS,
    st.one_of(st.none(), st.integers(1, 999)),
    st.one_of(st.none(), st.integers(1000, 3000)),
    st.integers(0, 10**6),
)
history = st.one_of(
    st.builds(
        lambda t: AlertRaised(
            alert=Alert(kind="spread", level=AlertLevel.WARNING, message="wide", time_ms=t)
        ),
        st.integers(0, 10**6),
    ),
    st.builds(
        lambda t, i: AuditRecorded(
            entry=AuditEntry(
                time_ms=t,
                actor_id="u",
                action="position.view",
                target_type="position",
                target_id=f"p{i}",
                outcome="200",
            )
        ),
        st.integers(0, 10**6),
        IDS,
    ),
)
commands = st.one_of(
    st.builds(
        lambda c, i: CommandIssued(
            command=CloseCommand(
                command_id=f"c{c}", ticket=i + 1, symbol="XAUUSD", volume=0.1, deadline_ms=9
            ),
            position_id=f"p{i}",
            user_id="u",
            device_id="d",
            issued_ms=1,
        ),
        st.integers(0, 3),
        IDS,
    ),
    st.builds(
        lambda c: CommandResolved(
            command_id=f"c{c}", position_id="p0", device_id="d", outcome="done", time_ms=2
        ),
        st.integers(0, 3),
    ),
    st.builds(
        lambda u, peak: GuardSaved(
            user_id=f"u{u}", peak=peak, level=0, opens_blocked=False, time_ms=3
        ),
        st.integers(0, 2),
        st.one_of(st.none(), st.floats(0, 1e6)),
    ),
)
record = st.one_of(saved, saved, moved, moved, moved, history, commands)
