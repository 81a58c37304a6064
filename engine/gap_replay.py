"""The quotes a partition missed while nobody owned it, judged against its positions, in order.

A node that claims a partition (``docs/architecture.md``, "Scaling past one process") holds
positions that nobody watched between the last quote their old owner processed (the partition's
checkpoint) and the moment the new owner arms them. A level touched in that gap must still fire:
a missed touch is a lost close. And it must fire at the quote that touched it first, not at the
gap's extremes: a position whose SL and TP both lie inside the gap's range closes at whichever
the price path reached first, and a trailing stop moves along the path.

:func:`replay_gap` runs the gap's quotes, in their stream order, through a private
:class:`~engine.symbol.SymbolCore` holding only the claimed positions: the same validator (jump
rule included; a replayed quote is judged at its own time, so staleness never refuses it), the
same trailing book and the same trigger book the live symbol actor uses, so a replay fires
exactly what the live book would have fired had it watched. The caller hands the fires to the
positions' user actors and arms what did not fire in the live book, with the levels the trailing
rules moved them to.

Each position is judged only from its last change on: the gap starts at the old owner's last
checkpoint, which may be older than the position (opened, or its levels changed, after it). A
quote stamped (by the stream, on arrival) at or before ``updated_ms`` was judged by the old owner
against the position as it then was, and the change was journaled after it; judging it again
against the new levels could fire what never touched. A position is armed just before the first
quote stamped after its change, against the price the book holds then, as the live book arms a
position against its last quote (a level that price had already crossed fires at once).

Pure: no clock, no I/O; time is each quote's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from engine.guards import MarketLimits
from engine.instruments import Instrument
from engine.lifecycle import PositionState
from engine.positions import Position
from engine.quotes import QuoteLimits
from engine.symbol import SymbolCore
from engine.trailing import LevelMove
from engine.triggers import Trigger
from protocol.feed import Quote

__all__ = ["GapFire", "GapOutcome", "replay_gap"]


class GapFire(NamedTuple):
    """A level a replayed quote crossed: the position's user, the trigger, and the quote's
    index in the replayed sequence (its place on the path)."""

    user_id: str
    trigger: Trigger
    quote_index: int


class GapOutcome(NamedTuple):
    fired: list[GapFire]
    """In the order the live book would have fired them."""
    moved: dict[str, tuple[str, LevelMove]]
    """position id -> (its user, the last trailing move of its SL) for positions that did not
    fire: the live book must arm them at the moved level."""
    rejected: int
    """Replayed quotes the validator refused (a jump not yet confirmed, a crossed quote)."""


def replay_gap(
    instrument: Instrument,
    positions: Iterable[Position],
    quotes: Iterable[tuple[Quote, int]],
    *,
    quote_limits: QuoteLimits | None = None,
    market_limits: MarketLimits | None = None,
) -> GapOutcome:
    """Judge ``quotes`` (one symbol's ``(quote, stamp_ms)`` in stream order) against the OPEN
    ``positions`` of that symbol; see the module docstring. Other positions are ignored."""
    core = SymbolCore(instrument, quote_limits, market_limits)
    watched = [
        p
        for p in positions
        if p.symbol == instrument.symbol
        and p.state is PositionState.OPEN
        and p.open_price is not None
    ]
    watched.sort(key=lambda p: p.updated_ms)
    fired: list[GapFire] = []
    moved: dict[str, tuple[str, LevelMove]] = {}
    rejected = 0
    waiting = 0  # watched[waiting:] are not armed yet
    for index, (quote, stamp_ms) in enumerate(quotes):
        armed_now = waiting
        while waiting < len(watched) and watched[waiting].updated_ms < stamp_ms:
            waiting += 1
        if waiting > armed_now:
            # Fired at arming: by the last price, the previous quote's.
            for user_id, trigger in core.arm_many(watched[armed_now:waiting]):
                fired.append(GapFire(user_id, trigger, index - 1))
        if not len(core) and waiting == len(watched):
            break  # everything fired: the rest of the gap cannot touch anything
        outcome = core.on_quote(quote.bid, quote.ask, quote.time_ms, quote.time_ms)
        if outcome.rejected is not None:
            rejected += 1
            continue
        for user_id, trigger in outcome.fired:
            fired.append(GapFire(user_id, trigger, index))
            moved.pop(trigger.position_id, None)
        for user_id, move in outcome.moved:
            moved[move.position_id] = (user_id, move)
    return GapOutcome(fired, moved, rejected)
