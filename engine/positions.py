"""Positions: what the engine holds for every trade it watches.

A :class:`Position` is an immutable value (a frozen msgspec Struct): every change makes a new
one. That is what lets a journal record, a snapshot and a client view hold the very object the
engine holds, with no copy and no risk of it changing under them. Prices are integer points of
the instrument (see ``engine.instruments``); times are milliseconds since the Unix epoch, always
passed in by the caller.

State changes go through :meth:`Position.transition`, which consults the table in
``engine.lifecycle``: an illegal event raises, and the position (immutable) is untouched.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.lifecycle import LIVE_STATES, PositionEvent, PositionState, next_state
from protocol.common import Origin, Side
from protocol.errors import UsageError

# Read once: ``Enum.MEMBER`` is a slow lookup on CPython 3.11 (EnumType.__getattr__).
_UNKNOWN = PositionState.UNKNOWN
_CLOSE_SENT = PositionEvent.CLOSE_SENT

__all__ = [
    "FILL_PENDING",
    "BreakEvenRule",
    "Position",
    "TrailingRule",
    "decode_position_document",
    "decode_position_documents",
    "position_document",
]


FILL_PENDING = "fill_pending"
"""The flag of a CLOSED position whose close is proven (the terminal no longer holds it) but
whose fill is not known yet: its close price, time and P&L come with the terminal's deal
(docs/protocol.md, "deals"). Until then it has no P&L, never a P&L of 0."""


class TrailingRule(msgspec.Struct, frozen=True, kw_only=True, gc=False, array_like=True):
    """A trailing stop: keep the SL ``distance`` points behind the best price.

    It starts once the price is ``activation`` points in profit (0: at once) and moves only in
    steps of at least ``step`` points, so the broker is not flooded with modifies.
    """

    distance: int
    activation: int = 0
    step: int = 1


class BreakEvenRule(msgspec.Struct, frozen=True, kw_only=True, gc=False, array_like=True):
    """Move the SL to the entry (plus ``offset`` points) once ``trigger`` points in profit."""

    trigger: int
    offset: int = 0


class Position(msgspec.Struct, frozen=True, kw_only=True, gc=False, array_like=True):
    """One position, from the open we asked for to its close.

    ``gc=False``: positions reference only immutable values, never each other, so the cyclic
    collector need not track a million of them. ``array_like``: journaled and snapshotted as a
    positional array (a quarter of the bytes of a map, faster to decode): fields are only ever
    added at the end, with defaults.
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
    """Attempt number of the open or close in flight (or the last one sent)."""
    modify_count: int = 0
    """Modify commands issued so far (their ids must never repeat with other content)."""
    command_id: str | None = None
    """The command in flight for this position, if any."""
    unknown_from: PositionState | None = None
    """The state the position was in when the link was lost (set while UNKNOWN)."""
    trigger_price: int | None = None
    """The quote price that fired the engine's SL/TP (the close records its own fill)."""
    close_price: int | None = None
    close_time_ms: int | None = None
    close_reason: str | None = None
    """``sl``, ``tp``, ``manual``, ``expiry``, ``guard``, ``broker_sl``, ``broker_tp``, ..."""
    realized_pl: float | None = None
    """Profit or loss of the close, in the account currency (when the fill is known)."""
    flags: tuple[str, ...] = ()
    """Operator flags such as ``stale_device``; advisory, never a state."""
    updated_ms: int = 0
    commission: float | None = None
    """The broker's commission on the position so far, in the account currency, signed (a cost
    is negative), as the terminal last reported it; None while no report carried it."""
    swap: float | None = None
    """The swap accrued so far, in the account currency, signed, as last reported.

    ``realized_pl`` (and a view's ``pl``) is the price P&L only, like MT5's position and deal
    profit: it excludes ``commission`` and ``swap``. A trader's net is their sum
    (``engine.views.net_pl``). Both are added at the end with defaults (``array_like``):
    journals and snapshots written before them decode with None."""
    adopted: bool = True
    """False for a position found on a terminal (origin ``external``) that its user has not
    adopted: listed with the broker's SL/TP, which follow the terminal's reports, but never
    armed and never sent a command. True for every other: the engine's own, an external one
    once adopted, and an external one journaled before adoption was asked for (those were
    armed on sight, so the default keeps them armed)."""

    def transition(self, event: PositionEvent, now_ms: int, **changes: Any) -> Position:
        """A copy in the state ``event`` leads to, with ``changes`` applied too.

        Raises:
            IllegalTransition: the event is not allowed now (this position is unchanged).
        """
        new = next_state(self.state, event)
        if new is _UNKNOWN:
            changes["unknown_from"] = self.state
        elif self.state is _UNKNOWN:
            changes["unknown_from"] = None
        changes["state"], changes["updated_ms"] = new, now_ms
        return msgspec.structs.replace(self, **changes)

    def closing(
        self,
        now_ms: int,
        attempt: int,
        command_id: str,
        close_reason: str,
        trigger_price: int | None,
    ) -> Position:
        """``transition(CLOSE_SENT, now_ms, attempt=..., ...)`` with its fields spelled out.

        The hot path's transition (a breach storm makes 100,000 at once): keywords passed as
        such reach ``msgspec.structs.replace`` without the dict that ``**changes`` packs and
        unpacks, about a third of the generic call's cost.

        Raises:
            IllegalTransition: a close is not allowed now (this position is unchanged).
        """
        if self.state is _UNKNOWN:  # leaving UNKNOWN clears unknown_from: the generic path
            return self.transition(
                _CLOSE_SENT,
                now_ms,
                attempt=attempt,
                command_id=command_id,
                close_reason=close_reason,
                trigger_price=trigger_price,
            )
        return msgspec.structs.replace(
            self,
            state=next_state(self.state, _CLOSE_SENT),
            updated_ms=now_ms,
            attempt=attempt,
            command_id=command_id,
            close_reason=close_reason,
            trigger_price=trigger_price,
        )

    def with_changes(self, now_ms: int, **changes: Any) -> Position:
        """A copy with ``changes`` (levels, ticket, flags...) and no change of state."""
        if "state" in changes:
            raise UsageError("change state with transition(), not with_changes()")
        return msgspec.structs.replace(self, updated_ms=now_ms, **changes)

    def with_costs(self, now_ms: int, commission: float | None, swap: float | None) -> Position:
        """A copy with the terminal's reported ``commission`` and ``swap``, or ``self`` when
        they change nothing. A None report keeps what is known (an old EA reports neither, a
        report may omit one): a cost, once reported, is never forgotten."""
        changes: dict[str, float] = {}
        if commission is not None and commission != self.commission:
            changes["commission"] = commission
        if swap is not None and swap != self.swap:
            changes["swap"] = swap
        if not changes:
            return self
        return msgspec.structs.replace(self, updated_ms=now_ms, **changes)

    @property
    def fill_pending(self) -> bool:
        """True while a CLOSED position waits for its fill (see :data:`FILL_PENDING`)."""
        return FILL_PENDING in self.flags

    @property
    def is_live(self) -> bool:
        """True while the terminal may hold it (counts for exposure and P&L)."""
        return self.state in LIVE_STATES

    @property
    def watched(self) -> bool:
        """True while its SL/TP must be watched by the trigger book (an external position
        only once adopted)."""
        return self.state is PositionState.OPEN and self.adopted


