"""Signatures: the device handshake, its session key, server commands and strategy signals.

Every signed request (a device's hello, a strategy's signal) is signed over one canonical
string, built by :func:`canonical_request`::

    TW1-HMAC-SHA256\\n{ts_ms}\\n{nonce}\\n{principal_id}\\n{v}\\n{sha256_hex(body)}

with the signature ``hex(HMAC-SHA256(secret, canonical))`` in lower case. For a hello the
principal is the device id and the body the exact UTF-8 bytes of ``Hello.body``; for a signal
the principal is the strategy id of the ``X-Strategy-Id`` header, the nonce is empty (a signal
is deduplicated by its own ids instead) and the body is the raw request body. Hashing the body
means nobody has to re-encode JSON canonically, in MQL5 or anywhere else.

Rules of operation:

* A timestamp more than ``window_ms`` (default 5 s, at most 60 s) from ``now_ms`` on either
  side is refused before any HMAC is computed.
* Several secrets may be valid at once (rotation): every one is tried, and every comparison is
  :func:`hmac.compare_digest`, so timing tells nothing about which secret, or which byte, failed.
* Replay protection is *not* here: after :func:`verify_hello` succeeds the caller checks the
  nonce in a :mod:`protocol.nonces` cache (in memory, or Redis shared by several nodes). Only a
  verified hello may spend a nonce, so nobody can burn a device's nonces without its secret.
* Each hello yields a session key that both ends can derive, and every server -> device
  command is signed with it: that lives in :mod:`protocol.session` (re-exported here).

docs/protocol.md, "Handshake" and "Command signatures", has worked examples a test recomputes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from protocol.codec import PROTOCOL_VERSION, decode_hello_body, encode_hello_body, negotiate_version
from protocol.device import Hello, HelloBody
from protocol.errors import BadSignature, DecodeError, SignatureExpired, UsageError
from protocol.session import canonical_command, derive_session_key, sign_command, verify_command
from protocol.types import Id, Nonce

__all__ = [
    "DEFAULT_WINDOW_MS",
    "MAX_WINDOW_MS",
    "MIN_SECRET_BYTES",
    "SCHEME",
    "SIGNATURE_HEADER",
    "STRATEGY_HEADER",
    "VerifiedHello",
    "canonical_command",
    "canonical_request",
    "derive_session_key",
    "hmac_hex",
    "parse_signal_header",
    "sha256_hex",
    "sign_command",
    "sign_hello",
    "sign_signal_header",
    "verify_command",
    "verify_hello",
    "verify_signal_header",
]

SCHEME: Final = "TW1-HMAC-SHA256"
DEFAULT_WINDOW_MS: Final = 5_000
MAX_WINDOW_MS: Final = 60_000
MIN_SECRET_BYTES: Final = 16
SIGNATURE_HEADER: Final = "X-Signature"
STRATEGY_HEADER: Final = "X-Strategy-Id"
"""The header naming the signing strategy; it selects the secrets and is covered by the
signature. A body whose ``strategy_id`` differs is refused (``codec.decode_signal``)."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX64_ANY_CASE = re.compile(r"[0-9a-fA-F]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,16}")
_HEADER_KEY = re.compile(r"[a-z][a-z0-9]{0,7}")
_MAX_HEADER_CHARS = 1024
_MAX_HEADER_SIGNATURES = 8


# -- building blocks ---------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hmac_hex(key: bytes, message: str) -> str:
    """Lower-case hex HMAC-SHA256 of the UTF-8 bytes of ``message`` under ``key``."""
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def canonical_request(*, ts_ms: int, nonce: str, principal_id: str, v: int, body: bytes) -> str:
    """The string a hello or a signal is signed over (see the module docstring)."""
    return f"{SCHEME}\n{ts_ms}\n{nonce}\n{principal_id}\n{v}\n{sha256_hex(body)}"


def _check_window(window_ms: int) -> None:
    if not 0 < window_ms <= MAX_WINDOW_MS:
        raise UsageError(f"signature window must be 1..{MAX_WINDOW_MS} ms", window_ms=window_ms)


def _check_secrets(secrets: Sequence[bytes]) -> None:
    for secret in secrets:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise UsageError(f"a secret must be at least {MIN_SECRET_BYTES} bytes")


