"""One symbol's watch: quote validation, market guard, trailing stops and the trigger book.

:class:`SymbolCore` is what a symbol actor drives. A quote goes, in order:

1. through the :class:`~engine.quotes.QuoteValidator` (a rejected quote is counted and stops
   here: nothing acts on it);
2. into integer points, and through the :class:`~engine.guards.MarketGuard` (alerts only);
3. through the :class:`~engine.trailing.TrailingBook`, whose SL moves re-arm the trigger book;
4. through the :class:`~engine.triggers.TriggerBook`, whose crossed levels are returned with the
   user that owns each position, for the symbol actor to hand to that user.

Per quote the work does not grow with the number of positions (see the two books).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, cast

from engine.guards import MarketGuard, MarketLimits
from engine.instruments import Instrument
from engine.positions import BreakEvenRule, Position, TrailingRule
from engine.quotes import QuoteLimits, QuoteValidator
from engine.trailing import LevelMove, TrailingBook
from engine.triggers import KEEP, Keep, Trigger, TriggerBook
from protocol.common import Alert, Side

__all__ = ["QuoteOutcome", "SymbolCore"]


class QuoteOutcome(NamedTuple):
    """What one quote did. ``rejected`` is the validator's reason, if it refused the quote."""

    rejected: str | None
    fired: list[tuple[str, Trigger]]
    """``(user_id, trigger)`` in the trigger book's order."""
    moved: list[tuple[str, LevelMove]]
    alerts: list[Alert]


_NOTHING = QuoteOutcome(None, [], [], [])


