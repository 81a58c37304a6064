"""Mailboxes: bounded queues between actors, each with a named overflow policy.

Every mailbox is a deque of items plus a doorbell (a ring wakes the receiver if it waits, and
costs nothing when it does not). The receiver drains everything that is waiting in one
wake-up, which is what keeps a burst cheap: a task hop costs ~20 us on the dev machine, an item
in a drained batch well under one.

Policies (what happens past ``capacity``):

``spill``    never drop, never block: the item is kept past the bound, counted in ``spilled``,
             and ``over`` turns true so the owner can alert. For commands and triggers: losing
             one would lose a close.
``block``    ``await put(item)`` waits for room (for producers that may wait: REST requests).
``coalesce`` quotes (:class:`QuoteInbox`): past the bound the newest quote replaces the queued
             ones, keeping the extreme bid and ask they saw, so a level a skipped quote crossed
             still fires (with that quote's price).
``drop``     client streams (:class:`StreamBuffer`): updates coalesce by key (the latest state of
             a position replaces the previous one); a consumer that overruns ``max_overruns``
             times is closed, never allowed to slow a producer.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar, final

import trio

from protocol.feed import Quote

__all__ = ["Mailbox", "QueuedQuote", "QuoteInbox", "StreamBuffer", "Sweep"]

T = TypeVar("T")
C = TypeVar("C")


class _Doorbell:
    """Wakes the one task waiting for its mailbox; never blocks the ringer.

    A ring nobody waits for is forgotten, which is safe because every waiter checks its
    mailbox before it parks (``while not items: await wait()``). That makes a ring on a busy
    mailbox a length check: the memory channel this replaced raised ``WouldBlock`` on every
    ring while a wake-up was pending, ~6 us a command in a breach storm (bench.engine).

    The waiter is kept in a slot and rescheduled directly: a ``trio.lowlevel.ParkingLot``
    (an ordered dict of waiters, a generator and a list per wake-up) cost ~4 us a wake-up
    here, and a fired user wakes its device's writer (bench.engine's tick-to-outbox).
    """

    __slots__ = ("_abort", "_waiter")

    def __init__(self) -> None:
        self._waiter: trio.lowlevel.Task | None = None
        self._abort = self._aborted  # bound once: a wait makes no closure

    @property
    def waiting(self) -> bool:
        """A task is parked here (its mailbox was empty when it parked)."""
        return self._waiter is not None

    def ring(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        if self._waiter is not None:  # a mailbox has one consumer: a second is a bug
            raise RuntimeError("a mailbox's doorbell already has a waiting task")
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _aborted(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._waiter = None  # cancelled while waiting: nobody waits any more
        return trio.lowlevel.Abort.SUCCEEDED


class Mailbox(Generic[T]):
    """A FIFO mailbox with the ``spill`` or ``block`` policy."""

    def __init__(self, name: str, capacity: int = 65_536, policy: str = "spill") -> None:
        if policy not in {"spill", "block"}:
            raise ValueError("Mailbox policy must be spill or block")
        self.name = name
        self.capacity = capacity
        self.policy = policy
        self._items: deque[T] = deque()
        self._bell = _Doorbell()
        self._room = trio.Event()
        self.spilled = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def awaited(self) -> bool:
        """True while the consumer is parked on this mailbox, which is then empty: an item
        handled in the producer's task now cannot overtake one the consumer has still to handle
        (a woken consumer is no longer awaiting, and takes its items only when it runs)."""
        return self._bell.waiting

    @property
    def over(self) -> bool:
        """True while more items wait than the mailbox's capacity."""
        return len(self._items) > self.capacity

    def put_nowait(self, item: T) -> None:
        """Enqueue without waiting (``spill``: never refuses, counts what is over the bound)."""
        items = self._items
        items.append(item)
        depth = len(items)
        if depth > self.capacity:
            self.spilled += 1
        self.high_water = max(self.high_water, depth)
        self._bell.ring()

    def put_many_nowait(self, items: Sequence[T]) -> None:
        """:meth:`put_nowait` for several items, in order, with one ring."""
        queue = self._items
        queue.extend(items)
        depth = len(queue)
        if depth > self.capacity:
            self.spilled += min(len(items), depth - self.capacity)
        self.high_water = max(self.high_water, depth)
        self._bell.ring()

    async def put(self, item: T) -> None:
        """Enqueue, waiting for room first under the ``block`` policy."""
        while self.policy == "block" and len(self._items) >= self.capacity:
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()
        self.put_nowait(item)

    async def get_batch(self) -> list[T]:
        """Everything waiting (at least one item), oldest first."""
        while not self._items:
            await self._bell.wait()
        batch = list(self._items)
        self._items.clear()
        self._room.set()
        return batch