def _document_type() -> type[msgspec.Struct]:
    """A map-shaped twin of :class:`Position`, derived from its fields (one source of truth).

    Positions are ``array_like`` in the journal; the ``positions`` projection keeps a readable
    JSON document of each (a map), which this twin decodes.
    """
    fields: list[Any] = []
    for f in msgspec.structs.fields(Position):
        if f.required:
            fields.append((f.name, f.type))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, f.type, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, f.type, f.default))
    return msgspec.defstruct("PositionDocument", fields, kw_only=True, frozen=True)


_DOCUMENT = _document_type()
_DOCUMENT_DECODER = msgspec.json.Decoder(_DOCUMENT)
_DOCUMENTS_DECODER = msgspec.json.Decoder(list[_DOCUMENT])  # type: ignore[valid-type]
_FIELDS = Position.__struct_fields__


def position_document(position: Position) -> dict[str, Any]:
    """A position as a JSON-ready map (the projection's readable document)."""
    return msgspec.to_builtins(msgspec.structs.asdict(position))  # type: ignore[no-any-return]


def decode_position_document(text: str | bytes) -> Position:
    """The position of one document written by :func:`position_document`."""
    doc = _DOCUMENT_DECODER.decode(text)
    return Position(**{name: getattr(doc, name) for name in _FIELDS})


def decode_position_documents(text: str | bytes) -> list[Position]:
    """The positions of a JSON array of documents (one call for a page of history)."""
    return [
        Position(**{name: getattr(doc, name) for name in _FIELDS})
        for doc in _DOCUMENTS_DECODER.decode(text)
    ]
