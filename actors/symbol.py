"""The symbol actor: one per canonical symbol, the first stop of every tick.

It owns the symbol's :class:`~engine.symbol.SymbolCore` (validator, market guard, trailing and
trigger books). Quotes arrive through :meth:`offer` (coalescing inbox), arm/move/disarm requests
from user actors through :meth:`control`, both in one FIFO so a position is always armed before
a later quote is judged against it. What a quote fires goes to each owning user's mailbox with a
non-blocking put: per quote the work does not grow with the number of open positions.

The idle fast path: when the inbox is empty, :meth:`offer` processes the quote at once, in the
caller's task (trio runs every task on one thread, so nothing can interleave with the
synchronous core). That saves a task hop, ~20 us of a ~50 us budget, on the common case of a
quote arriving at a quiet actor; a busy actor's quotes queue as usual, and FIFO order with
arm requests is kept because the fast path is taken only when nothing is queued. A failure on
the fast path is handed to the actor's own task, which raises it so that the supervisor
restarts the actor as for any other failure.

A breach storm is handed out in slices. Fired triggers go to their users (whose own fast path
handles them in the same task) for at most ``NodeConfig.dispatch_budget_ms``; what is left
waits in the actor's backlog, and its task hands it out one slice per scheduler round. Without
this, a gap through 100,000 levels held the event loop for the whole storm (~2 s): no close
reached a socket, no other symbol's quote was judged, no heartbeat was read until the last
close was made. Order is kept (while a backlog waits, later fires join its end and quotes
queue), and a backlog the task cannot finish (cancelled, failed) is put in the users'
mailboxes, never dropped. The firing itself is stepped the same way: the book fires at most
``NodeConfig.fire_step`` crossed levels per quote and keeps the rest pending, and the task
fires the next step whenever the backlog runs dry (the drain of 100,000 levels was one ~0.6 s
step before).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Collection, Iterable
from typing import assert_never, final

import structlog
import trio

from actors import gc_policy, tracing
from actors.mailbox import QueuedQuote, QuoteInbox, Sweep
from actors.messages import Failure, Fired, Moved, SymbolControl
from actors.ports import SymbolNode
from actors.views import MarketGuardStatus
from engine.effects import Arm, Disarm, MoveLevels
from engine.instruments import Instrument
from engine.symbol import SymbolCore
from engine.trailing import LevelMove
from engine.triggers import Trigger
from protocol.feed import Quote

__all__ = ["SymbolActor"]


_HOLD_MAX_S = 5.0
"""The longest a storm holds the collector (see ``gc_policy.hold``): a backlog that does not drain
(fires arriving faster than they are handed out) must not keep it off for good."""


@final
class _Resume:
    """Put in the inbox when the fast path leaves a backlog: wakes the task to hand it out."""

    __slots__ = ()


_RESUME = _Resume()

_Control = SymbolControl | Failure | _Resume
"""What the inbox holds besides quotes."""


class SymbolActor:
    def __init__(self, node: SymbolNode, instrument: Instrument) -> None:
        self.node = node
        self.instrument = instrument
        self.symbol = instrument.symbol
        self.inbox: QuoteInbox[_Control] = QuoteInbox(
            f"symbol:{self.symbol}", node.config.quote_inbox, self._admit
        )
        self.core = self._new_core()
        self.quotes = 0
        self.rejections: dict[str, int] = {}
        """Quotes refused by validation, by reason (``engine.quotes.REJECT_REASONS``). Kept here,
        not read from the core's validator: a restart replaces the core, and a metric must not
        go back."""
        self.fired = 0
        self.seq = 0
        self._idle = False
        """True while the actor's task is waiting for its inbox (the fast path is open)."""
        self._storm: tuple[int, float] = (0, 0.0)
        """The seq and start of the quote whose fires are still pending in the book."""
        self._backlog: deque[tuple[str, Fired]] = deque()
        """Fires not handed to their users yet (a storm's remainder, see the module doc)."""
        self._held_at: float | None = None
        """When this actor's storm began to hold the collector (None: it does not)."""
        self._judged: tuple[int, int] = (0, 0)
        """(frame, offered) stamps of the quote being judged, when hop tracing is on."""
        self.log = structlog.get_logger().bind(symbol=self.symbol)
        self._probes = node.probes

    def _new_core(self) -> SymbolCore:
        config = self.node.config
        return SymbolCore(self.instrument, config.quote_limits, config.market_limits)

    # -- inputs (never block) ----------------------------------------------------------------

    def offer(self, quote: Quote, arrived_ms: int) -> None:
        """A quote from a feed that reached the node at ``arrived_ms``: processed now if the
        actor is idle, queued otherwise."""
        if self._idle and not len(self.inbox):
            try:
                self._quote(quote, arrived_ms)
            except Exception as exc:  # the actor's failure, raised in the actor's own task
                self._idle = False
                self.inbox.put_control(Failure(exc))
            return
        self.inbox.put_quote(quote, arrived_ms)

    def _admit(self, quote: Quote, arrived_ms: int) -> bool:
        """May a quote coalesced under load count in the sweep? (Refused ones are counted.)"""
        reason = self.core.validator.check_coalesced(
            quote.bid, quote.ask, quote.time_ms, arrived_ms
        )
        if reason is None:
            return True
        self._refused(reason)
        return False

    def _refused(self, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    @property
    def rejected(self) -> int:
        """Quotes refused by validation, whatever the reason."""
        return sum(self.rejections.values())

    @property
    def unhanded(self) -> int:
        """Fires not handed to their users yet: messages in the backlog, levels still pending
        in the book."""
        return len(self._backlog) + self.core.pending

    def control(self, op: SymbolControl) -> None:
        """An arm/move/disarm from a user actor."""
        self.inbox.put_control(op)

    def release(self, user_ids: Collection[str], position_ids: Iterable[str]) -> int:
        """Forget users that leave this node, at once: their positions leave the book (and a
        storm's pending levels of theirs are skipped), their fires not yet handed out and their
        arms and moves still queued are dropped. From the return on, no quote fires anything of
        theirs here. Synchronous, like :meth:`offer`'s fast path: trio runs every task on one
        thread and the core is synchronous, so nothing interleaves. Returns how many positions
        left the book.
        """
        removed = self.core.disarm_many(position_ids)
        self.inbox.drop_controls(
            lambda item: type(item) in (Arm, MoveLevels) and item.position.user_id in user_ids  # type: ignore[union-attr]
        )
        backlog = self._backlog
        if backlog:  # in place: the task handing it out holds this very deque
            kept = [(user_id, fired) for user_id, fired in backlog if user_id not in user_ids]
            backlog.clear()
            backlog.extend(kept)
        return removed

    # -- views (read-only, for the edge) -----------------------------------------------------

    @property
    def armed(self) -> int:
        """Positions whose levels the book watches."""
        return len(self.core)

    def market_guard(self) -> MarketGuardStatus:
        guard = self.core.guard
        return MarketGuardStatus(guard.median_spread, guard.alerting, guard.last_quote_ms)

    # -- the actor ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Restore the book from the node's state, then serve the inbox until cancelled."""
        self.core = self._new_core()
        # The book is rebuilt from the node's state fold, in bulk, on every (re)start.
        with gc_policy.bulk_build():
            fired = self.core.arm_many(
                p
                for p in self.node.state.positions.values()
                if p.symbol == self.symbol and p.watched
            )
        if fired:
            self._dispatch_fired(fired)
        try:
            await self._serve()
        finally:
            # Cancelled or failed with fires not handed out: they wait in the users' mailboxes
            # (their positions are still OPEN in the state, so nothing is decided twice).
            # A storm's fires still pending in the book go the same way.
            try:
                if self.core.pending:
                    seq, started = self._storm
                    self._backlog.extend(self._messages(self.core.fire_pending(), seq, started))
            except Exception:  # the book itself failed: the restarted actor re-arms them
                self.log.exception("pending fires left to the restarted book")
            while self._backlog:
                user_id, message = self._backlog.popleft()
                self.node.user(user_id).deliver(message, inline=False)
            self._release()

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_silence)
            while True:
                await self._hand_out_backlog()
                self._idle = True
                try:
                    sweep, batch = await self.inbox.get_batch()
                finally:
                    self._idle = False
                now = self.node.clock.now_ms()
                if sweep is not None:
                    self._sweep(sweep, now)
                for item in batch:
                    # Quotes first, by their exact type: cheaper than a class pattern.
                    if type(item) is QueuedQuote:
                        self._quote(item.quote, item.arrived_ms)
                        continue
                    match item:
                        case Arm() | MoveLevels() | Disarm():
                            self._control(item)
                        case Failure(error=error):
                            raise error
                        case _Resume():
                            pass
                        case _:
                            assert_never(item)

    def _quote(self, quote: Quote, arrived_ms: int) -> None:
        trace = tracing.TRACE
        if trace is not None:
            self._judged = trace.quote_judged(quote)
        self.seq += 1
        self.quotes += 1
        outcome = self.core.on_quote(
            quote.bid, quote.ask, quote.time_ms, arrived_ms, self.node.config.fire_step
        )
        if self.core.pending:  # (on_quote fired earlier pending levels first: these are ours)
            self._storm = (self.seq, time.perf_counter())
            self._hold()
        if outcome.rejected is not None:
            self._refused(outcome.rejected)
            return
        self.node.prices.update(self.symbol, quote.bid, quote.ask, quote.time_ms)
        quote_done = self._probes.quote_done
        if quote_done is not None:
            quote_done(self.seq)
        if outcome.fired:
            self._dispatch_fired(outcome.fired)
        if outcome.moved:
            self._dispatch_moved(outcome.moved)
        if outcome.alerts:
            self.node.raise_market_alerts(outcome.alerts)

    def _sweep(self, sweep: Sweep, now_ms: int) -> None:
        """Quotes coalesced away under load: fire what their extremes crossed."""
        fired = self.core.on_sweep(sweep.bid_low, sweep.bid_high, sweep.ask_low, sweep.ask_high)
        self.log.warning("quotes coalesced under load", count=sweep.quotes, fired=len(fired))
        if fired:
            self._dispatch_fired(fired)

    def _dispatch_fired(self, fired: list[tuple[str, Trigger]]) -> None:
        seq, started = self.seq, time.perf_counter()
        messages = self._messages(fired, seq, started)
        backlog = self._backlog
        if backlog:  # earlier fires are still being handed out: these go after them
            backlog.extend(messages)
            return
        node = self.node
        clock = time.perf_counter
        deadline = started + node.config.dispatch_budget_ms / 1000
        for i, (user_id, message) in enumerate(messages):
            node.user(user_id).deliver(message)
            if clock() > deadline and i + 1 < len(messages):
                backlog.extend(messages[i + 1 :])
                break
        if backlog or self.core.pending:
            # Close the fast path (later quotes queue behind the storm) and wake the task.
            self._idle = False
            self.inbox.put_control(_RESUME)
            self._hold()

    def _messages(
        self, fired: list[tuple[str, Trigger]], seq: int, started: float
    ) -> list[tuple[str, Fired]]:
        """Fired triggers as one message per user, users in order of their first trigger."""
        self.fired += len(fired)
        by_user: dict[str, list[Trigger]] = defaultdict(list)
        for user_id, trigger in fired:
            by_user[user_id].append(trigger)
        stamps = None
        if tracing.TRACE is not None:
            stamps = (*self._judged, tracing.now_ns())
        return [(user, Fired(triggers, seq, started, stamps)) for user, triggers in by_user.items()]

    async def _hand_out_backlog(self) -> None:
        """Hand the backlog to the users, and fire what a storm left pending in the book,
        one budget's worth per scheduler round."""
        backlog, node, core, clock = self._backlog, self.node, self.core, time.perf_counter
        while backlog or core.pending:
            deadline = clock() + node.config.dispatch_budget_ms / 1000
            while True:  # at least one user per round, whatever the budget
                if not backlog:
                    if not core.pending:
                        break
                    seq, started = self._storm
                    backlog.extend(
                        self._messages(core.fire_pending(node.config.fire_step), seq, started)
                    )
                    continue
                user_id, message = backlog.popleft()
                node.user(user_id).deliver(message)
                if clock() > deadline:
                    break
            if backlog or core.pending:
                held = self._held_at
                if held is not None and clock() - held > _HOLD_MAX_S:
                    self._release()  # a storm that long: collect as usual meanwhile
                await trio.lowlevel.checkpoint()
            else:
                # The storm is handed out: let the writers send the last closes, then tidy
                # the book (the compaction fire_pending leaves for now) and collect again.
                await trio.lowlevel.checkpoint()
                core.tidy()
                self._release()

    def _hold(self) -> None:
        """Hold the collector while this actor's storm is handed out (see ``gc_policy.hold``)."""
        if self._held_at is None:
            gc_policy.hold()
            self._held_at = time.perf_counter()

    def _release(self) -> None:
        if self._held_at is not None:
            self._held_at = None
            gc_policy.release()

    def _dispatch_moved(self, moved: list[tuple[str, LevelMove]]) -> None:
        by_user: dict[str, list[LevelMove]] = defaultdict(list)
        for user_id, move in moved:
            by_user[user_id].append(move)
        for user_id, moves in by_user.items():
            self.node.user(user_id).deliver(Moved(moves))

    def _control(self, op: SymbolControl) -> None:
        match op:
            case Arm():
                self._arm(op)
            case MoveLevels(position=p):
                fired = self.core.move(p.id, sl=p.sl, tp=p.tp)
                if fired:
                    self._dispatch_fired(fired)
            case Disarm(position_id=position_id):
                self.core.disarm(position_id)
            case _:
                assert_never(op)

    def _arm(self, op: Arm) -> None:
        p = op.position
        if p.open_price is None:
            return
        fired = self.core.arm(
            p.id, p.user_id, p.side, p.open_price, p.sl, p.tp, p.trailing, p.break_even
        )
        if fired:
            self._dispatch_fired(fired)

    async def _watch_silence(self) -> None:
        interval = self.node.config.market_limits.silence_ms / 4000
        while True:
            await trio.sleep(interval)
            alerts = self.core.check_silence(self.node.clock.now_ms())
            if alerts:
                self.node.raise_market_alerts(alerts)
