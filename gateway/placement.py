"""Where a user is served: the port the gateway asks before it serves a user-scoped request.

With one node every user is local (:class:`AllLocal`, the default). In cluster mode the lead's
lease-backed ownership answers (a user's partition is owned by this node, by another node at
some URL under some lease epoch, or by nobody while a failover is under way). The gateway
turns the answer into what each peer understands:

* ``/ws/device`` and ``/ws/client``: after authentication, a ``moved`` frame
  (:func:`moved_frame`) and close 4301 (``gateway.ws_device``, ``gateway.ws_client``).
* REST: :func:`require_local` raises :class:`ServedElsewhere`, answered ``307`` with
  ``Location`` (``Elsewhere``) or ``503`` with ``Retry-After`` (``Unowned``)
  (:func:`redirect_response`; which routes ask is listed in ``gateway.rest.placement``).

``/ws/feed`` is not user-scoped: any node takes feeds.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import msgspec

from protocol.redirects import Moved

__all__ = [
    "LOCAL",
    "AllLocal",
    "Elsewhere",
    "Local",
    "Ownership",
    "Placement",
    "ServedElsewhere",
    "Unowned",
    "moved_frame",
    "redirect_response",
    "websocket_url",
]


class Local(msgspec.Struct, frozen=True):
    """This node owns the user's partition: serve the request here."""


class Elsewhere(msgspec.Struct, frozen=True, kw_only=True):
    """Another node owns the user's partition."""

    url: str
    """That node's public base URL (``https://node-2.example.com``; its TRIPWIRE_NODE_URL)."""
    partition: int
    epoch: int
    """The owner's lease epoch."""


class Unowned(msgspec.Struct, frozen=True, kw_only=True):
    """Nobody owns the user's partition right now (a claim is under way)."""

    partition: int
    retry_after_ms: int
    """How long a client should wait before trying again."""


Placement = Local | Elsewhere | Unowned

LOCAL = Local()


class Ownership(Protocol):
    """Who serves a user. Called on every user-scoped request: it must answer from memory."""

    def locate(self, user_id: str) -> Placement: ...


class AllLocal:
    """A single node: every user is served here."""

    def locate(self, user_id: str) -> Placement:
        return LOCAL


def websocket_url(base: str, path: str) -> str:
    """``path`` on the node at ``base``, as a WebSocket URL (``https://h`` -> ``wss://h/path``)."""
    base = base.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + path


def moved_frame(placement: Elsewhere | Unowned, path: str) -> Moved:
    """The ``moved`` frame for a WebSocket on ``path`` whose user is served elsewhere."""
    if isinstance(placement, Elsewhere):
        return Moved(
            url=websocket_url(placement.url, path),
            partition=placement.partition,
            epoch=placement.epoch,
        )
    return Moved(url=None, partition=placement.partition, retry_after_ms=placement.retry_after_ms)


class ServedElsewhere(Exception):
    """Raised by :func:`require_local` inside a REST handler: the app answers with
    :func:`redirect_response`.

    Not part of ``protocol.errors``: a redirect is no failure, and :func:`gateway.rest.common.
    audited` (which records every ``TripwireError``) must not record it as one; the node that
    serves the request audits it.
    """

    def __init__(self, placement: Elsewhere | Unowned) -> None:
        super().__init__(placement)
        self.placement = placement


def require_local(ownership: Ownership, user_id: str) -> None:
    """Go on if ``user_id`` is served here.

    Raises:
        ServedElsewhere: another node serves the user, or nobody does right now.
    """
    placement = ownership.locate(user_id)
    if not isinstance(placement, Local):
        raise ServedElsewhere(placement)


def redirect_response(
    placement: Elsewhere | Unowned, path_and_query: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """``(status, headers, JSON body)`` of a REST request whose user is served elsewhere.

    ``307`` keeps the method and the body (a POST stays a POST), unlike 301/302; ``Location``
    is the same path and query on the owner. ``503`` with ``Retry-After`` (whole seconds,
    rounded up) while nobody owns the partition.
    """
    if isinstance(placement, Elsewhere):
        location = placement.url.rstrip("/") + path_and_query
        body = {
            "code": "moved",
            "message": "another node serves this user: repeat the request there",
            "details": {"partition": placement.partition, "epoch": placement.epoch},
        }
        return 307, {"Location": location}, body
    seconds = max(1, math.ceil(placement.retry_after_ms / 1000))
    body = {
        "code": "unowned",
        "message": "no node serves this user right now: try again shortly",
        "details": {
            "partition": placement.partition,
            "retry_after_ms": placement.retry_after_ms,
        },
    }
    return 503, {"Retry-After": str(seconds)}, body
