"""What actors send each other inside one node (never on a wire: NamedTuples, cheap to make).

Wire and journal types are msgspec Structs in ``protocol`` and ``engine.records``; these are
only the envelopes that carry them between mailboxes. Each actor's mailbox takes one union of
them (:data:`UserMessage`, :data:`SymbolControl`), and the actor handles it with a ``match``
that ends in ``assert_never``: a message added to a union and forgotten by its actor is a type
error, not a message that fails at run time.

The edge asks a user actor for something with a *request* (:data:`UserRequest`): a named
message carrying its arguments and a typed :class:`Reply`. The actor runs it between its other
messages, so the user's state is consistent for it, and answers through the reply: the value,
or the :class:`~protocol.errors.TripwireError` that refused it.

The messages are ``@final``: the actors test the hot ones with ``type(m) is Fired`` before their
``match`` (cheaper than a class pattern), and mypy narrows that test only for a final class.
"""

from __future__ import annotations

from typing import Generic, Literal, NamedTuple, TypeVar, final

import outcome
import trio

from engine.device import Result
from engine.effects import Arm, Disarm, MoveLevels
from engine.positions import Position
from engine.records import Approval
from engine.sizing import UserSettings
from engine.stoprules import LevelChanges
from engine.trailing import LevelMove
from engine.triggers import Trigger
from engine.user import DeviceInfo
from protocol.client import Snapshot
from protocol.device import AccountState, Deal, PositionEvent, TerminalPosition
from protocol.signals import Signal

__all__ = [
    "AccountReport",
    "AdoptPosition",
    "ApplySettings",
    "ClientSnapshot",
    "ClosePosition",
    "DecideSignal",
    "DeviceChanged",
    "Failure",
    "Fired",
    "LinkLost",
    "ModifyPosition",
    "Moved",
    "Reply",
    "Settled",
    "SymbolControl",
    "TerminalDeals",
    "TerminalEvent",
    "TerminalSnapshot",
    "UserMessage",
    "UserRequest",
]

T = TypeVar("T")


# -- to a user actor: from symbol and device actors ----------------------------------------


@final
class Fired(NamedTuple):
    """SL/TP levels a quote crossed, for one user (the hot path)."""

    triggers: list[Trigger]
    quote_seq: int
    """The symbol actor's count of the quote that fired them (for latency tracing)."""
    started: float
    """``time.perf_counter()`` when the quote was processed (for the latency histogram)."""
    trace: tuple[int, int, int] | None = None
    """(frame, offered, fired) stamps when hop tracing is on (``actors.tracing``)."""


@final
class Moved(NamedTuple):
    moves: list[LevelMove]


@final
class Settled(NamedTuple):
    """A device's answer to a command (or the reason there is none)."""

    result: Result


@final
class LinkLost(NamedTuple):
    device_id: str
    command_ids: list[str]


@final
class TerminalSnapshot(NamedTuple):
    device_id: str
    positions: list[TerminalPosition]


@final
class TerminalDeals(NamedTuple):
    device_id: str
    deals: list[Deal]


@final
class TerminalEvent(NamedTuple):
    device_id: str
    event: PositionEvent


@final
class AccountReport(NamedTuple):
    device_id: str
    state: AccountState


@final
class DeviceChanged(NamedTuple):
    info: DeviceInfo


# -- to a user actor: requests (from the edge and the client hub) --------------------------


@final
class Reply(Generic[T]):
    """The answer slot of a request: set once, awaited once by the caller."""

    __slots__ = ("_done", "_outcome")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._outcome: outcome.Outcome[T] | None = None

    def set(self, value: T) -> None:
        self._outcome = outcome.Value(value)
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._outcome = outcome.Error(error)
        self._done.set()

    async def wait(self) -> T:
        """The value, or raise what refused (or broke) the request."""
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome.unwrap()


@final
class ApplySettings(NamedTuple):
    """The user's new trading settings (stored already): the next decision and equity report
    use them, the drawdown guard its limits."""

    settings: UserSettings
    reply: Reply[None]


@final
class DecideSignal(NamedTuple):
    """The user approves (opening a position) or rejects a signal, judged at the price and
    time of the moment the actor handles it. Answers the approval."""

    signal: Signal
    decision: Literal["approve", "reject"]
    approval_id: str
    ip: str
    user_agent: str
    volume: float | None
    """A lot size the user chose instead of the sizing rule's (approvals only)."""
    reply: Reply[Approval]


@final
class ClosePosition(NamedTuple):
    """Close a position by hand. Answers the close command's id (None: nothing was sent)."""

    position_id: str
    reply: Reply[str | None]


@final
class ModifyPosition(NamedTuple):
    """Change a live position's SL/TP or rules, judged at the current quote. Answers the
    position as it now is (None: it is no longer live)."""

    position_id: str
    changes: LevelChanges
    reply: Reply[Position | None]


@final
class AdoptPosition(NamedTuple):
    """The user adopts an external position found on a terminal: from then on its SL/TP are
    watched like any other's. Answers the position as it now is (adopted)."""

    position_id: str
    reply: Reply[Position]


@final
class ClientSnapshot(NamedTuple):
    """A new client stream's first message, built inside the actor so that it is consistent
    with the deltas that follow it."""

    reply: Reply[Snapshot]


UserRequest = (
    ApplySettings | DecideSignal | ClosePosition | ModifyPosition | AdoptPosition | ClientSnapshot
)
"""What the edge may ask a user actor."""

UserMessage = (
    Fired
    | Moved
    | Settled
    | LinkLost
    | TerminalSnapshot
    | TerminalDeals
    | TerminalEvent
    | AccountReport
    | DeviceChanged
    | UserRequest
)
"""Everything a user actor's mailbox takes from others."""


# -- to a symbol actor ---------------------------------------------------------------------

SymbolControl = Arm | MoveLevels | Disarm
"""What a user actor asks of a symbol actor (queued in order with the quotes)."""


# -- an actor to itself --------------------------------------------------------------------


@final
class Failure(NamedTuple):
    """A failure of an actor's fast path (run in another task), raised in the actor's own
    task so that its supervisor sees it."""

    error: Exception
