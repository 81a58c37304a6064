"""What actors send each other inside one node (never on a wire: NamedTuples, cheap to make).

Wire and journal types are msgspec Structs in ``protocol`` and ``engine.records``; these are
only the envelopes that carry them between mailboxes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import trio

from engine.device import Result
from engine.trailing import LevelMove
from engine.triggers import Trigger
from engine.user import DeviceInfo
from protocol.device import AccountState, Deal, PositionEvent, TerminalPosition

__all__ = [
    "AccountReport",
    "Call",
    "DeviceChanged",
    "Fired",
    "LinkLost",
    "Moved",
    "Reply",
    "Settled",
    "TerminalDeals",
    "TerminalEvent",
    "TerminalSnapshot",
]


class Fired(NamedTuple):
    """SL/TP levels a quote crossed, for one user (the hot path)."""

    triggers: list[Trigger]
    quote_seq: int
    """The symbol actor's count of the quote that fired them (for latency tracing)."""
    started: float
    """``time.perf_counter()`` when the quote was processed (for the latency histogram)."""
    trace: tuple[int, int, int] | None = None
    """(frame, offered, fired) stamps when hop tracing is on (``actors.tracing``)."""


class Moved(NamedTuple):
    moves: list[LevelMove]


class Settled(NamedTuple):
    """A device's answer to a command (or the reason there is none)."""

    result: Result


class LinkLost(NamedTuple):
    device_id: str
    command_ids: list[str]


class TerminalSnapshot(NamedTuple):
    device_id: str
    positions: list[TerminalPosition]


class TerminalDeals(NamedTuple):
    device_id: str
    deals: list[Deal]


class TerminalEvent(NamedTuple):
    device_id: str
    event: PositionEvent


class AccountReport(NamedTuple):
    device_id: str
    state: AccountState


class DeviceChanged(NamedTuple):
    info: DeviceInfo


class Reply:
    """The answer slot of a :class:`Call`: set once, awaited by the caller."""

    __slots__ = ("_done", "error", "value")

    def __init__(self) -> None:
        self._done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any) -> None:
        self.value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._done.set()

    async def wait(self) -> Any:
        await self._done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Call(NamedTuple):
    """Run ``fn(core, *args)`` inside the actor; ``fn`` returns ``(value, effects | None)``.

    Expected refusals (a :class:`TripwireError`) go back to the caller; anything else is a bug
    and crashes the actor (which its supervisor restarts), after failing the caller too.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    reply: Reply
