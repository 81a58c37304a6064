"""The position book: one user's positions, as the core last decided them.

It holds the live positions (not final), the latest closes (final: kept a while, since a
terminal's deal or close event may still bring a fill-pending close its fill), and the net P&L
of the closes the terminal has not yet reported in a balance. :meth:`PositionBook.save` is
how every decision about a position is kept and journaled.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from engine.effects import Effects
from engine.instruments import Instrument
from engine.lifecycle import FINAL_STATES, PositionState
from engine.notices import notice_of
from engine.positions import Position
from engine.records import PositionSaved
from engine.views import net_pl

__all__ = ["InstrumentLookup", "PositionBook", "realized_pl"]

InstrumentLookup = Callable[[str, str | None], Instrument]
"""``(symbol, device_id)`` -> the instrument that device trades the symbol as."""

_OPEN = PositionState.OPEN  # read once: Enum.MEMBER is a slow lookup (see engine.positions)
_CLOSED = PositionState.CLOSED


class PositionBook:
    """Live positions, the latest closes, and the closes' P&L not yet in a balance report."""

    RECENT_CLOSED = 200

    __slots__ = ("_ended", "_expiring", "positions", "recent_closed", "unreported")

    def __init__(self, ended: Callable[[str], None], expiring: Callable[[str, int], None]) -> None:
        """``ended(position_id)`` is told of each position that becomes final, and
        ``expiring(position_id, expires_at_ms)`` of each OPEN position saved with an expiry."""
        self._ended = ended
        self._expiring = expiring
        self.positions: dict[str, Position] = {}
        """Id -> each live position (the core's to change, through :meth:`save`)."""
        self.recent_closed: OrderedDict[str, Position] = OrderedDict()
        """Id -> the latest closes (and rejected opens), oldest first."""
        self.unreported: dict[str, float] = {}
        """Realised P&L of the positions closed since the last account report, by id: the
        terminal books a close at once but reports its balance later (with its next account
        frame), so a balance plus these is the balance the closes left. The equity curve
        anchors there, so its opening balance does not jump by a close for a heartbeat."""

    def restore(self, p: Position) -> None:
        """Take a recovered position back, as it was journaled (nothing is journaled again)."""
        if p.state in FINAL_STATES:  # closed, its fill pending: a deal may still bring it
            self.recent_closed[p.id] = p
            return
        self.positions[p.id] = p
        if p.state is _OPEN and p.expires_at_ms is not None:
            self._expiring(p.id, p.expires_at_ms)

    def save(self, p: Position, effects: Effects) -> None:
        """Keep ``p`` as the current value of its position and journal it (and note a fill or
        a close for the user's notifications: only here is the state before known)."""
        state = p.state
        if state is _OPEN or state is _CLOSED:
            notice = notice_of(self.positions.get(p.id), p)
            if notice is not None:
                effects.notices.append(notice)
        if state in FINAL_STATES:
            was_live = self.positions.pop(p.id, None) is not None
            net = net_pl(p.realized_pl, p.commission, p.swap)
            if was_live and state is _CLOSED and net is not None:
                # What the close did to the balance: commission and swap included.
                self.unreported[p.id] = net
            recent = self.recent_closed
            recent[p.id] = p
            recent.move_to_end(p.id)
            while len(recent) > self.RECENT_CLOSED:
                recent.popitem(last=False)
            self._ended(p.id)
        else:
            self.positions[p.id] = p
            if p.expires_at_ms is not None and state is _OPEN:
                self._expiring(p.id, p.expires_at_ms)
        effects.records.append(PositionSaved(position=p))
        effects.changed.append(p)

    def move_levels(self, moved: Position) -> None:
        """Keep a live position whose SL/TP a trailing or break-even move changed (journaled
        by the caller as the smaller ``LevelsMoved``, not saved whole)."""
        self.positions[moved.id] = moved

    def balance_reported(self) -> None:
        """The terminal reported its balance: every close so far is in it."""
        self.unreported.clear()

    def live_on(self, device_id: str, ticket: int) -> Position | None:
        """The live position a device's ticket is (None: none of those live)."""
        return next(
            (p for p in self.positions.values() if p.device_id == device_id and p.ticket == ticket),
            None,
        )


def realized_pl(
    p: Position, close_points: int | None, instrument_for: InstrumentLookup
) -> float | None:
    """``p``'s P&L closed at ``close_points`` (None: no close price, or no open price)."""
    if close_points is None or p.open_price is None:
        return None
    instrument = instrument_for(p.symbol, p.device_id)
    diff = (close_points - p.open_price) * p.side.sign / instrument.scale
    return round(diff * p.volume * instrument.contract_size, 2)
