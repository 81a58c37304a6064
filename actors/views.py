"""Read-only views of actors, for the edge (REST handlers, metrics, harnesses).

The edge never reads an actor's core: it asks the actor for one of these, an immutable value
taken at the moment of the call (as trio's ``statistics()``), named for what it answers.
Reading one is synchronous and safe from any task: trio runs every task on one thread and an
actor's core changes only inside its synchronous handlers, so a view is never half-updated.
"""

from __future__ import annotations

from typing import NamedTuple

from engine.guards import DrawdownLimits, GuardLevel
from engine.positions import Position

__all__ = [
    "AdoptedUsers",
    "DrawdownStatus",
    "LedgerStatus",
    "MarketGuardStatus",
    "ReleasedUsers",
]


class DrawdownStatus(NamedTuple):
    """A user's drawdown guard, and the account figures it judges."""

    level: GuardLevel
    drawdown: float
    peak: float | None
    opens_blocked: bool
    limits: DrawdownLimits
    equity: float | None
    balance: float | None


class LedgerStatus(NamedTuple):
    """What a user actor knows of the account beyond Postgres."""

    balance: float | None
    """The balance the user's terminal last reported (None: none yet)."""
    unreported: float
    """The P&L of the closes that balance does not hold yet."""
    recent_closed: tuple[Position, ...]
    """The latest final positions, oldest first (some maybe not written to Postgres yet)."""


class MarketGuardStatus(NamedTuple):
    """A symbol's market guard."""

    median_spread: float | None
    alerting: frozenset[str]
    """The market conditions alerting now (``spread``, ``price_jump``...)."""
    last_quote_ms: int | None


class AdoptedUsers(NamedTuple):
    """What :meth:`actors.node.Node.adopt` took over."""

    user_ids: frozenset[str]
    """The users whose actors now run here (every user with a part of the adopted state)."""
    positions: int
    """Positions merged in (live ones, and closes still waiting for their fill)."""
    in_flight: int
    """Commands that were in flight: each lost its link, until its device's snapshot."""


class ReleasedUsers(NamedTuple):
    """What :meth:`actors.node.Node.release` gave away."""

    user_ids: frozenset[str]
    device_ids: tuple[str, ...]
    """The devices whose actors (and sessions) were stopped here."""
    positions_disarmed: int
    """Positions that left a symbol actor's book."""
