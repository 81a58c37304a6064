"""Market data first: a quote waiting on a feed connection is read before the engine's
bookkeeping runs.

One trio thread does everything: the quote that fires, the acks of the closes before it, the
clients' position streams. trio runs the tasks that became ready together in no order of
importance, so a quote whose frame arrived while a burst's acks were coming in waited for every
one of them to be settled. Measured (``bench.e2e --devices 100 --positions 10000 --clients 10
--rate 500 --duration 30``, alternating runs): settling device frames took 0.7-0.9 ms of a
firing quote's wait to be read at p90; with this, 0.03-0.33 ms, and node_to_device's p99 fell
from 13-70 ms to 10.1-10.5 ms, for ~10 % more engine CPU per close.

Tasks whose work can wait (a device session's next frame, a client's next batch) call
:meth:`FeedFirst.defer` before it: while a feed connection has bytes the engine has not taken
(one ``poll`` of the feed sockets with no timeout) or whole messages it has not handled, the
task passes through the scheduler, so the feed's reader, woken in the same round, runs first.
At most :attr:`FeedFirst.max_defers` times: a flood of quotes delays the bookkeeping by a few
scheduler rounds, it never starves it. The closes themselves never wait here: they leave in the
quote's own call. In cluster mode the same holds for a node's own feeds while their appends
are made in the feed's call (``gateway.cluster``); quotes another node appended reach the books
through the tick-stream reader, which the deferral does not favour.
"""

from __future__ import annotations

import select
from typing import Protocol

import trio

__all__ = ["FeedFirst", "FeedSocket"]


class FeedSocket(Protocol):
    """What :class:`FeedFirst` needs of a feed connection (``gateway.wsdirect``)."""

    def fileno(self) -> int:
        """The socket's descriptor (-1: none, such as under TLS)."""
        ...

    @property
    def buffered(self) -> bool:
        """Whole messages read from the socket and not yet handed to the reader."""
        ...


class FeedFirst:
    """The node's feed connections, and the courtesy the bookkeeping tasks pay them."""

    def __init__(self, max_defers: int = 3) -> None:
        self.max_defers = max_defers
        self._feeds: dict[int, FeedSocket] = {}
        self._poll = select.poll()
        self.deferred = 0
        """Passes through the scheduler made by :meth:`defer` (a metric)."""

    def add(self, feed: FeedSocket) -> None:
        """Watch ``feed`` while it is connected (one without a descriptor is not watched)."""
        fd = feed.fileno()
        if fd >= 0:
            self._feeds[fd] = feed
            self._poll.register(fd, select.POLLIN)

    def remove(self, feed: FeedSocket) -> None:
        fd = feed.fileno()
        if self._feeds.get(fd) is feed:
            del self._feeds[fd]
            self._poll.unregister(fd)

    def pending(self) -> bool:
        """A feed has something the engine has not handled yet."""
        feeds = self._feeds
        if not feeds:
            return False
        return any(feed.buffered for feed in feeds.values()) or bool(self._poll.poll(0))

    async def defer(self) -> None:
        """Let a pending quote be read first (at most ``max_defers`` scheduler passes)."""
        for _ in range(self.max_defers):
            if not self.pending():
                return
            self.deferred += 1
            await trio.lowlevel.checkpoint()
