"""Positions: what the engine holds for every trade it watches.

A :class:`Position` is mutable engine state (a msgspec Struct, so snapshots and journal records
encode it directly). Prices are integer points of the instrument (see ``engine.instruments``);
times are milliseconds since the Unix epoch, always passed in by the caller.

State changes go through :meth:`Position.apply`, which consults the table in
``engine.lifecycle``: an illegal event raises and leaves the position untouched.
"""

from __future__ import annotations

import msgspec

from engine.lifecycle import LIVE_STATES, PositionEvent, PositionState, next_state
from protocol.common import Origin, Side

__all__ = ["BreakEvenRule", "Position", "TrailingRule"]


class TrailingRule(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A trailing stop: keep the SL ``distance`` points behind the best price.

    It starts once the price is ``activation`` points in profit (0: at once) and moves only in
    steps of at least ``step`` points, so the broker is not flooded with modifies.
    """

    distance: int
    activation: int = 0
    step: int = 1


class BreakEvenRule(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Move the SL to the entry (plus ``offset`` points) once ``trigger`` points in profit."""

    trigger: int
    offset: int = 0


class Position(msgspec.Struct, kw_only=True, gc=False):
    """One position, from the open we asked for to its close.

    ``gc=False``: positions reference only immutable values, never each other, so the cyclic
    collector need not track a million of them.
    """

    id: str
    user_id: str
    device_id: str
    account: str
    symbol: str
    side: Side
    volume: float
    state: PositionState = PositionState.PENDING_OPEN
    origin: Origin = Origin.SIGNAL
    open_price: int | None = None
    """Fill price in points; the requested price while PENDING_OPEN."""
    open_time_ms: int | None = None
    sl: int | None = None
    tp: int | None = None
    trailing: TrailingRule | None = None
    break_even: BreakEvenRule | None = None
    ticket: int | None = None
    client_id: str = ""
    """The tag the terminal keeps in the order comment (31 characters at most)."""
    signal_id: str | None = None
    approval_id: str | None = None
    expires_at_ms: int | None = None
    """Auto-close time inherited from the approval (the old platform's expiry)."""
    attempt: int = 0
    """Attempt number of the command in flight (or the last one sent)."""
    command_id: str | None = None
    """The command in flight for this position, if any."""
    unknown_from: PositionState | None = None
    """The state the position was in when the link was lost (set while UNKNOWN)."""
    close_price: int | None = None
    close_time_ms: int | None = None
    close_reason: str | None = None
    """``sl``, ``tp``, ``manual``, ``expiry``, ``guard``, ``broker_sl``, ``broker_tp``, ..."""
    flags: tuple[str, ...] = ()
    """Operator flags such as ``stale_device``; advisory, never a state."""
    updated_ms: int = 0

    def apply(self, event: PositionEvent, now_ms: int) -> PositionState:
        """Move to the state ``event`` leads to and return it.

        Raises:
            IllegalTransition: the event is not allowed now; nothing was changed.
        """
        new = next_state(self.state, event)
        if new is PositionState.UNKNOWN:
            self.unknown_from = self.state
        elif self.state is PositionState.UNKNOWN:
            self.unknown_from = None
        self.state = new
        self.updated_ms = now_ms
        return new

    @property
    def is_live(self) -> bool:
        """True while the terminal may hold it (counts for exposure and P&L)."""
        return self.state in LIVE_STATES

    @property
    def watched(self) -> bool:
        """True while its SL/TP must be watched by the trigger book."""
        return self.state is PositionState.OPEN
