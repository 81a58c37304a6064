"""Journal records: every state change the engine makes, as msgspec Structs.

The engine's state is the fold of these records (``engine.state``): recovery, snapshots and
the restart of a crashed actor all rebuild state by applying them, so there is one code path.
Records carry resulting values, not instructions (a :class:`PositionSaved` holds the whole
position after the change), so applying one never re-runs a business rule and a replay cannot
decide differently from the live engine.

Records are tagged by ``k``; one msgpack Encoder/Decoder for the union is built once here.
"""

from __future__ import annotations

import operator
from typing import Literal

import msgspec

from engine.positions import Position
from protocol.common import Alert
from protocol.device import Command
from protocol.signals import Signal

__all__ = [
    "AlertRaised",
    "Approval",
    "ApprovalSaved",
    "AuditEntry",
    "AuditRecorded",
    "CommandIssued",
    "CommandResolved",
    "GuardSaved",
    "LevelsMoved",
    "PositionSaved",
    "ReconciliationEntry",
    "ReconciliationRecorded",
    "Record",
    "SignalSaved",
    "decision_key",
    "decode_batch",
    "encode_batch",
    "encode_record",
    "signal_key",
]


def signal_key(strategy_id: str, signal_id: str, version: int) -> str:
    """The identity signals are deduplicated by (a new version is a new signal)."""
    return f"{strategy_id}/{signal_id}/{version}"


def decision_key(signal: str) -> str:
    """What a user decides on: the signal whatever its version (one decision per user).

    A new version supersedes the old one only for users who have not decided yet.
    """
    return signal.rsplit("/", 1)[0]


class Approval(msgspec.Struct, frozen=True, kw_only=True):
    """A user's decision on a signal (one per user and signal version)."""

    id: str
    user_id: str
    signal: str
    """:func:`signal_key` of the signal decided on."""
    decision: Literal["approve", "reject"]
    decided_ms: int
    expires_at_ms: int | None = None
    ip: str = ""
    user_agent: str = ""
    position_id: str | None = None
    """The position opened from an approval."""


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """Who did what to what, from where, and how it ended."""

    time_ms: int
    actor_id: str | None
    action: str
    target_type: str
    target_id: str
    outcome: str
    ip: str = ""
    user_agent: str = ""
    detail: dict[str, str | int | float | bool | None] = msgspec.field(default_factory=dict)


class ReconciliationEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A difference between what the engine believed and what a terminal reported."""

    time_ms: int
    device_id: str
    kind: str
    """``external_found`` (a position on the terminal the engine did not open: listed, not
    adopted), ``adopt`` (its user adopted it), ``closed_while_away`` (missing on the terminal),
    ``open_not_found``, ``open_confirmed``, ``resend_close``, ``resend_partial_close``,
    ``volume_mismatch``, ``levels_mismatch`` (the broker holds a stop tighter than the
    engine's), ``fill_recovered``, ``unknown_ack``, ``unmapped_symbol``"""
    position_id: str | None = None
    ticket: int | None = None
    detail: str = ""


class _Record(msgspec.Struct, frozen=True, kw_only=True, tag_field="k", array_like=True, gc=False):
    """Base of every journal record.

    ``array_like``: a record is a positional array, not a map (a position record shrinks from
    415 to 113 bytes and decodes 30 % faster; recovery replays a million of them, see
    ``bench.recovery``). The price is the compatibility rule of the journal format: a field
    is only ever added at the END of a struct, with a default. ``gc=False``: records hold
    only immutable values, never cycles.
    """


class PositionSaved(_Record, tag="pos", frozen=True, kw_only=True, array_like=True, gc=False):
    position: Position


class LevelsMoved(_Record, tag="lvl", frozen=True, kw_only=True, array_like=True, gc=False):
    """A trailing stop or break-even move of an OPEN position's SL (the journal's most frequent
    record, so it is compact: the rest of the position did not change)."""

    position_id: str
    sl: int | None
    tp: int | None
    time_ms: int


class CommandIssued(_Record, tag="cmd", frozen=True, kw_only=True, array_like=True, gc=False):
    """A command handed to a device (before it is sent: it goes out first, the record follows)."""

    command: Command
    position_id: str
    user_id: str
    device_id: str
    issued_ms: int


class CommandResolved(_Record, tag="cmdres", frozen=True, kw_only=True, array_like=True, gc=False):
    """The end of a command: its ack, or why there will be none."""

    command_id: str
    position_id: str
    device_id: str
    outcome: str
    """A result category (``done``, ``retryable``, ``final``, ``already_closed``, ``unknown``)
    or ``link_lost``, ``expired``, ``superseded``."""
    time_ms: int
    retcode: int | None = None
    text: str = ""


class SignalSaved(_Record, tag="sig", frozen=True, kw_only=True, array_like=True, gc=False):
    signal: Signal
    received_ms: int


class ApprovalSaved(_Record, tag="appr", frozen=True, kw_only=True, array_like=True, gc=False):
    approval: Approval


class AlertRaised(_Record, tag="alert", frozen=True, kw_only=True, array_like=True, gc=False):
    alert: Alert


class ReconciliationRecorded(
    _Record, tag="recon", frozen=True, kw_only=True, array_like=True, gc=False
):
    entry: ReconciliationEntry


class AuditRecorded(_Record, tag="audit", frozen=True, kw_only=True, array_like=True, gc=False):
    entry: AuditEntry


class GuardSaved(_Record, tag="guard", frozen=True, kw_only=True, array_like=True, gc=False):
    """A user's drawdown guard and account figures, so a restart keeps the peak."""

    user_id: str
    peak: float | None
    level: int
    opens_blocked: bool
    balance: float | None = None
    equity: float | None = None
    time_ms: int


Record = (
    PositionSaved
    | LevelsMoved
    | CommandIssued
    | CommandResolved
    | SignalSaved
    | ApprovalSaved
    | AlertRaised
    | ReconciliationRecorded
    | AuditRecorded
    | GuardSaved
)

_ENCODER = msgspec.msgpack.Encoder()
_BATCH_DECODER = msgspec.msgpack.Decoder(list[Record])


def encode_batch(records: list[Record]) -> bytes:
    """One msgpack array of records (one journal row per group-commit batch)."""
    return _ENCODER.encode(records)


encode_record = _ENCODER.encode
"""One record alone (``engine.journal_index`` encodes a batch record by record to index it)."""


def decode_batch(payload: bytes) -> list[Record]:
    """The records of one journal batch, decoded in one call."""
    return _BATCH_DECODER.decode(payload)


# -- the replay's view of a batch --------------------------------------------------------------
# Recovery folds a million records, most of them superseded (a position saved ten times counts
# once) or history the state does not keep (alerts, audit, reconciliation: Postgres projections
# hold those). The replay decoder therefore reads the same bytes into lighter types: a saved
# position stays undecoded (``msgspec.Raw``, a view of the payload) until the fold knows it is
# the last one, and history records are recognised by their tag and skipped. Every other record
# is decoded as itself.


class _Lazy(msgspec.Struct, frozen=True, tag_field="k", array_like=True, gc=False):
    """Base of the replay-only views (same tag field and layout as :class:`_Record`)."""


class PositionSavedRaw(_Lazy, tag="pos", frozen=True, array_like=True, gc=False):
    """A :class:`PositionSaved` whose position is not decoded yet."""

    position: msgspec.Raw


class HistorySkipped(_Lazy, frozen=True, array_like=True, gc=False):
    """A history record, read no further than its tag."""


class _AlertSkipped(HistorySkipped, tag="alert", frozen=True, array_like=True, gc=False):
    pass


class _ReconciliationSkipped(HistorySkipped, tag="recon", frozen=True, array_like=True, gc=False):
    pass


class _AuditSkipped(HistorySkipped, tag="audit", frozen=True, array_like=True, gc=False):
    pass


class _PositionId(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The first field of a :class:`Position` (the rest of the array is not read)."""

    id: str


ReplayRecord = (
    PositionSavedRaw
    | LevelsMoved
    | CommandIssued
    | CommandResolved
    | SignalSaved
    | ApprovalSaved
    | _AlertSkipped
    | _ReconciliationSkipped
    | _AuditSkipped
    | GuardSaved
)

_REPLAY_DECODER = msgspec.msgpack.Decoder(list[ReplayRecord])
_POSITION_ID_DECODER = msgspec.msgpack.Decoder(_PositionId)
_POSITIONS_DECODER = msgspec.msgpack.Decoder(list[Position])
_ID = operator.attrgetter("id")


def decode_batch_for_replay(payload: bytes) -> list[ReplayRecord]:
    """The records of one journal batch as the replay reads them (see above)."""
    return _REPLAY_DECODER.decode(payload)


position_head_of = _POSITION_ID_DECODER.decode
"""``position_head_of(raw).id`` is the id of a raw position, with no Python call in between
(the replay calls it for every save of a million records)."""


def position_ids_of(raws: list[msgspec.Raw]) -> list[str]:
    """The id of each raw position (a loop in C)."""
    return list(map(_ID, map(_POSITION_ID_DECODER.decode, raws)))


def decode_positions(raws: list[msgspec.Raw]) -> list[Position]:
    """The positions of many raw ones, decoded in one call (as one msgpack array of them)."""
    n = len(raws)
    if n < 16:
        header = bytes((0x90 | n,))
    elif n < 1 << 16:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return _POSITIONS_DECODER.decode(b"".join([header, *raws]))
