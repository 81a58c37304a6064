"""gateway.feed_first: a quote already at the node is read before deferrable bookkeeping runs."""

from __future__ import annotations

import socket

import trio
import trio.testing

from gateway.feed_first import FeedFirst


class _Feed:
    """A feed connection's end as FeedFirst sees it: a socket and its unread messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def buffered(self) -> bool:
        return bool(self.messages)


def test_pending_follows_unread_bytes_and_buffered_messages() -> None:
    first = FeedFirst()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        feed = _Feed(ours)
        assert not first.pending()  # no feed at all
        first.add(feed)
        assert not first.pending()
        theirs.send(b"quote")
        assert first.pending()  # in the kernel, not yet read
        ours.recv(64)
        assert not first.pending()
        feed.messages.append(b"quote")
        assert first.pending()  # read, not yet handled
        feed.messages.clear()
        first.remove(feed)
        theirs.send(b"quote")
        assert not first.pending()  # a feed that left is no longer watched


async def test_defer_is_bounded_when_the_feed_is_never_read() -> None:
    first = FeedFirst(max_defers=3)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        first.add(_Feed(ours))
        await first.defer()
        assert first.deferred == 0
        theirs.send(b"quote")
        with trio.fail_after(5):
            await first.defer()  # nobody reads it: it gives up after three passes
        assert first.deferred == 3


async def test_the_feed_is_read_before_a_frame_that_became_ready_with_it(
    max_defers: int = 3,
) -> None:
    """Both sockets become readable before either task runs; trio may run its batch in either
    order (it reverses half the batches), but the device task defers to the feed every time."""
    first = FeedFirst(max_defers)
    for _ in range(40):
        order: list[str] = []
        feed_ours, feed_theirs = socket.socketpair()
        dev_ours, dev_theirs = socket.socketpair()
        with feed_ours, feed_theirs, dev_ours, dev_theirs:
            feed_ours.setblocking(False)
            feed = _Feed(feed_ours)
            first.add(feed)

            async def feed_reader(
                sock: socket.socket = feed_ours, order: list[str] = order
            ) -> None:
                await trio.lowlevel.wait_readable(sock)
                sock.recv(64)
                order.append("feed")

            async def device_reader(
                sock: socket.socket = dev_ours, order: list[str] = order
            ) -> None:
                await trio.lowlevel.wait_readable(sock)
                await first.defer()
                order.append("device")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed_reader)
                nursery.start_soon(device_reader)
                await trio.testing.wait_all_tasks_blocked()
                dev_theirs.send(b"ack")
                feed_theirs.send(b"quote")
            first.remove(feed)
        assert order == ["feed", "device"]
