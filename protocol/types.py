"""Bounded field types shared by every message.

Every number and string on a wire has bounds, enforced by the decoder: a value outside them is a
:class:`~protocol.errors.DecodeError`, never a surprise deeper in the engine. The bounds also
reject NaN and the infinities (a NaN fails every comparison), which msgpack can carry.

Conventions (docs/protocol.md states them for EA authors):
* times are integer milliseconds since the Unix epoch, UTC (``*_ms``);
* prices are decimal numbers as the terminal shows them (doubles); the engine turns them into
  integer points at the symbol's digits;
* volumes are lots; tickets are the terminal's integer tickets.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

__all__ = [
    "ClientId",
    "Count",
    "Digits",
    "ErrorDetails",
    "Id",
    "Money",
    "Nonce",
    "Points",
    "Price",
    "Ratio",
    "Real",
    "RetCode",
    "ShortText",
    "Signature",
    "Size",
    "Symbol",
    "Text",
    "Ticket",
    "TimeMs",
    "Volume",
]


def _whole(chars: str) -> str:
    """A pattern matching the whole string, nothing else.

    msgspec checks ``pattern`` with ``re.search``, and a bare ``$`` also matches before a
    final newline, so ``^[a-z]+$`` accepts ``"dev1\n"``: an id that breaks canonical strings,
    nonce keys and log lines. ``(?!\n)`` closes that gap; it stays a valid JSON Schema (ECMA)
    pattern, where it is simply always true.
    """
    return f"^{chars}$(?!\\n)"


_ID_PATTERN = _whole(r"[A-Za-z0-9][A-Za-z0-9_.:@\-]*")

Id = Annotated[str, Meta(min_length=1, max_length=64, pattern=_ID_PATTERN)]
"""An identifier: device, user, position, command, strategy, signal. Letters, digits, ``_.:@-``."""

ClientId = Annotated[str, Meta(min_length=1, max_length=31, pattern=_ID_PATTERN)]
"""The tag an order carries in its comment; MT5 keeps 31 characters of a comment."""

Nonce = Annotated[str, Meta(min_length=16, max_length=64, pattern=_whole(r"[A-Za-z0-9_\-]+"))]
"""A handshake nonce: 16 to 64 URL-safe characters, unique per handshake."""

Symbol = Annotated[str, Meta(min_length=1, max_length=32, pattern=_whole(r"[A-Za-z0-9_.#\-+!]+"))]
"""A symbol name, canonical (``XAUUSD``) or the broker's (``XAUUSDm``, ``GOLD.vip``, ``#US30``)."""

ShortText = Annotated[str, Meta(max_length=64)]
Text = Annotated[str, Meta(max_length=1024)]

Price = Annotated[float, Meta(gt=0, lt=1e9)]
Volume = Annotated[float, Meta(gt=0, le=1e6)]
Money = Annotated[float, Meta(ge=-1e15, le=1e15)]
Size = Annotated[float, Meta(gt=0, le=1e9)]
"""A positive quantity such as a contract size."""
Ratio = Annotated[float, Meta(ge=0, le=100)]
Real = Annotated[float, Meta(ge=-1e18, le=1e18)]
"""Any finite number (a measured value, a threshold): bounded only to refuse NaN and infinity."""

TimeMs = Annotated[int, Meta(ge=0, le=2**53)]
Ticket = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Digits = Annotated[int, Meta(ge=0, le=8)]
Points = Annotated[int, Meta(ge=0, le=10**9)]
Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
RetCode = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
"""A broker result code (MT5 ``MqlTradeResult.retcode``, MT4 ``GetLastError()``): an int32."""

Signature = Annotated[str, Meta(max_length=128)]
"""A hex HMAC, or empty when unsigned. The decoder only bounds its size; ``protocol.signing``
wants exactly 64 lower-case hex digits and answers anything else with ``bad_signature``."""

ErrorDetails = Annotated[
    dict[
        Annotated[str, Meta(max_length=64)],
        Annotated[str, Meta(max_length=256)]
        | Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
        | Annotated[float, Meta(ge=-1e15, le=1e15)]
        | bool
        | None,
    ],
    Meta(max_length=16),
]
"""The machine-readable fields of an error (``size``/``limit``, ``path``, ``server_time_ms``):
flat, few and small, so an error frame can never be the big one."""
