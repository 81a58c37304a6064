"""The one exception hierarchy of Tripwire.

It lives in ``protocol`` because that is the bottom layer: every other package may import it,
and it imports nothing of ours. Every error carries a stable machine-readable ``code`` (what
goes on the wire, in JSON error bodies and in metrics labels) and the fields a caller needs to
recover, in ``details``.

The tree keeps "you misused the API" apart from "the peer misbehaved" (as h11 does with
``LocalProtocolError`` / ``RemoteProtocolError``)::

    TripwireError                      internal
    ├── UsageError                     usage            our own code called something wrongly
    │   ├── IllegalTransition          illegal_transition
    │   └── ConfigError                config_invalid
    ├── PeerError                      peer             someone outside sent something wrong
    │   ├── ProtocolError              protocol_error
    │   │   ├── DecodeError            malformed
    │   │   ├── FrameTooLarge          too_large
    │   │   ├── UnsupportedVersion     unsupported_version
    │   │   └── UnexpectedMessage      unexpected_message
    │   ├── AuthError                  unauthorized
    │   │   ├── BadSignature           bad_signature
    │   │   ├── SignatureExpired       expired
    │   │   │   └── StaleHello         stale_hello
    │   │   ├── ReplayDetected         replayed
    │   │   └── UnknownPrincipal       unknown_principal
    │   ├── Forbidden                  forbidden
    │   ├── RateLimited                rate_limited
    │   ├── InvalidQuote               invalid_quote
    │   └── FutureTimestamp            future_timestamp
    ├── Refused                        refused          a business rule says no
    │   ├── SizingRefused              sizing_refused
    │   ├── LateSignal                 late_signal
    │   ├── PriceDeviation             price_deviation
    │   └── GuardBlocked               guard_blocked
    ├── NotFound                       not_found
    ├── Conflict                       conflict
    └── StorageError                   storage_unavailable
        └── Fenced                     fenced

Codes are part of the wire contract: never rename one, only add.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuthError",
    "BadSignature",
    "ConfigError",
    "Conflict",
    "DecodeError",
    "Fenced",
    "Forbidden",
    "FrameTooLarge",
    "FutureTimestamp",
    "GuardBlocked",
    "IllegalTransition",
    "InvalidQuote",
    "LateSignal",
    "NotFound",
    "PeerError",
    "PriceDeviation",
    "ProtocolError",
    "RateLimited",
    "RedisReplyError",
    "Refused",
    "ReplayDetected",
    "SignatureExpired",
    "SizingRefused",
    "StaleHello",
    "StorageError",
    "TripwireError",
    "UnexpectedMessage",
    "UnknownPrincipal",
    "UnsupportedVersion",
    "UsageError",
]


class TripwireError(Exception):
    """Base of every error Tripwire raises on purpose.

    ``code`` is stable and machine-readable; ``message`` is for humans; ``details`` holds the
    fields a caller needs to recover (never secrets: they may be logged and sent to peers).
    """

    code: ClassVar[str] = "internal"

    def __init__(self, message: str = "", /, **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """The error as a JSON-ready body: ``{"code", "message", "details"?}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, {self.details!r})"


# -- we misused our own API -----------------------------------------------------------------


class UsageError(TripwireError):
    """Raised when Tripwire's own code calls an API wrongly. A bug here, not the peer's fault."""

    code = "usage"


class IllegalTransition(UsageError):
    """Raised when a state machine is asked for a transition its table does not allow.

    Nothing changes when it is raised. ``details`` has ``state`` and ``event``.
    """

    code = "illegal_transition"


class ConfigError(UsageError):
    """Raised at start-up when configuration is missing or invalid; ``details`` names the key."""

    code = "config_invalid"


# -- a peer misbehaved ----------------------------------------------------------------------


class PeerError(TripwireError):
    """Raised when something outside Tripwire (a device, a client, a feed) sent bad input."""

    code = "peer"


class ProtocolError(PeerError):
    """Raised when a frame or message breaks the wire protocol."""

    code = "protocol_error"


class DecodeError(ProtocolError):
    """Raised when bytes do not decode to a valid message (syntax, types, bounds, unknown tag)."""

    code = "malformed"


class FrameTooLarge(ProtocolError):
    """Raised when a frame or body exceeds its limit; ``details`` has ``size`` and ``limit``."""

    code = "too_large"


class UnsupportedVersion(ProtocolError):
    """Raised when a peer speaks a protocol version this server cannot serve."""

    code = "unsupported_version"


