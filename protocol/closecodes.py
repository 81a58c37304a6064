"""WebSocket close codes Tripwire uses, what a peer should do on each, and which error gets which.

The standard codes (RFC 6455, section 7.4.1) say what kind of end it is; the 4000-range codes
(reserved by the RFC for applications) say what the EA must do differently: fix its clock, stop
reconnecting until upgraded, back off because another connection took its place, or connect
to the node that serves its user (4301, after a ``moved`` frame). An error
frame (``type: error``, with the stable ``code`` of ``protocol.errors``) precedes every close
that an error caused; the close reason repeats that code.

docs/protocol.md, "Close codes", carries :func:`render_markdown_table`; a test keeps them equal.
"""

from __future__ import annotations

import enum
from typing import Final

from protocol.errors import (
    DecodeError,
    FrameTooLarge,
    PeerError,
    ProtocolError,
    SignatureExpired,
    StorageError,
    TripwireError,
    UnsupportedVersion,
)

__all__ = [
    "ADVICE",
    "MAX_REASON_BYTES",
    "CloseCode",
    "close_code_for",
    "close_reason",
    "render_markdown_table",
    "truncate_reason",
]

MAX_REASON_BYTES: Final = 123
"""A close frame's reason fits in 123 bytes of UTF-8 (125 minus the two-byte code)."""


class CloseCode(enum.IntEnum):
    """Every close code Tripwire sends."""

    NORMAL = 1000
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    CLOCK_SKEW = 4001
    UNSUPPORTED_VERSION = 4002
    REPLACED = 4003
    HEARTBEAT_TIMEOUT = 4004
    HANDSHAKE_TIMEOUT = 4005
    MOVED = 4301
    """Another node serves this user: the ``moved`` frame before the close says which
    (``protocol.redirects``); 43xx mirrors the REST API's 307 for the same case."""


ADVICE: Final[dict[CloseCode, tuple[str, str]]] = {
    CloseCode.NORMAL: ("the session ended normally", "reconnect when you need to"),
    CloseCode.PROTOCOL_ERROR: (
        "a frame was malformed or not allowed now (`malformed`, `unexpected_message`)",
        "fix the EA; reconnect with backoff",
    ),
    CloseCode.UNSUPPORTED_DATA: (
        "a text frame on a msgpack connection, or a first frame that is neither encoding",
        "fix the EA",
    ),
    CloseCode.POLICY_VIOLATION: (
        "authentication failed (`bad_signature`, `replayed`), or a frame failed decryption",
        "check the device id and secret; reconnect after at least 30 s",
    ),
    CloseCode.MESSAGE_TOO_BIG: (
        "a frame exceeded `max_frame_bytes` (`too_large`)",
        "send smaller frames; reconnect with backoff",
    ),
    CloseCode.INTERNAL_ERROR: ("the server failed", "reconnect with backoff"),
    CloseCode.SERVICE_RESTART: ("the server is restarting or shutting down", "reconnect in 1-5 s"),
    CloseCode.TRY_AGAIN_LATER: (
        "overloaded, a shared store is unavailable, or the peer read too slowly",
        "reconnect with backoff",
    ),
    CloseCode.CLOCK_SKEW: (
        "the hello's `ts_ms` was outside the window (`expired`), or older than the server's "
        "nonce memory (`stale_hello`: after a restart without Redis, or a Redis outage)",
        "correct the clock offset from the error's `server_time_ms`; sign a new hello "
        "(`stale_hello`: with `ts_ms` ≥ `details.not_before_ms`) and reconnect at once",
    ),
    CloseCode.UNSUPPORTED_VERSION: (
        "the EA's protocol version is no longer served",
        "upgrade the EA; do not reconnect in a loop",
    ),
    CloseCode.REPLACED: (
        "a newer connection of the same device took over",
        "do not reconnect at once: two copies of the EA are running",
    ),
    CloseCode.HEARTBEAT_TIMEOUT: (
        "no frame within `stale_after_s` (a `ping` after `heartbeat_s` of silence went unanswered)",
        "reconnect; heartbeat every `heartbeat_s` and answer every `ping`",
    ),
    CloseCode.HANDSHAKE_TIMEOUT: ("no valid hello in time after connecting", "reconnect"),
    CloseCode.MOVED: (
        "another node serves this device's user (a `moved` frame came first)",
        "connect to the frame's `url` at once with a new hello; `url` null: wait "
        "`retry_after_ms`; at most 3 in a row (see [Moved](#moved))",
    ),
}


def close_code_for(exc: BaseException) -> CloseCode:
    """The code to close with when ``exc`` ends a connection."""
    if isinstance(exc, FrameTooLarge):
        return CloseCode.MESSAGE_TOO_BIG
    if isinstance(exc, DecodeError) and exc.details.get("reason") == "frame_type":
        return CloseCode.UNSUPPORTED_DATA
    if isinstance(exc, UnsupportedVersion):
        return CloseCode.UNSUPPORTED_VERSION
    if isinstance(exc, SignatureExpired):
        return CloseCode.CLOCK_SKEW
    if isinstance(exc, ProtocolError):
        return CloseCode.PROTOCOL_ERROR
    if isinstance(exc, PeerError):  # authentication, ownership, a bad quote
        return CloseCode.POLICY_VIOLATION
    if isinstance(exc, StorageError):
        return CloseCode.TRY_AGAIN_LATER
    return CloseCode.INTERNAL_ERROR


def truncate_reason(text: str) -> str:
    """``text`` cut to :data:`MAX_REASON_BYTES` of UTF-8, never inside a character."""
    data = text.encode()
    if len(data) <= MAX_REASON_BYTES:
        return text
    return data[:MAX_REASON_BYTES].decode(errors="ignore")


def close_reason(exc: BaseException) -> str:
    """The close reason for ``exc``: its stable code (``internal`` for anything not ours).

    Only the code: messages may name fields or values, and a reason is limited to 123 bytes.
    """
    code = exc.code if isinstance(exc, TripwireError) else TripwireError.code
    return truncate_reason(code)


def render_markdown_table() -> str:
    """The close codes as Markdown, exactly as docs/protocol.md carries them."""
    lines = ["| code | name | when | what the EA does |", "|---:|---|---|---|"]
    for code, (when, action) in ADVICE.items():
        lines.append(f"| {code.value} | {code.name} | {when} | {action} |")
    return "\n".join(lines)
