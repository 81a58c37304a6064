"""Price feed messages: batches of quotes, on ``/ws/feed`` and on the Redis tick bus."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from protocol.types import Count, ErrorDetails, Price, ShortText, Symbol, Text, TimeMs

__all__ = ["MAX_QUOTES_PER_BATCH", "FeedError", "Quote", "QuoteBatch"]

MAX_QUOTES_PER_BATCH = 10_000


class Quote(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One bid/ask of one canonical symbol at ``time_ms`` (the source's time)."""

    symbol: Symbol
    bid: Price
    ask: Price
    time_ms: TimeMs


class QuoteBatch(msgspec.Struct, frozen=True, kw_only=True, tag="quotes", tag_field="type"):
    """Quotes in arrival order. Quotes of one symbol must be in time order."""

    v: Count = 1
    quotes: Annotated[list[Quote], Meta(max_length=MAX_QUOTES_PER_BATCH)]
    sent_ms: TimeMs | None = None
    """When the batch left its source (for feed latency metrics)."""


class FeedError(msgspec.Struct, frozen=True, kw_only=True, tag="error", tag_field="type"):
    """The one frame a publisher is sent: why its connection is closed, right after it.

    ``details`` names the limit a frame broke (``limit``, and ``size`` or ``path``)."""

    code: ShortText
    message: Text
    fatal: bool = True
    details: ErrorDetails | None = None
