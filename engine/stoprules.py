"""Trailing-stop and break-even rules as users and strategies give them, turned into points.

Three places attach a rule to a position, in price units or pips; the engine keeps it in
integer points of the instrument (:class:`~engine.positions.TrailingRule`,
:class:`~engine.positions.BreakEvenRule`), where the symbol's
:class:`~engine.trailing.TrailingBook` runs it:

* a signal's ``trailing`` / ``break_even`` (price units), for the positions opened from it;
* the user's defaults in :class:`~engine.sizing.UserSettings` (pips, so one default serves
  every symbol), used when the signal has none;
* ``PATCH /api/v1/positions/{id}`` (price units), on one open position.

Every rule is checked against the instrument the same way: a level the rule would set must be
at least the broker's stops level from the price it is set at (the broker refuses a modify
closer than that, and the position would then be guarded by the engine alone).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from engine.instruments import Instrument
from engine.positions import BreakEvenRule, TrailingRule
from protocol.errors import SizingRefused
from protocol.signals import BreakEvenSpec, TrailingSpec
from protocol.types import Price

__all__ = [
    "BreakEvenDefault",
    "LevelChanges",
    "TrailingDefault",
    "break_even_rule",
    "break_even_spec",
    "check_rules",
    "default_rules",
    "trailing_rule",
    "trailing_spec",
]


class TrailingDefault(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A user's default trailing stop, in pips (see :class:`~protocol.signals.TrailingSpec`)."""

    distance_pips: float
    step_pips: float = 0.0
    activation_pips: float = 0.0


class BreakEvenDefault(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A user's default break-even move, in pips (see :class:`~protocol.signals.BreakEvenSpec`)."""

    trigger_pips: float
    offset_pips: float = 0.0


class LevelChanges(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a user changes on one open position (the body of ``PATCH /api/v1/positions/{id}``).

    Every field is optional: one left out keeps its value, ``null`` removes it. Prices and
    distances are in price units; the engine checks them against the instrument and the
    current price before anything changes.
    """

    sl: Price | UnsetType | None = UNSET
    """The new stop-loss; ``null`` removes it."""
    tp: Price | UnsetType | None = UNSET
    """The new take-profit; ``null`` removes it."""
    trailing: TrailingSpec | UnsetType | None = UNSET
    """A trailing stop from now on; ``null`` removes it."""
    break_even: BreakEvenSpec | UnsetType | None = UNSET
    """A break-even move from now on; ``null`` removes it."""

    def given(self) -> dict[str, Any]:
        """The fields the caller sent (for the audit log)."""
        return {
            f: getattr(self, f) for f in self.__struct_fields__ if getattr(self, f) is not UNSET
        }


def trailing_rule(instrument: Instrument, spec: TrailingSpec | None) -> TrailingRule | None:
    """``spec`` (price units) in points, checked against the instrument.

    Raises:
        SizingRefused: the rule would set stops closer than the broker allows.
    """
    if spec is None:
        return None
    to_points = instrument.to_points
    rule = TrailingRule(
        distance=to_points(spec.distance),
        step=to_points(spec.step),
        activation=to_points(spec.activation),
    )
    check_rules(instrument, rule, None)
    return rule


def break_even_rule(instrument: Instrument, spec: BreakEvenSpec | None) -> BreakEvenRule | None:
    """``spec`` (price units) in points, checked against the instrument.

    Raises:
        SizingRefused: the moved SL would be closer to the price than the broker allows.
    """
    if spec is None:
        return None
    to_points = instrument.to_points
    rule = BreakEvenRule(trigger=to_points(spec.trigger), offset=to_points(spec.offset))
    check_rules(instrument, None, rule)
    return rule


def default_rules(
    instrument: Instrument, trailing: TrailingDefault | None, break_even: BreakEvenDefault | None
) -> tuple[TrailingRule | None, BreakEvenRule | None]:
    """A user's defaults (pips) in points for ``instrument``, checked against it.

    Raises:
        SizingRefused: a rule would set stops closer than this instrument's broker allows.
    """
    pip = instrument.pip_points
    trail = (
        None
        if trailing is None
        else TrailingRule(
            distance=round(trailing.distance_pips * pip),
            step=round(trailing.step_pips * pip),
            activation=round(trailing.activation_pips * pip),
        )
    )
    be = (
        None
        if break_even is None
        else BreakEvenRule(
            trigger=round(break_even.trigger_pips * pip), offset=round(break_even.offset_pips * pip)
        )
    )
    check_rules(instrument, trail, be)
    return trail, be


def check_rules(
    instrument: Instrument, trailing: TrailingRule | None, break_even: BreakEvenRule | None
) -> None:
    """Refuse rules whose stops the broker would refuse, or that could never act.

    Raises:
        SizingRefused: ``details["reason"]`` is ``trailing_distance`` (the SL would follow
            closer than the stops level, or at less than a point) or ``break_even`` (the moved
            SL would be closer to the price than the stops level, or not below the trigger).
    """
    gap = max(1, instrument.stops_level)
    if trailing is not None and trailing.distance < gap:
        raise SizingRefused(
            f"a trailing distance of {instrument.to_price(trailing.distance)} is closer than "
            f"the broker allows ({instrument.to_price(gap)})",
            reason="trailing_distance",
            distance_points=trailing.distance,
            stops_level=instrument.stops_level,
        )
    if break_even is not None and break_even.trigger - break_even.offset < gap:
        raise SizingRefused(
            f"a break-even trigger of {instrument.to_price(break_even.trigger)} with an offset "
            f"of {instrument.to_price(break_even.offset)} would set the SL closer than the "
            f"broker allows ({instrument.to_price(gap)})",
            reason="break_even",
            trigger_points=break_even.trigger,
            offset_points=break_even.offset,
            stops_level=instrument.stops_level,
        )


def trailing_spec(instrument: Instrument, rule: TrailingRule | None) -> TrailingSpec | None:
    """A rule as clients see it (price units)."""
    if rule is None:
        return None
    to_price = instrument.to_price
    return TrailingSpec(
        distance=to_price(rule.distance),
        step=to_price(rule.step),
        activation=to_price(rule.activation),
    )


def break_even_spec(instrument: Instrument, rule: BreakEvenRule | None) -> BreakEvenSpec | None:
    """A rule as clients see it (price units)."""
    if rule is None:
        return None
    return BreakEvenSpec(
        trigger=instrument.to_price(rule.trigger), offset=instrument.to_price(rule.offset)
    )
