"""A device session's key, and the signatures it puts on every server -> device command.

A verified hello (``protocol.signing.verify_hello``) yields a 32-byte session key that the EA
derives too, from what it sent: HKDF-SHA256 of the device secret, salted with the hello's nonce.
Every command the server sends in that session carries ``sig`` = hex HMAC-SHA256(session key,
canonical command string), and the EA executes nothing whose ``sig`` does not verify. A fresh
key per handshake means a command recorded in one session is worthless in the next.

The canonical command string is written for MQL5 to reproduce with plain string functions:
fixed field order, floats with exactly 8 decimals (``DoubleToString(x, 8)``), null as an empty
line. docs/protocol.md, "Command signatures", lists every command's fields and a worked example.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgspec
import msgspec.inspect as mi
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.device import CloseCommand, Command, ModifyCommand, OpenCommand, PartialCloseCommand
from protocol.errors import BadSignature, UsageError

__all__ = [
    "COMMAND_SCHEME",
    "SESSION_INFO_PREFIX",
    "SESSION_KEY_BYTES",
    "UNSIGNED_FIELDS",
    "canonical_command",
    "derive_session_key",
    "sign_command",
    "verify_command",
]

COMMAND_SCHEME: Final = "TW1-CMD-HMAC-SHA256"
SESSION_KEY_BYTES: Final = 32
SESSION_INFO_PREFIX: Final = b"tripwire/v1 session|"

_HEX64 = re.compile(r"[0-9a-f]{64}")

C = TypeVar("C", OpenCommand, CloseCommand, PartialCloseCommand, ModifyCommand)


def derive_session_key(secret: bytes, *, device_id: str, nonce: str, ts_ms: int) -> bytes:
    """The 32-byte key of one device session: HKDF-SHA256 of the device secret.

    ``salt`` is the hello's nonce (ASCII) and ``info`` is
    ``b"tripwire/v1 session|" + device_id + b"|" + decimal ts_ms``: a fresh key per handshake
    that the device derives from what it sent and the server from what it verified.
    """
    info = SESSION_INFO_PREFIX + device_id.encode() + b"|" + str(ts_ms).encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=SESSION_KEY_BYTES, salt=nonce.encode(), info=info)
    return hkdf.derive(secret)


# -- command signatures ------------------------------------------------------------------------

# The fields each command's signature covers, in this order. Not covered: ``sig`` itself, and
# ``deadline_ms``, because a resend after a reconnect carries a new deadline yet must stay the
# same command (same id, same signature). A test fails when a field is added to a command and
# not decided here; a new field is appended, never inserted.
_SIGNED_FIELDS: Final[dict[type, tuple[str, ...]]] = {
    OpenCommand: (
        "command_id", "client_id", "symbol", "side", "order_type", "volume", "price", "sl",
        "tp", "deviation_points", "expires_ms",
    ),
    CloseCommand: ("command_id", "ticket", "symbol", "volume", "deviation_points", "reason"),
    PartialCloseCommand: ("command_id", "ticket", "symbol", "volume", "deviation_points"),
    ModifyCommand: ("command_id", "ticket", "symbol", "sl", "tp"),
}  # fmt: skip
UNSIGNED_FIELDS: Final = frozenset({"sig", "deadline_ms"})


def _format_float(value: Any) -> str:
    # Exactly 8 decimals, as MQL5's DoubleToString(x, 8) writes the double it parsed.
    return "" if value is None else f"{float(value):.8f}"


def _format_int(value: Any) -> str:
    return "" if value is None else str(int(value))


def _format_text(value: Any) -> str:
    if value is None:
        return ""
    return str(value.value) if isinstance(value, enum.Enum) else str(value)


def _formatter(t: mi.Type) -> Callable[[Any], str]:
    """How a field is written, chosen by its declared type: an int in a float field (a volume
    of 1) must still read ``1.00000000``, as the EA that parsed a double writes it."""
    members = t.types if isinstance(t, mi.UnionType) else (t,)
    kinds = {type(m) for m in members} - {mi.NoneType}
    if kinds == {mi.FloatType}:
        return _format_float
    if kinds == {mi.IntType}:
        return _format_int
    if kinds <= {mi.StrType, mi.EnumType, mi.LiteralType}:
        return _format_text
    raise TypeError(f"no canonical form for {t!r}")  # pragma: no cover - caught at import


def _plan(cls: type) -> tuple[str, tuple[tuple[str, Callable[[Any], str]], ...]]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    types = {f.name: f.type for f in info.fields}
    tag = cls.__struct_config__.tag  # type: ignore[attr-defined]
    return tag, tuple((name, _formatter(types[name])) for name in _SIGNED_FIELDS[cls])


_PLANS: Final = {cls: _plan(cls) for cls in _SIGNED_FIELDS}


def canonical_command(cmd: Command) -> str:
    """The string a command's ``sig`` is computed over: lines joined by ``\\n``.

    ``TW1-CMD-HMAC-SHA256``, the command's ``type``, then its signed fields in their fixed
    order: floats with exactly 8 decimals, integers in decimal, enums by value, null as an
    empty line. docs/protocol.md lists the order for each command.
    """
    tag, fields = _PLANS[type(cmd)]
    return "\n".join([COMMAND_SCHEME, tag, *(fmt(getattr(cmd, name)) for name, fmt in fields)])


def _command_hmac(session_key: bytes, cmd: Command) -> str:
    if len(session_key) != SESSION_KEY_BYTES:
        raise UsageError(f"a session key is {SESSION_KEY_BYTES} bytes")
    return hmac.new(session_key, canonical_command(cmd).encode(), hashlib.sha256).hexdigest()


def sign_command(cmd: C, session_key: bytes) -> C:
    """A copy of ``cmd`` with ``sig`` set under the session key.

    Raises:
        UsageError: ``session_key`` is not 32 bytes.
    """
    return msgspec.structs.replace(cmd, sig=_command_hmac(session_key, cmd))


def verify_command(cmd: Command, session_key: bytes) -> None:
    """Check a command's ``sig``, as the EA must before executing it.

    Raises:
        BadSignature: the signature is missing, malformed or wrong.
        UsageError: ``session_key`` is not 32 bytes.
    """
    expected = _command_hmac(session_key, cmd)
    if not _HEX64.fullmatch(cmd.sig) or not hmac.compare_digest(cmd.sig, expected):
        raise BadSignature("command signature does not verify", command_id=cmd.command_id)