class SymbolCore:
    """Everything one symbol decides about quotes and levels. Pure: time comes in."""

    __slots__ = (
        "_scale",
        "ask",
        "bid",
        "book",
        "guard",
        "instrument",
        "last_quote_ms",
        "trailing",
        "validator",
    )

    def __init__(
        self,
        instrument: Instrument,
        quote_limits: QuoteLimits | None = None,
        market_limits: MarketLimits | None = None,
    ) -> None:
        self.instrument = instrument
        self.validator = QuoteValidator(quote_limits)
        self.guard = MarketGuard(instrument.symbol, market_limits)
        self.book = TriggerBook(instrument.symbol)
        self.trailing = TrailingBook(instrument.symbol)
        self._scale = instrument.scale
        self.bid: float | None = None
        self.ask: float | None = None
        self.last_quote_ms: int | None = None

    @property
    def symbol(self) -> str:
        return self.instrument.symbol

    def __len__(self) -> int:
        return len(self.book)

    def owner(self, position_id: str) -> str | None:
        return self.book.owner(position_id)

    # -- levels ------------------------------------------------------------------------------

    def arm(
        self,
        position_id: str,
        user_id: str,
        side: Side,
        open_price: int,
        sl: int | None,
        tp: int | None,
        trailing: TrailingRule | None = None,
        break_even: BreakEvenRule | None = None,
    ) -> list[tuple[str, Trigger]]:
        """Watch a position. Returns its trigger at once if the last quote already crossed it.

        Arming a position that is already armed re-arms it with the new levels.
        """
        if position_id in self.book:
            self.disarm(position_id)
        fired = self.book.register(position_id, side, sl, tp, owner=user_id)
        if fired:
            return [(user_id, t) for t in fired]
        if trailing is not None or break_even is not None:
            self.trailing.add(position_id, side, open_price, sl, trailing, break_even)
        return []

    def arm_many(self, positions: Iterable[Position]) -> list[tuple[str, Trigger]]:
        """Watch many OPEN positions at once (recovery); see :meth:`TriggerBook.register_many`.

        Positions already watched are re-armed one by one.
        """
        book = self.book
        fired: list[tuple[str, Trigger]] = []
        levels: list[tuple[str, Side, int | None, int | None]] = []
        users: list[str] = []
        ruled: list[Position] = []
        # One pass over the positions (a restart gives every position of the symbol).
        for p in positions:
            if p.open_price is None:
                continue
            pid = p.id
            if pid in book:
                fired += self.arm(
                    pid, p.user_id, p.side, p.open_price, p.sl, p.tp, p.trailing, p.break_even
                )
                continue
            levels.append((pid, p.side, p.sl, p.tp))
            users.append(p.user_id)
            if p.trailing is not None or p.break_even is not None:
                ruled.append(p)
        fired += self._owned(book.register_many(levels, users))
        for p in ruled:
            if p.id in book:
                assert p.open_price is not None
                self.trailing.add(p.id, p.side, p.open_price, p.sl, p.trailing, p.break_even)
        return fired

    def move(
        self, position_id: str, sl: int | Keep | None = KEEP, tp: int | Keep | None = KEEP
    ) -> list[tuple[str, Trigger]]:
        """Change a watched position's levels (a user's modify). Unknown positions are ignored."""
        if position_id not in self.book:
            return []
        if not isinstance(sl, Keep) and position_id in self.trailing:
            self.trailing.set_sl(position_id, sl)
        return self._owned(self.book.modify(position_id, sl=sl, tp=tp))

    def disarm(self, position_id: str) -> bool:
        """Stop watching a position (closed, or closing by other means)."""
        if not self.book.cancel(position_id):
            return False
        self.trailing.remove(position_id)
        return True

    def disarm_many(self, position_ids: Iterable[str]) -> int:
        """Stop watching several positions at once (their user left this node): O(their
        number), whatever the size of the book. Returns how many were watched."""
        ids = list(position_ids)
        removed = self.book.cancel_many(ids)
        if removed and len(self.trailing):
            self.trailing.remove_many(ids)
        return removed

    # -- quotes ------------------------------------------------------------------------------

    def on_quote(
        self, bid: float, ask: float, ts_ms: int, now_ms: int, max_fired: int | None = None
    ) -> QuoteOutcome:
        """Judge a quote, move trailing stops, fire what it crossed.

        ``max_fired``: fire at most that many levels now and leave the rest of a storm pending
        in the book (:meth:`fire_pending`); fires an earlier quote left pending come first.
        """
        rejected = self.validator.check(bid, ask, ts_ms, now_ms)
        if rejected is not None:
            return QuoteOutcome(rejected, [], [], [])
        earlier = self.fire_pending() if self.book.pending else []
        self.bid, self.ask, self.last_quote_ms = bid, ask, now_ms
        scale = self._scale
        bid_points, ask_points = round(bid * scale), round(ask * scale)
        alerts = self.guard.on_quote(bid, ask, now_ms)
        # The levels in force first, then the trailing moves this quote causes: a move is
        # judged against this quote's price (the book's, once on_quote has set it), and a
        # position this quote fires is not moved. (Moved first, a move was judged against the
        # previous quote's price: one it crossed fired inside modify, unreported, and the
        # position's next move raised KeyError.)
        fired = earlier
        triggers = self.book.on_quote(bid_points, ask_points, max_fired)
        if triggers:
            fired = earlier + self._owned(triggers)
        moved: list[tuple[str, LevelMove]] = []
        if len(self.trailing):
            owner, modify = self.book.owner, self.book.modify
            for move in self.trailing.on_quote(bid_points, ask_points):
                crossed = modify(move.position_id, sl=move.sl)
                if crossed:  # a move onto the price's far side (a break-even past it)
                    fired = fired + self._owned(crossed)
                else:
                    moved.append((cast(str, owner(move.position_id)), move))
        if not fired:
            if not moved and not alerts:
                return _NOTHING
            return QuoteOutcome(None, [], moved, alerts)
        return QuoteOutcome(None, fired, moved, alerts)

    @property
    def pending(self) -> int:
        """Levels a quote crossed that are not fired yet (see :meth:`on_quote`)."""
        return self.book.pending

    def fire_pending(self, max_fired: int | None = None) -> list[tuple[str, Trigger]]:
        """Fire up to ``max_fired`` (None: all) of the levels left pending, in order."""
        return self._owned(self.book.fire_pending(max_fired))

    def tidy(self) -> bool:
        """The book's deferred housekeeping after a storm (``TriggerBook.tidy``)."""
        return self.book.tidy()

    def _owned(self, triggers: list[Trigger]) -> list[tuple[str, Trigger]]:
        """Fired triggers with their owners; the positions are no longer watched here."""
        # Every position here was registered with its user: each trigger's owner is set.
        fired = cast("list[tuple[str, Trigger]]", [(t.owner, t) for t in triggers])
        if len(self.trailing):
            remove = self.trailing.remove
            for t in triggers:
                remove(t.position_id)
        return fired

    def on_sweep(
        self, bid_low: float, bid_high: float, ask_low: float, ask_high: float
    ) -> list[tuple[str, Trigger]]:
        """Fire what quotes coalesced away under load crossed, from their extreme prices.

        The lowest bid and highest ask are applied first (they cross long and short SLs), then
        the highest bid and lowest ask (long and short TPs). Each is a price a real quote had;
        an extreme further than the validator's jump limit from the last accepted mid is left
        out, as the validator would have refused it. The quote that follows the sweep updates
        the book's current price and the trailing stops as usual.
        """
        mid = self.validator.last_mid
        if mid is None:
            return []
        limit = self.validator.limits.max_jump * mid
        scale = self.instrument.scale

        def usable(price: float, fallback: float | None) -> int | None:
            chosen = price if abs(price - mid) <= limit else fallback
            return None if chosen is None else round(chosen * scale)

        fired: list[tuple[str, Trigger]] = []
        last_bid, last_ask = self.bid, self.ask
        for bid, ask in ((bid_low, ask_high), (bid_high, ask_low)):
            b, a = usable(bid, last_bid), usable(ask, last_ask)
            if b is None or a is None:
                continue
            fired += self._owned(self.book.on_quote(b, a))
        return fired

    def check_silence(self, now_ms: int) -> list[Alert]:
        return self.guard.check_silence(now_ms)