def _check_time(ts_ms: int, now_ms: int, window_ms: int) -> None:
    if abs(now_ms - ts_ms) > window_ms:
        side = "behind" if ts_ms < now_ms else "ahead of"
        raise SignatureExpired(
            f"timestamp is {abs(now_ms - ts_ms)} ms {side} the server's clock"
            f" (window ±{window_ms} ms)",
            ts_ms=ts_ms,
            server_time_ms=now_ms,
            window_ms=window_ms,
        )


def _first_match(candidates: Sequence[str], expected: Sequence[str]) -> int | None:
    """Index in ``expected`` of the first one any candidate equals, comparing every pair."""
    found: int | None = None
    for index, want in enumerate(expected):
        for got in candidates:
            # No early exit: the work done must not depend on which pair matched.
            if hmac.compare_digest(got, want) and found is None:
                found = index
    return found


def _valid(value: str, tp: Any, what: str) -> str:
    try:
        return msgspec.convert(value, tp)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise UsageError(f"invalid {what}: {exc}") from None


# -- the device handshake ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedHello:
    """A hello whose signature and timestamp checked out (its nonce is still to be spent)."""

    device_id: str
    v: int
    """The protocol revision of the session (the welcome's ``v``)."""
    body: HelloBody
    nonce: str
    ts_ms: int
    secret_index: int
    """Which of the device's valid secrets signed it (rotation monitoring; never the secret)."""
    session_key: bytes = field(repr=False)


def sign_hello(
    device_id: str,
    secret: bytes,
    body: HelloBody | str,
    ts_ms: int,
    nonce: str,
    v: int = PROTOCOL_VERSION,
) -> Hello:
    """A signed hello, as an EA builds it (simulators, tests, the bench).

    Raises:
        UsageError: a short secret, or a device id or nonce the wire would refuse.
    """
    _check_secrets([secret])
    _valid(device_id, Id, "device id")
    _valid(nonce, Nonce, "nonce")
    text = body if isinstance(body, str) else encode_hello_body(body)
    canonical = canonical_request(
        ts_ms=ts_ms, nonce=nonce, principal_id=device_id, v=v, body=text.encode()
    )
    return Hello(
        device_id=device_id,
        v=v,
        ts_ms=ts_ms,
        nonce=nonce,
        body=text,
        sig=hmac_hex(secret, canonical),
    )


def verify_hello(
    hello: Hello, secrets: Sequence[bytes], now_ms: int, window_ms: int = DEFAULT_WINDOW_MS
) -> VerifiedHello:
    """Check a hello against the device's valid ``secrets`` and the server's clock.

    The checks run cheapest first: version, time, signature, then the body is parsed (only
    signed JSON is ever parsed).

    Raises:
        UsageError: ``window_ms`` outside 1..60000, or a configured secret under 16 bytes.
        UnsupportedVersion: the device's ``v`` can no longer be served.
        SignatureExpired: ``ts_ms`` is more than ``window_ms`` away from ``now_ms``;
            ``details["server_time_ms"]`` lets the EA correct its clock.
        BadSignature: no secret verifies the signature (also when ``secrets`` is empty).
        DecodeError: the signed body is not a valid :class:`HelloBody`.
    """
    _check_window(window_ms)
    _check_secrets(secrets)
    v = negotiate_version(hello.v)
    _check_time(hello.ts_ms, now_ms, window_ms)
    if not _HEX64.fullmatch(hello.sig):
        raise BadSignature("sig must be 64 lower-case hex digits")
    try:
        body_bytes = hello.body.encode()
    except UnicodeEncodeError:
        raise DecodeError("hello body is not valid UTF-8", path="$.body") from None
    canonical = canonical_request(
        ts_ms=hello.ts_ms,
        nonce=hello.nonce,
        principal_id=hello.device_id,
        v=hello.v,
        body=body_bytes,
    )
    index = _first_match([hello.sig], [hmac_hex(secret, canonical) for secret in secrets])
    if index is None:
        raise BadSignature("hello signature does not verify")
    body = decode_hello_body(hello.body)
    key = derive_session_key(
        secrets[index], device_id=hello.device_id, nonce=hello.nonce, ts_ms=hello.ts_ms
    )
    return VerifiedHello(
        device_id=hello.device_id,
        v=v,
        body=body,
        nonce=hello.nonce,
        ts_ms=hello.ts_ms,
        secret_index=index,
        session_key=key,
    )