class Sweep(NamedTuple):
    """Quotes coalesced away under load: their extremes, and how many they were."""

    bid_low: float
    bid_high: float
    ask_low: float
    ask_high: float
    quotes: int
    """How many quotes were coalesced (``count`` would shadow ``tuple.count``)."""


@final  # the symbol actor tests ``type(item) is QueuedQuote``: final lets mypy narrow it
class QueuedQuote(NamedTuple):
    """A quote waiting in a symbol actor's inbox, with the time it reached the node.

    Staleness is judged on arrival (``arrived_ms``): a quote that waited in the engine's own
    queue is as fresh as it was when it came in. Rejecting it for our lag would miss the
    breach it carries.
    """

    quote: Quote
    arrived_ms: int


class QuoteInbox(Generic[C]):
    """A symbol actor's inbox: quotes (``coalesce`` policy) and control items ``C`` (never
    dropped)."""

    def __init__(
        self,
        name: str,
        quote_capacity: int = 4096,
        admit: Callable[[Quote, int], bool] | None = None,
    ) -> None:
        self.name = name
        self.capacity = quote_capacity
        self.admit = admit
        """Whether a quote (and its arrival time) may count in a sweep: a quote validation
        would refuse is never acted on, coalesced or not."""
        self._items: deque[QueuedQuote | C] = deque()
        self._quotes = 0
        self._sweep: list[float] | None = None  # bid_low, bid_high, ask_low, ask_high, count
        self._bell = _Doorbell()
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._items)

    def put_quote(self, quote: Quote, arrived_ms: int) -> None:
        if self._quotes >= self.capacity:
            self._coalesce()
        self._items.append(QueuedQuote(quote, arrived_ms))
        self._quotes += 1
        self._bell.ring()

    def put_control(self, item: C) -> None:
        self._items.append(item)
        self._bell.ring()

    def drop_controls(self, unwanted: Callable[[C], bool]) -> int:
        """Take out the queued control items ``unwanted`` picks (quotes and the other items
        keep their order); returns how many went. A scan of the inbox: for rare events only."""
        kept: deque[QueuedQuote | C] = deque()
        dropped = 0
        for item in self._items:
            if type(item) is not QueuedQuote and unwanted(item):
                dropped += 1
            else:
                kept.append(item)
        if dropped:
            self._items = kept
        return dropped

    def _coalesce(self) -> None:
        """Fold every queued quote into the sweep; control items keep their places."""
        sweep = self._sweep or [math.inf, -math.inf, math.inf, -math.inf, 0.0]
        kept: deque[QueuedQuote | C] = deque()
        admit = self.admit
        for item in self._items:
            if type(item) is QueuedQuote:
                quote = item.quote
                self.coalesced += 1
                if admit is not None and not admit(quote, item.arrived_ms):
                    continue
                sweep[0] = min(sweep[0], quote.bid)
                sweep[1] = max(sweep[1], quote.bid)
                sweep[2] = min(sweep[2], quote.ask)
                sweep[3] = max(sweep[3], quote.ask)
                sweep[4] += 1
            else:
                kept.append(item)
        self._items, self._quotes = kept, 0
        if sweep[4]:  # nothing admitted: no sweep
            self._sweep = sweep

    async def get_batch(self) -> tuple[Sweep | None, list[QueuedQuote | C]]:
        """The sweep of coalesced quotes (if any), then every waiting item in order."""
        while not self._items and self._sweep is None:
            await self._bell.wait()
        sweep = None
        if self._sweep is not None:
            s = self._sweep
            sweep = Sweep(s[0], s[1], s[2], s[3], int(s[4]))
            self._sweep = None
        batch = list(self._items)
        self._items.clear()
        self._quotes = 0
        return sweep, batch


class StreamBuffer(Generic[T]):
    """What one client has yet to receive: coalesced by key, bounded, dropping slow consumers."""

    def __init__(self, capacity: int = 1024, max_overruns: int = 3) -> None:
        self.capacity = capacity
        self.max_overruns = max_overruns
        self._pending: OrderedDict[object, T] = OrderedDict()
        self._bell = _Doorbell()
        self.overruns = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._pending)

    def offer(self, key: object, item: T) -> None:
        """Queue ``item``, replacing any not yet sent under the same ``key``."""
        if self.closed:
            return
        pending = self._pending
        if key in pending:
            pending[key] = item  # the latest state replaces the one not yet sent
        else:
            if len(pending) >= self.capacity:
                self.overruns += 1
                if self.overruns >= self.max_overruns:
                    self.closed = True
                    pending.clear()
                    self._bell.ring()
                    return
                pending.popitem(last=False)  # the oldest update goes; newer ones supersede it
            pending[key] = item
        self._bell.ring()

    async def get_batch(self) -> list[T]:
        """Everything pending. Returns an empty list once the consumer has been dropped."""
        while not self._pending and not self.closed:
            await self._bell.wait()
        batch = list(self._pending.values())
        self._pending.clear()
        return batch
