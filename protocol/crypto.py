"""Optional payload encryption for device sessions: AES-256-GCM frames, off by default.

TLS (``wss://``) is the primary protection; this is for devices whose transport is not trusted
end to end (a TLS-terminating proxy the operator does not control; the old platform had it). A
device asks for it with ``HelloBody.encryption``; the welcome's ``encryption`` confirms it, and
from the first frame after the welcome every frame in both directions is binary and sealed.

Frame layout (docs/protocol.md, "Encrypted frames", has a worked example)::

    +-----------------------------+------------------------+-----------+
    | nonce: 12 bytes             | ciphertext: n bytes    | tag: 16 B |
    | direction (4) | counter (8) |                        |           |
    +-----------------------------+------------------------+-----------+

* key: 32 bytes, ``HKDF-SHA256(ikm=session key, salt=UTF-8 session_id, info=
  b"tripwire/v1 frames")``. The welcome's ``session_id`` is the server's random contribution:
  even a replayed hello (say, the nonce cache was lost in a restart) yields a new frame key, so
  a (key, nonce) pair can never repeat across sessions, the one mistake AES-GCM does not survive.
* direction: ``00 00 00 01`` server -> device, ``00 00 00 02`` device -> server; one key, two
  disjoint nonce spaces.
* counter: big-endian, 1 for a direction's first frame, +1 for each next one. A receiver
  accepts only a counter above the last one it accepted (a gap is tolerated, so a frame sealed
  and then lost to a dropped connection costs nothing).
* associated data: the fixed label ``b"tripwire/v1 frame"``.
* plaintext: the message as its encoding would send it unencrypted (JSON text as UTF-8 bytes,
  or msgpack).

Errors: a frame shorter than 28 bytes is :class:`~protocol.errors.DecodeError`; one that fails
authentication (tampered, wrong key, another session's, our own reflected back) is
:class:`~protocol.errors.BadSignature`; an authentic frame whose counter is not above the last
one is :class:`~protocol.errors.ReplayDetected` (replayed or reordered). Each is fatal: close
the connection (1008) and let the device reconnect with a fresh handshake.
"""

from __future__ import annotations

from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.errors import BadSignature, DecodeError, ReplayDetected, UsageError
from protocol.session import SESSION_KEY_BYTES

__all__ = [
    "DIRECTION_DEVICE_TO_SERVER",
    "DIRECTION_SERVER_TO_DEVICE",
    "FRAME_AAD",
    "FRAME_KEY_INFO",
    "FRAME_OVERHEAD",
    "FrameCipher",
    "Role",
    "derive_frame_key",
]

Role = Literal["server", "device"]

FRAME_AAD: Final = b"tripwire/v1 frame"
FRAME_KEY_INFO: Final = b"tripwire/v1 frames"
DIRECTION_SERVER_TO_DEVICE: Final = b"\x00\x00\x00\x01"
DIRECTION_DEVICE_TO_SERVER: Final = b"\x00\x00\x00\x02"
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
FRAME_OVERHEAD: Final = NONCE_BYTES + TAG_BYTES
"""Bytes a sealed frame adds to its plaintext."""
_MAX_COUNTER: Final = 2**64 - 1


def derive_frame_key(session_key: bytes, session_id: str) -> bytes:
    """The AES-256 key of a session's frames (see the module docstring).

    Raises:
        UsageError: ``session_key`` is not 32 bytes, or ``session_id`` is empty.
    """
    if len(session_key) != SESSION_KEY_BYTES:
        raise UsageError(f"a session key is {SESSION_KEY_BYTES} bytes")
    if not session_id:
        raise UsageError("frame keys need the welcome's session_id")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=session_id.encode(), info=FRAME_KEY_INFO)
    return hkdf.derive(session_key)


class FrameCipher:
    """Seals what one end sends and opens what it receives, for one session.

    Not thread-safe and not to be shared between connections: it holds the two counters. Seal
    a frame right before it is written (a frame sealed and never sent is only a gap).
    """

    __slots__ = ("_aead", "_in_prefix", "_last_in", "_last_out", "_out_prefix", "role")

    def __init__(self, session_key: bytes, role: Role, *, session_id: str) -> None:
        if role not in ("server", "device"):
            raise UsageError(f"role must be 'server' or 'device', not {role!r}")
        self.role: Role = role
        self._aead = AESGCM(derive_frame_key(session_key, session_id))
        server_sends = role == "server"
        self._out_prefix = (
            DIRECTION_SERVER_TO_DEVICE if server_sends else DIRECTION_DEVICE_TO_SERVER
        )
        self._in_prefix = DIRECTION_DEVICE_TO_SERVER if server_sends else DIRECTION_SERVER_TO_DEVICE
        self._last_out = 0
        self._last_in = 0

    @property
    def sent(self) -> int:
        """Frames sealed so far (the last counter used)."""
        return self._last_out

    @property
    def received(self) -> int:
        """The counter of the last frame opened."""
        return self._last_in

    def seal(self, plaintext: bytes | str) -> bytes:
        """The sealed frame for ``plaintext`` (``str`` is sent as its UTF-8 bytes).

        Raises:
            UsageError: 2**64 - 1 frames were sealed already (reconnect long before that).
        """
        if self._last_out >= _MAX_COUNTER:
            raise UsageError("frame counter exhausted: start a new session")
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        self._last_out += 1
        nonce = self._out_prefix + self._last_out.to_bytes(8, "big")
        return nonce + self._aead.encrypt(nonce, data, FRAME_AAD)

    def open(self, frame: bytes | bytearray | memoryview) -> bytes:
        """The plaintext of a frame the peer sealed.

        Raises:
            DecodeError: shorter than a nonce and a tag.
            BadSignature: it does not authenticate, or it is not the peer's direction.
            ReplayDetected: its counter is not above the last accepted one.
        """
        data = bytes(frame)
        if len(data) < FRAME_OVERHEAD:
            raise DecodeError("encrypted frame is too short", size=len(data))
        nonce = data[:NONCE_BYTES]
        if nonce[:4] != self._in_prefix:
            raise BadSignature("encrypted frame is not from the peer's direction")
        counter = int.from_bytes(nonce[4:], "big")
        if counter <= self._last_in:
            raise ReplayDetected(
                "encrypted frame replayed or reordered", counter=counter, last=self._last_in
            )
        try:
            plaintext = self._aead.decrypt(nonce, data[NONCE_BYTES:], FRAME_AAD)
        except InvalidTag:
            raise BadSignature("encrypted frame does not authenticate") from None
        # Only an authentic frame moves the counter: a forged one cannot push it forward.
        self._last_in = counter
        return plaintext

    def __repr__(self) -> str:
        return f"FrameCipher(role={self.role!r}, sent={self.sent}, received={self.received})"
