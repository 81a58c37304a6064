"""The command tracker: one user's commands in flight, their retries, and pending modifies.

Ids: an open, a close or a partial close is sent as ``<position>.<action>.<attempt>``. A
retryable rejection leads to the next attempt after a backoff (:meth:`CommandTracker.retry_later`);
a close that follows an earlier one (a retry, or a new try after CLOSE_FAILED) never re-uses an
id, because the EA would answer a repeated id with its earlier result instead of closing. A link
lost before the answer leaves the command in flight, marked lost: an open's or a close's
position is UNKNOWN until the terminal's snapshot resolves it, and the snapshot settles a lost
partial close too (``engine.user.terminal``).

Modifies (broker-side SL/TP following trailing and break-even moves, or a user's change) are
rate-limited per position and coalesced: a position has at most one modify waiting, sent with
the levels the position has when it comes due.

The tracker decides nothing about positions: the core asks it to issue, to resolve and to
schedule, and it keeps what it was told and journals the commands it issues and resolves.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from engine.effects import Effects
from engine.records import CommandIssued, CommandResolved
from engine.user.timing import Timing
from protocol.device import Ack, Command, PartialCloseCommand
from protocol.results import Category

__all__ = ["Category", "CommandTracker", "InFlight", "backoff_ms"]

"""How a device's answer to a command (or its absence) is classified."""


class InFlight(msgspec.Struct, frozen=True, gc=False):
    """A command sent and not yet resolved (untracked by the cyclic collector: it holds no
    container, and a storm makes 100,000 at once)."""

    command: Command
    device_id: str
    position_id: str
    lost: bool = False
    """The link dropped before its answer (the position is UNKNOWN until reconnect)."""


def backoff_ms(timing: Timing, attempt: int) -> int:
    """The pause before the attempt after ``attempt``: doubling from ``retry_base``, capped."""
    return int(min(timing.retry_cap, timing.retry_base * 2 ** max(0, attempt - 1)))


