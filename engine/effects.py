"""What a core asks its actor to do: the outputs of every core handler.

Cores never do I/O. A handler returns an :class:`Effects` and the actor carries each list out:
records go to the journal (and the node's live state fold), commands to the device actor's
outbox, arm operations to the symbol actor, changed positions to the client streams, alerts to
the alert fan-out, notices to the user's notifications (never on the tick path's critical
section: noting one is appending a tuple).
"""

from __future__ import annotations

from typing import NamedTuple

from engine.notices import Notice
from engine.positions import Position
from engine.records import Record
from protocol.common import Alert
from protocol.device import Command

__all__ = ["Arm", "Disarm", "Effects", "MoveLevels"]


class Arm(NamedTuple):
    """Watch ``position``'s levels (and its trailing/break-even rules)."""

    position: Position


class MoveLevels(NamedTuple):
    """The user moved a watched position's levels."""

    position: Position


class Disarm(NamedTuple):
    """Stop watching a position (it is closing or closed by other means)."""

    symbol: str
    position_id: str


class Effects:
    """The outputs of one handler call, in the order they were produced."""

    __slots__ = ("alerts", "arms", "changed", "commands", "notices", "records")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.commands: list[tuple[str, Command]] = []
        """``(device_id, command)``: send in this order."""
        self.arms: list[Arm | MoveLevels | Disarm] = []
        self.changed: list[Position] = []
        self.alerts: list[Alert] = []
        self.notices: list[Notice] = []
        """Fills and closes to tell the user about (``engine.notices``)."""

    def __bool__(self) -> bool:
        return bool(self.records or self.commands or self.arms or self.changed or self.alerts)

    def extend(self, other: Effects) -> Effects:
        self.records += other.records
        self.commands += other.commands
        self.arms += other.arms
        self.changed += other.changed
        self.alerts += other.alerts
        self.notices += other.notices
        return self

    def __repr__(self) -> str:
        return (
            f"Effects(records={len(self.records)}, commands={len(self.commands)}, "
            f"arms={len(self.arms)}, changed={len(self.changed)}, alerts={len(self.alerts)})"
        )
