"""Which partition a journal record belongs to, and a state cut along partitions.

In cluster mode (``docs/architecture.md``, "Scaling past one process") every record that
changes a user's state is journaled under that user's partition, fenced by the partition's
lease; a claimer folds exactly its partitions' records. Records of no user (signals, audit
entries, market alerts) are global: written once, with ``ON CONFLICT DO NOTHING``, under no
partition.

:func:`record_user` names a record's user. Most records carry it; a trailing move names only
its position, a command's end and a reconciliation entry only their device: the caller's
lookups answer those (the live state's positions, the registry's devices), which always know
them while the record is being appended (a record is appended by the actor of a user this node
holds). Pure.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.records import (
    AlertRaised,
    ApprovalSaved,
    AuditRecorded,
    CommandIssued,
    CommandResolved,
    GuardSaved,
    LevelsMoved,
    PositionSaved,
    ReconciliationRecorded,
    Record,
    SignalSaved,
)
from engine.state import EngineState

__all__ = ["record_user", "split_state"]

Lookup = Callable[[str], "str | None"]


def record_user(record: Record, position_user: Lookup, device_user: Lookup) -> str | None:
    """The user whose state ``record`` changes; None for a global record.

    ``position_user``/``device_user`` map a position or device id to its user (None: unknown,
    which makes a record global only if it is history: an alert or reconciliation entry of a
    device nobody owns any more).
    """
    match record:
        case PositionSaved(position=p):
            return p.user_id
        case CommandIssued(user_id=user) | GuardSaved(user_id=user):
            return user
        case ApprovalSaved(approval=a):
            return a.user_id
        case LevelsMoved(position_id=pid):
            return position_user(pid)
        case CommandResolved(position_id=pid, device_id=device):
            return position_user(pid) or device_user(device)
        case AlertRaised(alert=alert):
            if alert.user_id is not None:
                return alert.user_id
            return None if alert.device_id is None else device_user(alert.device_id)
        case ReconciliationRecorded(entry=entry):
            return device_user(entry.device_id)
        case SignalSaved() | AuditRecorded():
            return None
    raise TypeError(f"unhandled record {type(record).__name__}")  # pragma: no cover


def split_state(state: EngineState, partition: Callable[[str], int]) -> dict[int, EngineState]:
    """``state`` cut by the partition of each entry's user (one pass; signals are global and
    stay out). Each piece's ``seq`` is 0: a partition's seq is its own journal's."""
    pieces: dict[int, EngineState] = {}

    def piece(user_id: str) -> EngineState:
        p = partition(user_id)
        found = pieces.get(p)
        if found is None:
            found = pieces[p] = EngineState()
        return found

    for pid, position in state.positions.items():
        piece(position.user_id).positions[pid] = position
    for cid, command in state.commands.items():
        piece(command.user_id).commands[cid] = command
    for key, approval in state.approvals.items():
        piece(key[0]).approvals[key] = approval
    for user_id, guard in state.guards.items():
        piece(user_id).guards[user_id] = guard
    return pieces