class CommandTracker:
    """One user's commands in flight, retries waiting for their backoff, modifies waiting for
    their turn, and when each position's last modify went out."""

    __slots__ = ("_in_flight", "_last_modify", "_modifies", "_retries", "_user_id")

    def __init__(self, user_id: str) -> None:
        self._user_id = user_id
        self._in_flight: dict[str, InFlight] = {}
        self._retries: dict[str, tuple[int, Command]] = {}  # position -> (due, last command)
        self._modifies: dict[str, int] = {}  # position -> due time of its pending modify
        self._last_modify: dict[str, int] = {}  # position -> when its last modify was sent

    # -- in flight -------------------------------------------------------------------------

    @property
    def in_flight(self) -> Mapping[str, InFlight]:
        """Command id -> the command sent and not yet resolved."""
        return self._in_flight

    def get(self, command_id: str) -> InFlight | None:
        return self._in_flight.get(command_id)

    def track(self, flight: InFlight) -> None:
        """Keep a command recovered from the journal as in flight (issued before a restart)."""
        self._in_flight[flight.command.command_id] = flight

    def issue(
        self, command: Command, device_id: str, position_id: str, now_ms: int, effects: Effects
    ) -> None:
        """Send ``command`` to ``device_id`` and journal it; it is in flight until resolved."""
        self._in_flight[command.command_id] = InFlight(command, device_id, position_id)
        effects.commands.append((device_id, command))
        effects.records.append(
            CommandIssued(
                command=command,
                position_id=position_id,
                user_id=self._user_id,
                device_id=device_id,
                issued_ms=now_ms,
            )
        )

    def issue_close(
        self, command: Command, device_id: str, position_id: str, now_ms: int, effects: Effects
    ) -> None:
        """:meth:`issue` a close: a modify still waiting for the position is dropped with it.

        The close path (a breach storm issues 100,000 of them): :meth:`issue`'s body is
        repeated here rather than called, so a close costs no extra call.
        """
        self._in_flight[command.command_id] = InFlight(command, device_id, position_id)
        effects.commands.append((device_id, command))
        effects.records.append(
            CommandIssued(
                command=command,
                position_id=position_id,
                user_id=self._user_id,
                device_id=device_id,
                issued_ms=now_ms,
            )
        )
        self._modifies.pop(position_id, None)

    def resolve(
        self,
        command_id: str,
        outcome: str,
        now_ms: int,
        effects: Effects,
        ack: Ack | None = None,
    ) -> InFlight | None:
        """End a command in flight and journal how (``outcome``: a :data:`Category`, or why
        there will be no answer). A command not in flight (a duplicate answer, a late repeat,
        one resolved meanwhile) is left alone: None."""
        flight = self._in_flight.pop(command_id, None)
        if flight is not None:
            effects.records.append(
                CommandResolved(
                    command_id=command_id,
                    position_id=flight.position_id,
                    device_id=flight.device_id,
                    outcome=outcome,
                    time_ms=now_ms,
                    retcode=None if ack is None else ack.retcode,
                    text="" if ack is None else ack.result_text,
                )
            )
        return flight

    def lost_on(self, device_id: str) -> list[InFlight]:
        """The commands sent to ``device_id`` whose link was lost, in the order they were
        issued."""
        return [f for f in self._in_flight.values() if f.lost and f.device_id == device_id]

    def partial_close_pending(self, position_id: str) -> bool:
        """Whether a partial close of ``position_id`` is in flight and its link holds (its
        answer is still to come)."""
        return any(
            f.position_id == position_id
            and not f.lost
            and isinstance(f.command, PartialCloseCommand)
            for f in self._in_flight.values()
        )

    def mark_lost(self, command_id: str) -> None:
        """The link dropped before this command's answer (it stays in flight)."""
        flight = self._in_flight.get(command_id)
        if flight is not None:
            self._in_flight[command_id] = msgspec.structs.replace(flight, lost=True)

    # -- retries and modifies ----------------------------------------------------------------

    def retry_later(
        self, position_id: str, command: Command, attempt: int, now_ms: int, timing: Timing
    ) -> None:
        """Send ``command`` again (as the next attempt) once attempt ``attempt``'s backoff is
        over."""
        self._retries[position_id] = (now_ms + backoff_ms(timing, attempt), command)

    def pop_due_retries(self, now_ms: int) -> list[tuple[str, Command]]:
        """(position id, its last command) for each retry that has come due, in the order
        they were scheduled; they leave the tracker."""
        due = [(pid, command) for pid, (at, command) in self._retries.items() if at <= now_ms]
        for pid, _ in due:
            del self._retries[pid]
        return due

    def request_modify(self, position_id: str, now_ms: int, interval_ms: int) -> None:
        """The position's levels changed: have the broker's follow, once ``interval_ms`` has
        passed since its last modify (a modify already waiting takes the new levels along)."""
        due = max(now_ms, self._last_modify.get(position_id, 0) + interval_ms)
        self._modifies.setdefault(position_id, due)

    def retry_modify(self, position_id: str, now_ms: int, interval_ms: int) -> None:
        """A modify was refused as retryable: try again in ``interval_ms``."""
        self._modifies[position_id] = now_ms + interval_ms

    def pop_due_modifies(self, now_ms: int) -> list[str]:
        """Ids of the positions whose modify has come due; they leave the tracker."""
        due = [pid for pid, at in self._modifies.items() if at <= now_ms]
        for pid in due:
            del self._modifies[pid]
        return due

    def issue_modify(
        self, command: Command, device_id: str, position_id: str, now_ms: int, effects: Effects
    ) -> None:
        """:meth:`issue` a modify; the position's next one waits for the interval from now."""
        self._last_modify[position_id] = now_ms
        self.issue(command, device_id, position_id, now_ms, effects)

    def forget(self, position_id: str) -> None:
        """The position ended: nothing of it is retried or modified any more."""
        self._retries.pop(position_id, None)
        self._modifies.pop(position_id, None)
        self._last_modify.pop(position_id, None)

    def next_due_ms(self) -> int | None:
        """When the earliest retry or modify comes due (None: none is waiting)."""
        if not (self._retries or self._modifies):
            return None
        due = [at for at, _ in self._retries.values()]
        due += self._modifies.values()
        return min(due)
