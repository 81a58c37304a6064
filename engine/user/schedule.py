"""The schedule: what comes due in time, and the level moves that make modifies due.

* expiries: an OPEN position with ``expires_at_ms`` is closed when that time comes (the core
  closes it; the schedule says which);
* ticks: the retries and modifies the command tracker holds are issued once due
  (:meth:`Schedule.issue_due`);
* trailing moves: a trailing stop or a break-even move changes a position's SL; the broker's
  stops follow through a rate-limited modify (:meth:`Schedule.on_level_moves`).

:meth:`Schedule.next_due_ms` is when any of these next needs a tick.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

import msgspec

from engine.effects import Effects
from engine.lifecycle import PositionState
from engine.positions import Position
from engine.records import LevelsMoved
from engine.sizing import ProtectiveStops
from engine.trailing import LevelMove
from engine.user.book import InstrumentLookup, PositionBook
from engine.user.commands import CommandTracker
from engine.user.timing import Timing
from protocol.device import CloseCommand, ModifyCommand, OpenCommand
from protocol.ids import command_id

__all__ = ["Schedule"]


class Schedule:
    """One user's expiries, and the issuing of the tracker's retries and modifies in time."""

    __slots__ = ("_commands", "_expiries")

    def __init__(self, commands: CommandTracker) -> None:
        self._commands = commands
        self._expiries: list[tuple[int, str]] = []  # heap of (expires_at_ms, position id)

    # -- expiries ------------------------------------------------------------------------------

    def watch(self, position_id: str, expires_at_ms: int) -> None:
        """An OPEN position expires at ``expires_at_ms`` (a later save may change or end that:
        entries that no longer match their position are dropped when reached)."""
        heapq.heappush(self._expiries, (expires_at_ms, position_id))

    def _next_expiry(self, positions: Mapping[str, Position]) -> int | None:
        """The earliest expiry of an OPEN position (stale heap entries are dropped here)."""
        heap = self._expiries
        while heap:
            at, pid = heap[0]
            p = positions.get(pid)
            if p is not None and p.state is PositionState.OPEN and p.expires_at_ms == at:
                return at
            heapq.heappop(heap)
        return None

    def pop_expired(self, positions: Mapping[str, Position], now_ms: int) -> list[str]:
        """Ids of OPEN positions whose expiry has come (removed from the schedule)."""
        expired: list[str] = []
        while (at := self._next_expiry(positions)) is not None and at <= now_ms:
            pid = heapq.heappop(self._expiries)[1]
            # Every save of an OPEN position pushes its expiry again (a modify, a partial close,
            # new costs): the copies are all current, and the position closes once.
            if pid not in expired:
                expired.append(pid)
        return expired

    def next_due_ms(self, positions: Mapping[str, Position]) -> int | None:
        """When a retry, a modify or an expiry next comes due (None: nothing is scheduled)."""
        due = self._commands.next_due_ms()
        if not self._expiries:
            return due  # the usual case, asked twice for every fire
        expiry = self._next_expiry(positions)
        if expiry is None or (due is not None and due <= expiry):
            return due
        return expiry

    # -- ticks ---------------------------------------------------------------------------------

    def issue_due(
        self, book: PositionBook, instrument_for: InstrumentLookup, timing: Timing, now_ms: int
    ) -> Effects:
        """Issue the retries and the modifies that have come due (expiries: :meth:`pop_expired`).

        A retry goes out as the next attempt, with a new id and deadline, only while its
        position still waits for it (CLOSING for a close, PENDING_OPEN for an open); a modify
        carries the position's levels of now, only while it is OPEN.
        """
        effects = Effects()
        commands, positions = self._commands, book.positions
        for pid, previous in commands.pop_due_retries(now_ms):
            p = positions.get(pid)
            if p is None:
                continue
            attempt = p.attempt + 1
            if isinstance(previous, CloseCommand) and p.state is PositionState.CLOSING:
                cid = command_id(pid, "close", attempt)
                deadline = now_ms + timing.close_deadline
            elif isinstance(previous, OpenCommand) and p.state is PositionState.PENDING_OPEN:
                cid = command_id(pid, "open", attempt)
                deadline = now_ms + timing.open_deadline
            else:
                continue
            retry = msgspec.structs.replace(previous, command_id=cid, deadline_ms=deadline)
            book.save(p.with_changes(now_ms, attempt=attempt, command_id=cid), effects)
            commands.issue(retry, p.device_id, pid, now_ms, effects)

        for pid in commands.pop_due_modifies(now_ms):
            p = positions.get(pid)
            if p is None or p.state is not PositionState.OPEN or p.ticket is None:
                continue
            instrument = instrument_for(p.symbol, p.device_id)
            updated = p.with_changes(now_ms, modify_count=p.modify_count + 1)
            command = ModifyCommand(
                command_id=command_id(pid, "modify", updated.modify_count),
                ticket=p.ticket,
                symbol=p.symbol,
                sl=None if p.sl is None else instrument.to_price(p.sl),
                tp=None if p.tp is None else instrument.to_price(p.tp),
                deadline_ms=now_ms + timing.modify_deadline,
            )
            book.save(updated, effects)
            commands.issue_modify(command, p.device_id, pid, now_ms, effects)
        return effects

    # -- trailing moves ------------------------------------------------------------------------

    def on_level_moves(
        self,
        book: PositionBook,
        moves: Iterable[LevelMove],
        protective_stops: ProtectiveStops,
        timing: Timing,
        now_ms: int,
    ) -> Effects:
        """Trailing/break-even moved SLs: keep them, and have the broker's stops follow (with
        ``protective_stops`` ``same``)."""
        effects = Effects()
        positions = book.positions
        for move in moves:
            p = positions.get(move.position_id)
            if p is None or p.state is not PositionState.OPEN:
                continue
            moved = p.with_changes(now_ms, sl=move.sl)
            book.move_levels(moved)
            effects.records.append(
                LevelsMoved(position_id=p.id, sl=moved.sl, tp=moved.tp, time_ms=now_ms)
            )
            effects.changed.append(moved)
            if protective_stops is ProtectiveStops.SAME:
                self._commands.request_modify(p.id, now_ms, timing.modify_interval)
        return effects
