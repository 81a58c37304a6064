"""``moved``: the frame a node sends for a user it does not own, and how a client follows it.

With several nodes behind one address, any node takes a connection, but only the node that owns
the user's partition serves it. Another node authenticates the connection first (a stranger
learns nothing about placement), then sends :class:`Moved` and closes with
``CloseCode.MOVED`` (4301). The frame exists because a close reason (123 bytes) cannot carry a
URL.

What a client does with it (docs/protocol.md, "Moved"), kept here as :class:`Redirects` so the
bridge, the simulated EA and the harness follow one rule:

* ``url`` set: close the old connection, connect to ``url`` at once (no backoff) with a **new**
  hello (new nonce, new ``ts_ms``). One connection at a time.
* ``url`` null (nobody owns the partition yet, a failover is under way): wait
  ``retry_after_ms`` (at most :data:`MAX_WAIT_MS`), then connect to the configured address.
* At most :data:`MAX_HOPS` ``moved`` in a row without a welcome: after that, stop following and
  reconnect to the configured address with the usual backoff (two nodes that disagree must not
  bounce a client forever).
* Any other end of a connection sends the next one to the configured address: a redirect names
  the target of the very next connection only.

Like the rest of the package, no I/O and no clock: :class:`Redirects` says where and after how
long; the caller connects and sleeps.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from msgspec import Meta

from protocol.types import Count

__all__ = ["MAX_HOPS", "MAX_WAIT_MS", "Moved", "Redirects", "WebSocketUrl"]

MAX_HOPS: Final = 3
"""``moved`` frames a client follows in a row (without a welcome between) before it gives up."""

MAX_WAIT_MS: Final = 60_000
"""The longest ``retry_after_ms`` a client honours: a larger value is waited for this long."""

WebSocketUrl = Annotated[str, Meta(min_length=6, max_length=2048, pattern=r"^wss?://[^\s]+$")]
"""An absolute ``ws://`` or ``wss://`` URL, without white space."""


class Moved(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="moved"):
    """This node does not serve your user: connect to ``url`` (or wait, when it is null).

    Sent on ``/ws/device`` after a valid hello and on ``/ws/client`` after a valid token, never
    before; the close (4301) follows at once.
    """

    url: WebSocketUrl | None
    """The same endpoint on the node that owns your user (add your own query, such as the
    client's ``token``); null: nobody owns the partition yet."""
    partition: Count
    """Your user's partition (for logs and support)."""
    epoch: Count = 0
    """The owner's lease epoch: it grows with every change of owner (0 when nobody owns it)."""
    retry_after_ms: Count = 0
    """With ``url`` null: how long to wait before connecting again."""


class Redirects:
    """One client's redirect state: where its next connection goes (see the module doc).

    Args:
        home: the configured address (the balancer's, or any node's).
        max_hops: ``moved`` frames followed in a row before giving up.
    """

    def __init__(self, home: str, *, max_hops: int = MAX_HOPS) -> None:
        self.home = home
        self.max_hops = max_hops
        self.target = home
        """Where the next connection goes."""
        self.hops = 0
        """``moved`` frames followed since the last welcome (or give-up)."""
        self.gave_up = 0
        """How many times the hop limit was reached."""

    def moved(self, frame: Moved) -> int | None:
        """Take a ``moved`` frame: the milliseconds to wait before connecting to
        :attr:`target` (0: at once), or None when this was one hop too many (the target is the
        home address again: reconnect there with the usual backoff)."""
        self.hops += 1
        if self.hops > self.max_hops:
            self.gave_up += 1
            self.hops = 0
            self.target = self.home
            return None
        if frame.url is None:
            self.target = self.home
            return min(frame.retry_after_ms, MAX_WAIT_MS)
        self.target = frame.url
        return 0

    def welcomed(self) -> None:
        """The connection was accepted: the hop count starts again."""
        self.hops = 0

    def ended(self) -> None:
        """A connection ended without a ``moved`` (or never opened): the next goes home."""
        self.target = self.home
