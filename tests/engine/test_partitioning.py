"""engine.partitioning: folding each partition's records alone gives exactly that partition's
share of the whole fold (what a claimer recovers is what the old owner held), and global
records belong to no partition."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.directory import partition_of
from engine.lifecycle import PositionState
from engine.partitioning import record_user, split_state
from engine.records import (
    Approval,
    ApprovalSaved,
    AuditEntry,
    AuditRecorded,
    CommandIssued,
    CommandResolved,
    GuardSaved,
    LevelsMoved,
    PositionSaved,
    ReconciliationEntry,
    ReconciliationRecorded,
    Record,
    SignalSaved,
)
from engine.state import EngineState
from protocol.common import Side
from protocol.device import CloseCommand
from tests.engine.position_helpers import make_position
from tests.engine.user_helpers import signal as make_signal

USERS = 6
PARTS = 4


def _user(i: int) -> str:
    return f"user-{i % USERS}"


def _part(user_id: str) -> int:
    return partition_of(user_id, PARTS)


def _device_user(device_id: str) -> str | None:
    return f"user-{device_id.removeprefix('d')}" if device_id.startswith("d") else None


positions = st.builds(
    lambda i, s, sl: PositionSaved(
        position=make_position(
            i,
            user_id=_user(i),
            device_id=f"d{i % USERS}",
            side=Side.BUY,
            state=s,
            open_price=1000,
            sl=sl,
            tp=2000,
        )
    ),
    st.integers(0, 11),
    st.sampled_from([PositionState.OPEN, PositionState.CLOSING, PositionState.CLOSED]),
    st.integers(1, 999),
)
moves = st.builds(
    lambda i, sl: LevelsMoved(position_id=f"p{i}", sl=sl, tp=None, time_ms=1),
    st.integers(0, 11),
    st.integers(1, 999),
)
issued = st.builds(
    lambda c, i: CommandIssued(
        command=CloseCommand(
            command_id=f"c{c}-{i}", ticket=i + 1, symbol="XAUUSD", volume=0.1, deadline_ms=9
        ),
        position_id=f"p{i}",
        user_id=_user(i),
        device_id=f"d{i % USERS}",
        issued_ms=1,
    ),
    st.integers(0, 2),
    st.integers(0, 11),
)
resolved = st.builds(
    lambda c, i: CommandResolved(
        command_id=f"c{c}-{i}",
        position_id=f"p{i}",
        device_id=f"d{i % USERS}",
        outcome="done",
        time_ms=2,
    ),
    st.integers(0, 2),
    st.integers(0, 11),
)
guards = st.builds(
    lambda u: GuardSaved(user_id=_user(u), peak=1.0, level=0, opens_blocked=False, time_ms=3),
    st.integers(0, USERS - 1),
)
approvals = st.builds(
    lambda u, n: ApprovalSaved(
        approval=Approval(
            id=f"a{n}", user_id=_user(u), signal=f"s/{n}/1", decision="reject", decided_ms=1
        )
    ),
    st.integers(0, USERS - 1),
    st.integers(0, 5),
)
recon = st.builds(
    lambda u: ReconciliationRecorded(
        entry=ReconciliationEntry(time_ms=1, device_id=f"d{u}", kind="open_confirmed")
    ),
    st.integers(0, USERS - 1),
)
records = st.lists(
    st.one_of(positions, positions, moves, issued, resolved, guards, approvals, recon),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(records)
def test_each_partition_folds_to_its_share_of_the_whole(batch: list[Record]) -> None:
    whole = EngineState()
    alone: dict[int, EngineState] = {}
    for record in batch:
        # The node names the user at append time, from its live state (before the fold).
        def position_user(pid: str) -> str | None:
            p = whole.positions.get(pid)
            return None if p is None else p.user_id

        user = record_user(record, position_user, _device_user)
        if user is not None:
            alone.setdefault(_part(user), EngineState()).apply(record)
        whole.apply(record)
    split = split_state(whole, _part)
    for p in set(split) | set(alone):
        got, want = alone.get(p, EngineState()), split.get(p, EngineState())
        assert got.positions == want.positions
        assert got.commands == want.commands
        assert got.approvals == want.approvals
        assert got.guards == want.guards


def test_signals_and_audit_are_global() -> None:
    audit = AuditRecorded(
        entry=AuditEntry(
            time_ms=1, actor_id="u", action="x", target_type="t", target_id="i", outcome="200"
        )
    )
    signal = SignalSaved(signal=make_signal(audience=["user-1"]), received_ms=1)
    for record in (audit, signal):
        assert record_user(record, lambda _: "user-1", lambda _: "user-1") is None
