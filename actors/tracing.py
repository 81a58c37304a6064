"""Hop tracing of the close path: when each step of a quote's way to a close command happened.

Off by default, and then it costs a module-attribute read and a branch at each hop. A harness
(``bench.e2e_engine --trace``) turns it on with :func:`enable`; every hop is then stamped with
``time.monotonic_ns()``, the one clock shared by every process of the machine, so the harness
can put the device's arrival time beside them.

The hops of one close command, in order (``HOPS``):

``frame``    the feed frame carrying the quote was read off the socket (the handler has it);
``offered``  the symbol actor began to judge the quote (the book is consulted);
``fired``    the book fired the position's level;
``decided``  the user actor decided the close (its core returned the command);
``outbox``   the command was in its device session's outbox;
``sent``     the frame carrying it was handed to the socket (the send returned).

A quote's first two stamps wait in :attr:`HopTrace.quotes` (keyed by the quote object's id)
between the feed handler and the symbol actor, which may be two tasks when the actor is busy.

Beside the hops, :attr:`HopTrace.busy` records when the engine handled each feed frame and each
device frame (``FEED``, ``DEVICE``): what a quote that waited before its frame was read waited
for (a burst's acks, earlier quotes, or neither).
"""

from __future__ import annotations

import time
from typing import Final

__all__ = ["HOPS", "TRACE", "HopTrace", "enable"]

HOPS: Final = ("frame", "offered", "fired", "decided", "outbox", "sent")

FEED: Final = 0
"""``busy`` kind: a feed frame, from its read to its quotes offered (fired closes included)."""
DEVICE: Final = 1
"""``busy`` kind: a device frame, from its read to its message handled (an ack settled)."""

_now = time.monotonic_ns


class HopTrace:
    """The stamps of a run: per close command id, one stamp per hop (0: not reached)."""

    __slots__ = ("busy", "commands", "frame_ns", "quotes")

    def __init__(self) -> None:
        self.frame_ns = 0
        """When the feed frame being handed to the node was read (0 outside a hand-over)."""
        self.quotes: dict[int, int] = {}
        """``id(quote)`` -> its frame's stamp, until the symbol actor takes it."""
        self.commands: dict[str, list[int]] = {}
        self.busy: list[tuple[int, int, int]] = []
        """(kind, start, end) of every frame the engine handled: ``FEED`` or ``DEVICE``."""

    def handled(self, kind: int, start_ns: int) -> None:
        """A frame of ``kind`` read at ``start_ns`` has been handled."""
        self.busy.append((kind, start_ns, _now()))

    def quote_offered(self, quote: object) -> None:
        self.quotes[id(quote)] = self.frame_ns

    def quote_judged(self, quote: object) -> tuple[int, int]:
        """(frame, offered) stamps of a quote the symbol actor begins to judge."""
        return self.quotes.pop(id(quote), 0), _now()

    def decided(self, command_id: str, stamps: tuple[int, ...]) -> None:
        """A user actor made ``command_id`` from a fire stamped ``(frame, offered, fired)``."""
        self.commands[command_id] = [*stamps, _now(), 0, 0]

    def stamp(self, command_id: str, hop: int) -> None:
        """Stamp hop number ``hop`` (an index in ``HOPS``) of a traced command, first time only."""
        row = self.commands.get(command_id)
        if row is not None and not row[hop]:
            row[hop] = _now()


TRACE: HopTrace | None = None
"""The run's trace, or None (tracing off: every hop is one branch)."""


def enable() -> HopTrace:
    """Turn tracing on for this process; returns the trace to read at the end."""
    global TRACE  # noqa: PLW0603 - one switch for the process, read at every hop
    TRACE = HopTrace()
    return TRACE


def now_ns() -> int:
    return _now()