# -- strategy signals over REST ----------------------------------------------------------------


def sign_signal_header(
    body: bytes, strategy_id: str, secret: bytes | Sequence[bytes], ts_ms: int
) -> str:
    """The ``X-Signature`` value for a signal body: ``t=<ts_ms>,v1=<hex>[,v1=<hex>...]``.

    Several secrets give several ``v1`` (a strategy engine in the middle of a rotation).
    """
    secrets = [secret] if isinstance(secret, bytes) else list(secret)
    _check_secrets(secrets)
    _valid(strategy_id, Id, "strategy id")
    canonical = canonical_request(ts_ms=ts_ms, nonce="", principal_id=strategy_id, v=1, body=body)
    return ",".join([f"t={ts_ms}", *(f"v1={hmac_hex(s, canonical)}" for s in secrets)])


def parse_signal_header(header: str) -> tuple[int, tuple[str, ...]]:
    """``(ts_ms, signatures)`` of an ``X-Signature`` value.

    Elements are ``key=value`` separated by commas, spaces around them ignored; exactly one
    ``t`` (decimal milliseconds), one to eight ``v1`` (64 hex digits, either case). Other keys
    (``v2`` one day) are ignored, so a sender can add a new scheme before we check it.

    Raises:
        DecodeError: anything else.
    """
    if len(header) > _MAX_HEADER_CHARS:
        raise DecodeError("X-Signature header is too long")
    ts_ms: int | None = None
    signatures: list[str] = []
    for element in header.split(","):
        key, sep, value = (part.strip() for part in element.partition("="))
        if not sep:
            raise DecodeError("X-Signature elements are key=value")
        if key == "t":
            if ts_ms is not None or not _TIMESTAMP.fullmatch(value):
                raise DecodeError("X-Signature needs exactly one t=<milliseconds>")
            ts_ms = int(value)
        elif key == "v1":
            if not _HEX64_ANY_CASE.fullmatch(value):
                raise DecodeError("X-Signature v1 must be 64 hex digits")
            signatures.append(value.lower())
        elif not _HEADER_KEY.fullmatch(key):
            raise DecodeError("X-Signature has a malformed key")
    if ts_ms is None:
        raise DecodeError("X-Signature needs exactly one t=<milliseconds>")
    if not 1 <= len(signatures) <= _MAX_HEADER_SIGNATURES:
        raise DecodeError(f"X-Signature needs 1 to {_MAX_HEADER_SIGNATURES} v1 signatures")
    return ts_ms, tuple(signatures)


def verify_signal_header(
    header: str,
    body: bytes,
    strategy_id: str,
    secrets: Sequence[bytes],
    now_ms: int,
    window_ms: int = DEFAULT_WINDOW_MS,
) -> None:
    """Check the ``X-Signature`` of a signal request against the strategy's valid secrets.

    ``strategy_id`` is the ``X-Strategy-Id`` header (it chose ``secrets``); decode the body only
    after this returns, with ``codec.decode_signal(body, strategy_id=strategy_id)``.

    Raises:
        UsageError: ``window_ms`` outside 1..60000, or a configured secret under 16 bytes.
        DecodeError: a malformed header, or a strategy id that is no valid id.
        SignatureExpired: ``t`` is more than ``window_ms`` away from ``now_ms``.
        BadSignature: no ``v1`` verifies under any secret.
    """
    _check_window(window_ms)
    _check_secrets(secrets)
    ts_ms, signatures = parse_signal_header(header)
    try:
        msgspec.convert(strategy_id, Id)
    except msgspec.ValidationError:
        raise DecodeError(f"{STRATEGY_HEADER} is not a valid id") from None
    _check_time(ts_ms, now_ms, window_ms)
    canonical = canonical_request(ts_ms=ts_ms, nonce="", principal_id=strategy_id, v=1, body=body)
    if _first_match(signatures, [hmac_hex(secret, canonical) for secret in secrets]) is None:
        raise BadSignature("signal signature does not verify", strategy_id=strategy_id)
