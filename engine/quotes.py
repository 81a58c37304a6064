"""Quote validation: which quotes the engine may act on.

A symbol actor runs every incoming quote through :class:`QuoteValidator` before the trigger
book sees it. A rejected quote is counted by reason and never acted on.

Rules, in order:

``not_finite``    bid or ask is NaN or infinite
``non_positive``  bid or ask is zero or negative
``crossed``       bid > ask (a locked market, bid == ask, is allowed)
``future``        the quote's time is more than ``max_ahead_ms`` after its arrival: a
                  publisher's clock far ahead, or microseconds sent as milliseconds
``stale``         the quote is older than ``max_age_ms`` when it arrives, or older than the
                  last accepted one (out of order)
``jump``          the mid moved more than ``max_jump`` (relative) from the last accepted mid.
                  Real markets do gap (the XAUUSD day in ``data/`` drops 5.57 in one tick, 0.4 %),
                  so a jump is accepted once ``confirm_jumps`` consecutive quotes agree on the new
                  level: a single bad print is dropped, a real move is followed.

"Arrival" is the ``now_ms`` the caller passes: when the quote reached the node (or its batch's
``sent_ms``, if earlier; see ``actors.node.Node.offer_quotes``).

No quote can hold a symbol back. A refused quote changes nothing here, and the order rule
remembers an accepted quote as no later than its arrival: a quote stamped ahead of the node's
clock (within ``max_ahead_ms``) counts as a quote of its arrival, not of its stamp. Remembered
at its stamp, one quote a year ahead made every genuine quote after it "out of order" for a
year: the price froze and no SL or TP on the symbol fired until a restart. The cost is that
quotes of a publisher whose clock runs ahead of the node's are kept in order only to the
node's clock (a quote delayed in transit by less than that lead is not refused as old).
"""

from __future__ import annotations

import math

import msgspec

__all__ = ["REJECT_REASONS", "QuoteLimits", "QuoteValidator"]

REJECT_REASONS = ("not_finite", "non_positive", "crossed", "future", "stale", "jump")
"""Every reason a quote is refused for, in the order the rules are applied."""


class QuoteLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_age_ms: int = 5_000
    """Oldest a quote may be when it arrives."""
    max_ahead_ms: int = 5_000
    """Furthest a quote's time may be ahead of its arrival: the clock skew tolerated between a
    publisher and the node (as the signature window tolerates it for devices)."""
    max_jump: float = 0.02
    """Largest relative move of the mid from one accepted quote to the next (2 %)."""
    confirm_jumps: int = 3
    """Consecutive quotes that confirm a jump before it is accepted."""


class QuoteValidator:
    """Validates the quotes of one symbol. Pure: the caller passes ``now_ms``."""

    __slots__ = ("_candidate", "_confirmations", "last_mid", "last_ts", "limits", "rejected")

    def __init__(self, limits: QuoteLimits | None = None) -> None:
        self.limits = limits or QuoteLimits()
        self.last_mid: float | None = None
        self.last_ts: int | None = None
        self.rejected: dict[str, int] = {}
        self._candidate: float | None = None
        self._confirmations = 0

    def check(self, bid: float, ask: float, ts_ms: int, now_ms: int) -> str | None:
        """``None`` if the quote may be acted on, else the reason it is rejected (and counted)."""
        reason = self._reason(bid, ask, ts_ms, now_ms)
        if reason is not None:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return reason

    def check_coalesced(self, bid: float, ask: float, ts_ms: int, now_ms: int) -> str | None:
        """The rules that need no history, for a quote coalesced into a sweep under load
        (``None``: its prices may count; otherwise the reason, counted). Order and jumps are
        not judged one quote at a time there: the sweep leaves out extremes past the jump
        limit itself (:meth:`engine.symbol.SymbolCore.on_sweep`)."""
        reason = self._static_reason(bid, ask, ts_ms, now_ms)
        if reason is not None:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return reason

    def _static_reason(self, bid: float, ask: float, ts_ms: int, now_ms: int) -> str | None:
        if not (math.isfinite(bid) and math.isfinite(ask)):
            return "not_finite"
        if bid <= 0 or ask <= 0:
            return "non_positive"
        if bid > ask:
            return "crossed"
        if ts_ms - now_ms > self.limits.max_ahead_ms:
            return "future"
        if now_ms - ts_ms > self.limits.max_age_ms:
            return "stale"
        return None

    def _reason(self, bid: float, ask: float, ts_ms: int, now_ms: int) -> str | None:
        static = self._static_reason(bid, ask, ts_ms, now_ms)
        if static is not None:
            return static
        limits = self.limits
        if self.last_ts is not None and ts_ms < self.last_ts:
            return "stale"
        mid = (bid + ask) * 0.5
        last = self.last_mid
        if last is not None and abs(mid - last) > limits.max_jump * last:
            # Confirm a jump: the following quotes must stay near the new level.
            candidate = self._candidate
            if candidate is not None and abs(mid - candidate) <= limits.max_jump * candidate:
                self._confirmations += 1
            else:
                self._candidate, self._confirmations = mid, 1
            if self._confirmations < limits.confirm_jumps:
                return "jump"
        self._candidate, self._confirmations = None, 0
        self.last_mid = mid
        # No later than its arrival: a stamp ahead of the clock must not make the quotes
        # after it look old (see the module doc).
        self.last_ts = min(ts_ms, now_ms)
        return None