class UnexpectedMessage(ProtocolError):
    """Raised when a valid message arrives where the session state does not allow it."""

    code = "unexpected_message"


class AuthError(PeerError):
    """Raised when a peer cannot be authenticated."""

    code = "unauthorized"


class BadSignature(AuthError):
    """Raised when an HMAC signature or a token does not verify under any valid secret."""

    code = "bad_signature"


class SignatureExpired(AuthError):
    """Raised when a signed timestamp or token lies outside its validity window."""

    code = "expired"


class StaleHello(SignatureExpired):
    """Raised when a hello was signed before the nonce memory that checks it could vouch for it.

    The memory that remembers used nonces is in-process when there is no shared store (or the
    shared store is down): it knows nothing of the nonces seen before it started, so a hello
    signed before then could be a copy of one used before a restart. It is refused, and the EA
    signs a new hello (new ``ts_ms``, new nonce) at once. ``details`` has ``ts_ms``,
    ``not_before_ms`` (the oldest ``ts_ms`` accepted) and ``server_time_ms``. A subclass of
    :class:`SignatureExpired`: the same close code (4001) and the same remedy (correct the clock
    offset, sign again), so an EA that knows only ``expired`` recovers too.
    """

    code = "stale_hello"


class ReplayDetected(AuthError):
    """Raised when a nonce (or an identical signed request) has already been seen in its window."""

    code = "replayed"


class UnknownPrincipal(AuthError):
    """Raised when the device, strategy or user named by a peer is unknown or revoked."""

    code = "unknown_principal"


class Forbidden(PeerError):
    """Raised when an authenticated peer asks for something it does not own."""

    code = "forbidden"


class RateLimited(PeerError):
    """Raised when a peer tries too often (logins); ``details["retry_after_s"]`` says when."""

    code = "rate_limited"


class InvalidQuote(PeerError):
    """Raised when a quote is not finite, crossed (bid > ask), stale or a wild jump.

    ``details`` has ``symbol`` and ``reason`` (``not_finite``, ``crossed``, ``stale``,
    ``jump``, ``non_positive``).
    """

    code = "invalid_quote"


class FutureTimestamp(PeerError):
    """Raised when a message is stamped further ahead of the server's clock than the clock
    window allows (a signal's ``created_at_ms``): taken as given, it would escape every check
    that measures age from it.

    ``details`` has ``ts_ms`` (the stamp), ``server_time_ms`` and ``window_ms``.
    """

    code = "future_timestamp"


# -- a business rule says no -----------------------------------------------------------------


class Refused(TripwireError):
    """Raised when a request is well-formed but a trading rule refuses it."""

    code = "refused"


class SizingRefused(Refused):
    """Raised when a volume cannot be fitted to the broker's min/step/max or stops level."""

    code = "sizing_refused"


class LateSignal(Refused):
    """Raised when an approval comes later than the maximum delay after its signal."""

    code = "late_signal"


class PriceDeviation(Refused):
    """Raised when the market moved beyond the maximum deviation from the signal's entry."""

    code = "price_deviation"


class GuardBlocked(Refused):
    """Raised when a risk guard (drawdown critical, market condition) blocks an action."""

    code = "guard_blocked"


# -- lookups, conflicts, storage -------------------------------------------------------------


class NotFound(TripwireError):
    """Raised when the thing asked for does not exist (or is not visible to the caller)."""

    code = "not_found"


class Conflict(TripwireError):
    """Raised when a request conflicts with recorded state (a second decision, a duplicate)."""

    code = "conflict"


class StorageError(TripwireError):
    """Raised when the durable store cannot accept or return data right now."""

    code = "storage_unavailable"


class RedisReplyError(StorageError):
    """Raised when Redis answered a command with an error reply (``NOSCRIPT``, ``LOADING``...).

    A subclass of :class:`StorageError` because to most callers it means the same (Redis cannot
    serve this now); the few that can recover (a script cache emptied by a restart) match on
    ``details["reply"]``, Redis's own message.
    """


class Fenced(StorageError):
    """Raised when a write for a partition was refused because this node no longer holds it.

    Cluster mode: every journal batch, snapshot and compaction of a partition is conditional on
    the epoch its owner claimed at; another node has claimed it since (this node's lease lapsed,
    or it was declared dead). The write changed nothing and is never retried: the partition's
    unwritten records are dropped (none was acknowledged). ``details`` has ``partition`` and
    ``epoch`` (the stale one).
    """

    code = "fenced"
