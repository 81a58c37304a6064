"""The engine's durable state as a fold of journal records.

``EngineState.apply(record)`` is the only way state is rebuilt: at start-up (snapshot + journal
replay), in the snapshotter (old snapshot + newer journal), and when a crashed actor restarts
(the node keeps a live fold of every record it journals). Startup and crash recovery are thus
one code path.

What it keeps is what the live engine needs to carry on: every position not yet final (and
every closed one still waiting for its fill, which a device's ``deals`` may bring after a
restart, for at most ``RETENTION_MS``), every command not yet resolved, signals and approvals
still in play, and each user's guard. Final positions and old signals leave the state (their
history lives in Postgres projections).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import msgspec

from engine.lifecycle import FINAL_STATES
from engine.positions import Position
from engine.records import (
    AlertRaised,
    Approval,
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
    decision_key,
    signal_key,
)

__all__ = ["HISTORY_RECORDS", "RECORD_HANDLERS", "EngineState", "StateSnapshot", "UserState"]

RETENTION_MS = 7 * 24 * 3600 * 1000
"""Signals and approvals are kept in memory this long after they stop mattering."""


class UserState(NamedTuple):
    """What one user actor restores from."""

    positions: list[Position]
    commands: list[CommandIssued]
    approvals: list[Approval]
    guard: GuardSaved | None


class StateSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """An :class:`EngineState` at journal sequence ``seq``, as stored in the snapshots table."""

    seq: int
    positions: list[Position]
    commands: list[CommandIssued]
    signals: list[SignalSaved]
    approvals: list[Approval]
    guards: list[GuardSaved]


_SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(StateSnapshot)


class EngineState:
    """Positions, commands, signals, approvals and guards, as the records say."""

    __slots__ = ("approvals", "commands", "guards", "positions", "seq", "signals")

    def __init__(self) -> None:
        self.seq = 0
        self.positions: dict[str, Position] = {}
        self.commands: dict[str, CommandIssued] = {}
        self.signals: dict[str, SignalSaved] = {}
        self.approvals: dict[tuple[str, str], Approval] = {}
        """(user, :func:`~engine.records.decision_key`) -> the user's decision."""
        self.guards: dict[str, GuardSaved] = {}

    def apply(self, record: Record, seq: int | None = None) -> None:
        """Fold one record in (``seq``: its journal sequence number, if known)."""
        if seq is not None:
            self.seq = seq
        handler = RECORD_HANDLERS.get(type(record))
        if handler is None:  # pragma: no cover - a new record kind must be handled here
            raise TypeError(f"unhandled record {type(record).__name__}")
        handler(self, record)

    def _position(self, record: PositionSaved) -> None:
        position = record.position
        if position.state in FINAL_STATES and not position.fill_pending:
            self.positions.pop(position.id, None)
        else:
            self.positions[position.id] = position

    def _levels(self, record: LevelsMoved) -> None:
        moved = self.positions.get(record.position_id)
        if moved is not None:
            self.positions[moved.id] = moved.with_changes(
                record.time_ms, sl=record.sl, tp=record.tp
            )

    def _command(self, record: CommandIssued) -> None:
        self.commands[record.command.command_id] = record

    def _resolved(self, record: CommandResolved) -> None:
        self.commands.pop(record.command_id, None)

    def _signal(self, record: SignalSaved) -> None:
        s = record.signal
        self.signals[signal_key(s.strategy_id, s.signal_id, s.version)] = record

    def _approval(self, record: ApprovalSaved) -> None:
        a = record.approval
        self.approvals[(a.user_id, decision_key(a.signal))] = a

    def _guard(self, record: GuardSaved) -> None:
        self.guards[record.user_id] = record

    def _history(self, record: Record) -> None:
        """Alerts, reconciliation and audit entries: history only (the projections keep it)."""

    def prune(self, now_ms: int) -> None:
        """Forget signals, approvals and fill-pending closes that can no longer matter."""
        horizon = now_ms - RETENTION_MS
        for pid in [
            pid
            for pid, p in self.positions.items()
            if p.state in FINAL_STATES and p.updated_ms < horizon
        ]:
            del self.positions[pid]  # its deal never came (an EA that sends none): history only
        for key in [
            k
            for k, s in self.signals.items()
            if (s.signal.expires_at_ms or s.received_ms) < horizon
        ]:
            del self.signals[key]
        for pair in [
            k
            for k, a in self.approvals.items()
            if a.position_id not in self.positions and (a.expires_at_ms or a.decided_ms) < horizon
        ]:
            del self.approvals[pair]

    # -- partitions (cluster mode) -----------------------------------------------------------

    def merge(self, other: EngineState) -> None:
        """Take in ``other``, the recovered state of users this state had no part of (a
        partition a node adopts). Where both hold an entry, ``other``'s wins: it is the
        partition's durable record. Signals are global: both sides' are kept. ``seq`` is left
        alone (a partition's journal has its own sequence)."""
        self.positions.update(other.positions)
        self.commands.update(other.commands)
        self.signals.update(other.signals)
        self.approvals.update(other.approvals)
        self.guards.update(other.guards)

    def drop_users(self, user_ids: Collection[str]) -> EngineState:
        """Take out everything of ``user_ids`` (positions, commands, approvals, guards: a
        partition a node gives away) and return it as a state of its own. Signals are global
        and stay. One pass over the state, whatever the number of users."""
        out = EngineState()
        out.seq = self.seq
        for name in ("positions", "commands"):
            table: dict[str, Any] = getattr(self, name)
            taken = {k: v for k, v in table.items() if v.user_id in user_ids}
            for k in taken:
                del table[k]
            setattr(out, name, taken)
        out.approvals = {k: a for k, a in self.approvals.items() if k[0] in user_ids}
        for pair in out.approvals:
            del self.approvals[pair]
        out.guards = {u: self.guards.pop(u) for u in list(self.guards) if u in user_ids}
        return out

    # -- views -------------------------------------------------------------------------------

    def user_view(self, user_id: str) -> UserState:
        """One user's part of the state (a scan: for restarting one actor)."""
        return UserState(
            positions=[p for p in self.positions.values() if p.user_id == user_id],
            commands=[c for c in self.commands.values() if c.user_id == user_id],
            approvals=[a for (u, _), a in self.approvals.items() if u == user_id],
            guard=self.guards.get(user_id),
        )

    def by_user(self) -> dict[str, UserState]:
        """Every user's part of the state, in one pass (for starting every actor at once).

        Users appear in the order their first position, command, approval or guard does.
        """
        views: dict[str, UserState] = {}
        guards = self.guards
        # The positions are most of it (100,000 at a restart): one lookup each, inlined.
        for p in self.positions.values():
            found = views.get(p.user_id)
            if found is None:
                found = views[p.user_id] = UserState([], [], [], guards.get(p.user_id))
            found.positions.append(p)

        def view(user_id: str) -> UserState:
            found = views.get(user_id)
            if found is None:
                found = views[user_id] = UserState([], [], [], guards.get(user_id))
            return found

        for c in self.commands.values():
            view(c.user_id).commands.append(c)
        for (user_id, _), a in self.approvals.items():
            view(user_id).approvals.append(a)
        for user_id in guards:
            view(user_id)
        return views

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> StateSnapshot:
        return StateSnapshot(
            seq=self.seq,
            positions=list(self.positions.values()),
            commands=list(self.commands.values()),
            signals=list(self.signals.values()),
            approvals=list(self.approvals.values()),
            guards=list(self.guards.values()),
        )

    def encode_snapshot(self) -> bytes:
        return _SNAPSHOT_ENCODER.encode(self.snapshot())

    @classmethod
    def from_snapshot(cls, snapshot: StateSnapshot) -> EngineState:
        state = cls()
        state.seq = snapshot.seq
        state.positions = {p.id: p for p in snapshot.positions}
        state.commands = {c.command.command_id: c for c in snapshot.commands}
        for s in snapshot.signals:
            state.signals[
                signal_key(s.signal.strategy_id, s.signal.signal_id, s.signal.version)
            ] = s
        state.approvals = {(a.user_id, decision_key(a.signal)): a for a in snapshot.approvals}
        state.guards = {g.user_id: g for g in snapshot.guards}
        return state

    @classmethod
    def decode_snapshot(cls, payload: bytes) -> EngineState:
        return cls.from_snapshot(_SNAPSHOT_DECODER.decode(payload))


# A plain dict, read-only by its type: apply() looks it up for every record the node journals.
RECORD_HANDLERS: Mapping[type, Callable[[EngineState, Any], None]] = {
    PositionSaved: EngineState._position,
    LevelsMoved: EngineState._levels,
    CommandIssued: EngineState._command,
    CommandResolved: EngineState._resolved,
    SignalSaved: EngineState._signal,
    ApprovalSaved: EngineState._approval,
    GuardSaved: EngineState._guard,
    AlertRaised: EngineState._history,
    ReconciliationRecorded: EngineState._history,
    AuditRecorded: EngineState._history,
}
"""How :meth:`EngineState.apply` folds each record type. Recovery's fold (``engine.replay``)
calls these directly for the records it folds one by one."""

HISTORY_RECORDS: frozenset[type] = frozenset(
    kind for kind, handler in RECORD_HANDLERS.items() if handler is EngineState._history
)
"""Record types the state keeps nothing of (their history lives in the projections)."""
