"""The tick bus: quote batches on a Redis Stream, so every engine node sees the same quotes.

Not started by the engine today: it is the building block of scale-out (``docs/architecture.md``,
designed, not built). A running node neither publishes to nor reads from the stream; quotes
reach its symbol actors from its own feed only.

One node (whichever owns the feed) publishes each :class:`~protocol.feed.QuoteBatch` with
``XADD <stream> MAXLEN ~ N * q <msgpack>``; every node reads the stream with
``XREAD BLOCK`` from where it stands and hands the batches to its symbol actors. The stream is
capped (approximately, which lets Redis trim whole nodes cheaply) at ``maxlen`` entries: a node
that falls further behind than that has lost the oldest quotes, which for prices is right
(only the newest quote matters).

When Redis is down: :meth:`TickBus.publish` drops the batch and returns False (the publishing
node still trades on its own feed); :meth:`TickBus.subscribe` pauses and resumes from the
last id it delivered once Redis is back. Neither raises for Redis trouble; both count it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import trio

from persistence.redis_link import Degradation, RedisLink
from protocol.errors import StorageError
from protocol.feed import QuoteBatch

__all__ = ["TickBus"]

_FIELD = b"q"


async def _xread(client: Any, streams: dict[str, str], count: int, block_ms: int) -> Any:
    return await client.xread(streams, count=count, block=block_ms)


class TickBus:
    """Publish and subscribe quote batches over one Redis stream.

    Attributes:
        published_total: batches added to the stream.
        dropped_total: batches not published because Redis was unavailable.
        received_total: batches delivered to subscribers (all subscriptions of this object).
        decode_errors: stream entries that were not a valid ``QuoteBatch`` (skipped).
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        stream: str = "tripwire:ticks",
        maxlen: int = 100_000,
        retry_after_s: float = 1.0,
    ) -> None:
        self.link = link
        self.stream = stream
        self.maxlen = maxlen
        self.state = Degradation("tick_bus", retry_after_s)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(QuoteBatch)
        self.published_total = 0
        self.dropped_total = 0
        self.received_total = 0
        self.decode_errors = 0

    @property
    def degraded(self) -> bool:
        return self.state.degraded

    async def publish(self, batch: QuoteBatch) -> bool:
        """Append ``batch`` to the stream; False (and counted) if Redis is unavailable."""
        if not self.state.should_try():
            self.state.served_degraded()
            self.dropped_total += 1
            return False
        fields: dict[Any, Any] = {_FIELD: self._encoder.encode(batch)}
        try:
            await self.link.call(
                lambda r: r.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
            )
        except StorageError as exc:
            self.state.failed(exc, stream=self.stream)
            self.state.served_degraded()
            self.dropped_total += 1
            return False
        self.state.succeeded()
        self.published_total += 1
        return True

    async def last_id(self) -> str:
        """The id of the newest entry (``0-0`` for an empty or missing stream).

        Raises:
            StorageError: Redis is unavailable.
        """
        entries = await self.link.call(lambda r: r.xrevrange(self.stream, count=1))
        if not entries:
            return "0-0"
        entry_id = entries[0][0]
        # redis-py types a reply for either client mode; ours answers bytes (no decode_responses)
        assert isinstance(entry_id, bytes), entry_id
        return entry_id.decode()

    async def subscribe(
        self, *, from_id: str = "$", block_ms: int = 1000, count: int = 256
    ) -> AsyncIterator[QuoteBatch]:
        """Yield every batch published after ``from_id``, in order, forever.

        ``from_id="$"`` starts after the newest entry at the time of the first successful
        read (resolved once, so nothing published between two reads is missed); ``"0-0"``
        starts at the oldest entry kept. Each read blocks at most ``block_ms``; while Redis is
        unavailable the subscription waits ``retry_after_s`` between attempts and resumes
        after the last entry it delivered.
        """
        cursor = None if from_id == "$" else from_id
        timeout_s = block_ms / 1000 + self.link.op_timeout_s
        while True:
            if not self.state.should_try():
                await trio.sleep_until(self.state.retry_at)
            try:
                if cursor is None:
                    cursor = await self.last_id()
                read = functools.partial(
                    _xread, streams={self.stream: cursor}, count=count, block_ms=block_ms
                )
                reply = await self.link.call(read, timeout_s=timeout_s)
            except StorageError as exc:
                self.state.failed(exc, stream=self.stream)
                continue
            self.state.succeeded()
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    try:
                        batch = self._decoder.decode(fields[_FIELD])
                    except (KeyError, msgspec.DecodeError):
                        self.decode_errors += 1
                        continue
                    self.received_total += 1
                    yield batch
