"""Notifications: what a user's webhook receives, and how it is signed.

A notification tells a user that something happened to their trading: a fill, a close (SL, TP
or any other), an alert about them (a drawdown level, a close that failed...), or a device that
went silent or came back. The engine POSTs it as JSON to the user's webhook, signed the way a
strategy signs a signal (:mod:`protocol.signing`), with the user id as the principal::

    X-Signature: t=<ms>,v1=<hex HMAC-SHA256(webhook secret, canonical)>
    canonical = TW1-HMAC-SHA256\\n<t>\\n\\n<user id>\\n1\\n<sha256 hex of the body>

Every delivery attempt is signed afresh (a retry carries a new ``t``), and ``id`` is the same
on every attempt, so a receiver can check the time window and deduplicate by ``id``.
docs/protocol.md, "Notifications", has a worked example a test recomputes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from protocol.client import PositionView
from protocol.common import Alert
from protocol.signing import DEFAULT_WINDOW_MS, sign_signal_header, verify_signal_header
from protocol.types import Id, Text, TimeMs

__all__ = [
    "EVENTS",
    "USER_HEADER",
    "EventName",
    "Notification",
    "decode_notification",
    "encode_notification",
    "sign_notification",
    "verify_notification",
]

EventName = Literal["fill", "close", "alert", "device_offline"]
"""What a user may subscribe to. ``device_offline`` also brings the "back online" notice."""

EVENTS: tuple[EventName, ...] = ("fill", "close", "alert", "device_offline")

USER_HEADER = "X-Tripwire-User"
"""The header naming the user a notification is for: the principal of its signature."""


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """One notification, as the webhook receives it (and, as ``text``, the Telegram chat)."""

    id: Id
    """Stable across retries: deduplicate by it (``<position id>.fill``, ``a-<time>-<n>``...)."""
    event: EventName
    """Which subscription it belongs to."""
    kind: Literal["fill", "close", "alert", "device_offline", "device_online"]
    """What happened (``device_online`` comes with the ``device_offline`` subscription)."""
    user_id: Id
    time_ms: TimeMs
    text: Text
    """One line for a human: what the Telegram message says."""
    position: PositionView | None = None
    """The position after a fill or a close (its ``close_reason`` says ``sl``, ``tp``...)."""
    alert: Alert | None = None
    """The alert behind an ``alert``, ``device_offline`` or ``device_online`` notification."""
    v: int = 1


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Notification)


def encode_notification(notification: Notification) -> bytes:
    """The JSON body POSTed to a webhook."""
    return _ENCODER.encode(notification)


def decode_notification(body: bytes | str) -> Notification:
    """A webhook body as a receiver (a test, a Python integration) reads it.

    Raises:
        msgspec.ValidationError / msgspec.DecodeError: not a notification.
    """
    return _DECODER.decode(body)


def sign_notification(body: bytes, user_id: str, secret: bytes, ts_ms: int) -> str:
    """The ``X-Signature`` value of a webhook body (the signal scheme, principal = user id).

    Raises:
        UsageError: a secret under 16 bytes, or a user id that is no valid id.
    """
    return sign_signal_header(body, user_id, secret, ts_ms)


def verify_notification(
    header: str,
    body: bytes,
    user_id: str,
    secrets: Sequence[bytes],
    now_ms: int,
    window_ms: int = DEFAULT_WINDOW_MS,
) -> None:
    """What a receiver does first: check ``X-Signature`` against its webhook secret(s).

    Raises:
        DecodeError: a malformed header.
        SignatureExpired: ``t`` is more than ``window_ms`` from ``now_ms``.
        BadSignature: no ``v1`` verifies.
    """
    verify_signal_header(header, body, user_id, secrets, now_ms, window_ms)
