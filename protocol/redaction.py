"""What each kind of peer may see, and what may be written to a log.

Rules (docs/protocol.md, "What peers see"):

* **Secrets never leave**: device and strategy secrets, session keys, JWTs and signatures are
  never echoed to a peer and never logged; a hello's signed body is logged as its length and
  hash (enough to compare with the EA's own log when a signature fails).
* **A device sees only its own session**: its commands, its errors. Device-bound messages carry
  no user, no other device, no secret (:data:`NEVER_TO_DEVICES`, checked by a test over every
  field of ``ServerMessage``).
* **A client sees only its own user's data**: the actors send a client views of its own
  positions, account and devices (``protocol.client``), nothing keyed by another user.
* **Errors to peers are stable codes, not internals**: :func:`peer_error` keeps a short list
  of detail fields that help a peer recover, turns our own bugs and storage failures into
  ``internal`` / ``storage_unavailable`` without their text, and answers an unknown device
  exactly as a wrong secret (``bad_signature``), so nobody can probe which device ids exist.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from protocol.client import ClientError
from protocol.device import DeviceError
from protocol.errors import BadSignature, StorageError, TripwireError, UnknownPrincipal, UsageError

__all__ = [
    "NEVER_TO_DEVICES",
    "PEER_DETAIL_KEYS",
    "REDACTED",
    "SECRET_KEYS",
    "client_error",
    "device_error",
    "for_log",
    "peer_error",
]

REDACTED: Final = "<redacted>"
SECRET_KEYS: Final = frozenset(
    {
        "sig", "secret", "secrets", "session_key", "frame_key", "password", "token", "jwt",
        "authorization", "cookie", "set-cookie", "x-signature", "api_key", "access_token",
    }
)  # fmt: skip
"""Keys (compared in lower case) whose values are replaced by ``<redacted>`` in logs."""
SUMMARISED_KEYS: Final = frozenset({"body"})
"""Keys whose values are logged as length and hash: the hello's signed body, request bodies."""
NEVER_TO_DEVICES: Final = frozenset(
    {"user_id", "user", "users", "email", "secret", "session_key", "password", "token"}
)
PEER_DETAIL_KEYS: Final = frozenset(
    {
        "size", "limit", "path", "reason", "ts_ms", "server_time_ms", "window_ms", "offered",
        "not_before_ms", "min_supported", "max_supported", "command_id", "counter", "last",
        "volume", "min", "max", "step",  # a refused lot size and the limits it must fit
    }
)  # fmt: skip
"""Detail fields a peer may see: each helps it fix what it sent, none reveals our state."""

_MAX_ITEMS = 20
_MAX_CHARS = 256
_MAX_DETAIL_CHARS = 256
_MAX_MESSAGE_CHARS = 1024


def _summary(value: str | bytes) -> str:
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return f"<{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()[:16]}>"


def _clean(value: Any, depth: int) -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            lowered = name.lower()
            if lowered in SECRET_KEYS:
                out[name] = REDACTED if item else item  # an empty sig says "unsigned"
            elif lowered in SUMMARISED_KEYS and isinstance(item, str | bytes):
                out[name] = _summary(item)
            else:
                out[name] = _clean(item, depth + 1)
        return out
    if depth > 8:
        return "<nested>"
    if isinstance(value, list | tuple):
        items = [_clean(item, depth + 1) for item in value[:_MAX_ITEMS]]
        if len(value) > _MAX_ITEMS:
            items.append(f"<{len(value) - _MAX_ITEMS} more>")
        return items
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"  # raw bytes may be keys: never logged
    if isinstance(value, str) and len(value) > _MAX_CHARS:
        return value[:_MAX_CHARS] + f"…<{len(value) - _MAX_CHARS} more chars>"
    return value


def for_log(message: Any) -> dict[str, Any]:
    """``message`` (a Struct, a mapping such as request headers, or anything msgspec can turn
    into builtins) as a dict safe to log: secrets masked, bodies summarised, long strings and
    lists cut."""
    if isinstance(message, Mapping):
        builtins: Any = dict(message)
    else:
        try:
            # Bytes stay bytes (not base64 text) so that they are never logged, whatever the key.
            builtins = msgspec.to_builtins(message, builtin_types=(bytes, bytearray, memoryview))
        except (TypeError, ValueError):
            builtins = repr(message)
    cleaned = _clean(builtins, 0)
    return cleaned if isinstance(cleaned, dict) else {"value": cleaned}


def peer_error(exc: BaseException) -> tuple[str, str, dict[str, Any] | None]:
    """``(code, message, details)`` of ``exc`` as a peer may see them (see the rules above)."""
    if isinstance(exc, BadSignature | UnknownPrincipal):
        return BadSignature.code, "authentication failed", None
    if not isinstance(exc, TripwireError) or isinstance(exc, UsageError):
        return TripwireError.code, "internal error", None
    if isinstance(exc, StorageError):
        return exc.code, "temporarily unavailable, try again later", None
    details = {
        key: value[:_MAX_DETAIL_CHARS] if isinstance(value, str) else value
        for key, value in exc.details.items()
        if key in PEER_DETAIL_KEYS and (value is None or isinstance(value, str | int | float))
    }
    return exc.code, exc.message[:_MAX_MESSAGE_CHARS], details or None


def device_error(exc: BaseException, *, fatal: bool, command_id: str | None = None) -> DeviceError:
    """The ``error`` frame that tells a device about ``exc``."""
    code, message, details = peer_error(exc)
    return DeviceError(
        code=code, message=message, fatal=fatal, command_id=command_id, details=details
    )


def client_error(exc: BaseException) -> ClientError:
    """The ``error`` frame that tells a client about ``exc``."""
    code, message, details = peer_error(exc)
    return ClientError(code=code, message=message, details=details)
