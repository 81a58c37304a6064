"""Codecs: frames on a wire <-> message Structs, in JSON or msgpack, chosen per connection.

Rules of operation:

* **One encoding per connection**, fixed at the WebSocket handshake by the subprotocol
  (``tripwire.v1.json`` or ``tripwire.v1.msgpack``; :func:`negotiate`). A peer that offers no
  subprotocol is sniffed from its first frame (:func:`sniff_encoding`): a text frame is JSON.
  JSON goes in text frames (:meth:`WireCodec.encode` returns ``str``), msgpack in binary frames
  (``bytes``).
* **One Decoder per union, built once** at import and shared by every connection; a
  :class:`WireCodec` only adds the connection's encoding and frame limit.
* **Decoding raises only our errors**: :class:`~protocol.errors.FrameTooLarge` (checked before a
  byte is parsed) or :class:`~protocol.errors.DecodeError` (everything else: syntax, types,
  bounds, unknown tag, nesting too deep, invalid UTF-8, an empty frame), whose message carries
  msgspec's path to the bad field (``$.quotes[3].bid``) so a peer can fix its encoder.
* **An empty frame is malformed**, whatever its type. Quart hands a WebSocket handler an empty
  binary frame as ``None`` (its ASGI adapter reads ``bytes or text``), so ``None`` is accepted
  as "an empty frame" by :meth:`WireCodec.decode` and :func:`sniff_encoding`: every socket that
  decodes with them refuses it like any other malformed frame instead of failing on it.
* **Compatibility**: unknown fields are ignored and every field added after version 1 has a
  default, so an older peer keeps working with a newer one. A peer states the newest protocol
  revision it speaks (``v``); the session runs at ``min(peer's, ours)`` if we still support it
  (:func:`negotiate_version`). The ``v1`` in a subprotocol name is the wire family: it changes
  only with a breaking change, which would also change the subprotocol.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, Generic, Literal, TypeVar, get_args

import msgspec

from protocol.client import ClientMessage, ServerClientMessage
from protocol.device import DeviceMessage, HelloBody, ServerMessage
from protocol.errors import DecodeError, Forbidden, FrameTooLarge, UnsupportedVersion, UsageError
from protocol.feed import QuoteBatch
from protocol.signals import Signal

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "MAX_HELLO_BODY_CHARS",
    "MAX_SIGNAL_BYTES",
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "SUBPROTOCOLS",
    "SUBPROTOCOL_JSON",
    "SUBPROTOCOL_MSGPACK",
    "SUPPORTED_VERSIONS",
    "Encoding",
    "Frame",
    "WireCodec",
    "client_client_codec",
    "client_server_codec",
    "decode_hello_body",
    "decode_signal",
    "device_client_codec",
    "device_server_codec",
    "encode_hello_body",
    "encode_signal",
    "encoding_of",
    "feed_codec",
    "negotiate",
    "negotiate_version",
    "sniff_encoding",
]

Encoding = Literal["json", "msgpack"]
Frame = bytes | bytearray | memoryview | str | None
"""What a WebSocket handler receives: ``None`` is an empty binary frame (see the rules)."""

SUBPROTOCOL_JSON: Final = "tripwire.v1.json"
SUBPROTOCOL_MSGPACK: Final = "tripwire.v1.msgpack"
SUBPROTOCOLS: Final[dict[str, Encoding]] = {
    SUBPROTOCOL_JSON: "json",
    SUBPROTOCOL_MSGPACK: "msgpack",
}

PROTOCOL_VERSION: Final = 1
"""The newest protocol revision this code speaks."""
MIN_PROTOCOL_VERSION: Final = 1
"""The oldest revision still served; raising it is a breaking change for old EAs."""
SUPPORTED_VERSIONS: Final = frozenset(range(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION + 1))

DEFAULT_MAX_FRAME_BYTES: Final = 1_048_576
"""Inbound frame limit unless the connection sets its own (the welcome tells the EA)."""
MAX_HELLO_BODY_CHARS: Final = 262_144
"""Bound of ``Hello.body`` (a terminal with a few thousand symbols fits)."""
MAX_SIGNAL_BYTES: Final = 65_536
"""Bound of a ``POST /api/v1/signals`` body."""

_MAX_MESSAGE_CHARS = 200
_PATH = re.compile(r" - at `([^`]*)`$")
_JSON_WS = b" \t\r\n"

In = TypeVar("In")
Out = TypeVar("Out")


# -- negotiation -----------------------------------------------------------------------------


def negotiate(offered: Sequence[str]) -> str | None:
    """The subprotocol to accept among those a client offered, or None if none is ours.

    The client's order wins: RFC 6455 lists subprotocols by the client's preference, and only
    the client knows what its platform does well (MQL5 has JSON built in, msgpack must be
    hand-written). A client that wants the cheaper msgpack (see ``bench.codec``) lists it first.
    """
    for name in offered:
        if name.strip() in SUBPROTOCOLS:
            return name.strip()
    return None


def encoding_of(subprotocol: str) -> Encoding:
    """The encoding of an accepted subprotocol.

    Raises:
        UsageError: ``subprotocol`` is not one :func:`negotiate` can return.
    """
    try:
        return SUBPROTOCOLS[subprotocol]
    except KeyError:
        raise UsageError(f"not a Tripwire subprotocol: {subprotocol!r}") from None


def sniff_encoding(first_frame: Frame) -> Encoding:
    """The encoding of a connection that offered no subprotocol, from its first frame.

    A text frame is JSON. A binary frame is JSON if it starts (after JSON whitespace) with
    ``{``, msgpack if it starts with a map header (``0x80``-``0x8f``, ``0xde``, ``0xdf``): every
    first frame is an object, so the two can never be confused.

    Raises:
        DecodeError: an empty frame (``None`` included; malformed, close code 1002), or one
            that is neither (``details["reason"] == "frame_type"``, close code 1003).
    """
    if not first_frame:
        raise DecodeError("empty frame")
    if isinstance(first_frame, str):
        return "json"
    data = bytes(first_frame[:64])
    stripped = data.lstrip(_JSON_WS)
    if stripped[:1] == b"{":
        return "json"
    if data and (0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF)):
        return "msgpack"
    raise DecodeError("first frame is neither a JSON nor a msgpack object", reason="frame_type")


def negotiate_version(v: int) -> int:
    """The revision a session runs at when the peer speaks up to ``v``: ``min(v, ours)``.

    Raises:
        UnsupportedVersion: that revision is older than :data:`MIN_PROTOCOL_VERSION`;
            ``details`` has ``offered`` and ``supported`` (the EA must be upgraded).
    """
    chosen = min(v, PROTOCOL_VERSION)
    if chosen not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"protocol version {v} is not supported",
            offered=v,
            min_supported=MIN_PROTOCOL_VERSION,
            max_supported=PROTOCOL_VERSION,
        )
    return chosen


# -- errors ------------------------------------------------------------------------------------


def _decode_error(exc: BaseException) -> DecodeError:
    """Our DecodeError for whatever msgspec (or the UTF-8 codec) raised.

    The message is msgspec's (it names the field: "Expected `float` > 0.0 - at `$.bid`"),
    cut short because it may echo peer data (an unknown tag is quoted in full).
    """
    if isinstance(exc, RecursionError):
        return DecodeError("frame is nested too deeply")
    if isinstance(exc, UnicodeError):
        return DecodeError("frame is not valid UTF-8")
    text = str(exc)
    match = _PATH.search(text)
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[: _MAX_MESSAGE_CHARS - 1] + "…"
    if match is None:
        return DecodeError(text)
    return DecodeError(text, path=match.group(1)[:_MAX_MESSAGE_CHARS])


# msgspec raises DecodeError/ValidationError for bad input, but two things escape it: deep
# nesting inside an ignored field exhausts its recursion guard (RecursionError), and invalid
# UTF-8 (bytes) or lone surrogates (str) come out of the codec as UnicodeError. The fuzz tests in
# tests/protocol pin this list.
_DECODE_FAILURES = (msgspec.DecodeError, UnicodeError, RecursionError)


def _frame_size(frame: bytes | bytearray | memoryview | str, limit: int) -> int:
    """The size of a frame in bytes (UTF-8 for text).

    A text frame longer than ``limit`` characters is over it whatever its encoding; its length
    is reported as is (a lower bound of its size) rather than copied to be measured exactly.
    """
    if isinstance(frame, memoryview):
        return frame.nbytes
    if isinstance(frame, str) and len(frame) <= limit:
        return len(frame.encode("utf-8", "surrogatepass"))
    return len(frame)


# -- the codec ---------------------------------------------------------------------------------


_JSON_ENCODER: Final = msgspec.json.Encoder()
_MSGPACK_ENCODER: Final = msgspec.msgpack.Encoder()


def _decoders(
    union: Any,
) -> dict[Encoding, msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]]:
    return {"json": msgspec.json.Decoder(union), "msgpack": msgspec.msgpack.Decoder(union)}


# Built once, at import: a msgspec Decoder compiles its type, which costs far more than a decode.
_DECODERS: Final[dict[str, dict[Encoding, Any]]] = {
    "device": _decoders(DeviceMessage),
    "server": _decoders(ServerMessage),
    "client": _decoders(ClientMessage),
    "to_client": _decoders(ServerClientMessage),
    "feed": _decoders(QuoteBatch),
}
_HELLO_BODY_DECODER: Final = msgspec.json.Decoder(HelloBody)
_SIGNAL_DECODER: Final = msgspec.json.Decoder(Signal)


class WireCodec(Generic[In, Out]):
    """Decodes what one kind of peer sends (``In``) and encodes what it receives (``Out``).

    Cheap to create (it shares the prebuilt decoders): make one per connection, or share one
    per (encoding, limit). Use the factories below rather than the constructor.
    """

    __slots__ = (
        "_binary_only",
        "_decode",
        "_decoder",
        "_encode",
        "_out_types",
        "_surely_fits",
        "encoding",
        "max_frame_bytes",
        "name",
    )

    def __init__(self, name: str, encoding: Encoding, outbound: Any, max_frame_bytes: int) -> None:
        if encoding not in ("json", "msgpack"):
            raise UsageError(f"unknown encoding {encoding!r}")
        if max_frame_bytes < 1:
            raise UsageError("max_frame_bytes must be positive")
        self.name = name
        self.encoding: Encoding = encoding
        self.max_frame_bytes = max_frame_bytes
        self._decoder = _DECODERS[name][encoding]
        self._decode = self._decoder.decode
        self._binary_only = encoding == "msgpack"
        # Every frame of at most limit // 4 items fits: a text frame's UTF-8 size is at most four
        # bytes a character. Only a longer one pays for an exact size (the hot path is one len).
        self._surely_fits = max_frame_bytes // 4
        self._out_types: tuple[type, ...] = get_args(outbound) or (outbound,)
        self._encode = _JSON_ENCODER.encode if encoding == "json" else _MSGPACK_ENCODER.encode

    def decode(self, frame: Frame) -> In:
        """The message in one frame.

        Raises:
            FrameTooLarge: the frame is over ``max_frame_bytes`` (``details``: size, limit);
                nothing was parsed.
            DecodeError: anything else wrong with it, including an empty frame (``None``
                too) and a text frame on a msgpack connection (``details["reason"] ==
                "frame_type"``).
        """
        if not frame:  # one test for b"", "" and None (an empty binary frame, via Quart)
            raise DecodeError("empty frame")
        if len(frame) > self._surely_fits:
            size = _frame_size(frame, self.max_frame_bytes)
            if size > self.max_frame_bytes:
                raise FrameTooLarge(
                    f"frame of {size} bytes is over the {self.max_frame_bytes} byte limit",
                    size=size,
                    limit=self.max_frame_bytes,
                )
        if self._binary_only and isinstance(frame, str):
            raise DecodeError("a msgpack connection takes binary frames", reason="frame_type")
        try:
            message: In = self._decode(frame)
        except _DECODE_FAILURES as exc:
            raise _decode_error(exc) from None
        return message

    def encode(self, message: Out) -> bytes | str:
        """The frame for ``message``: ``str`` (a text frame) for JSON, ``bytes`` for msgpack.

        Raises:
            UsageError: ``message`` is not one this peer may receive.
        """
        if not isinstance(message, self._out_types):
            raise UsageError(
                f"{type(message).__name__} is not sent on the {self.name} codec's wire"
            )
        data = self._encode(message)
        return data if self._binary_only else data.decode()

    def __repr__(self) -> str:
        return (
            f"WireCodec({self.name!r}, {self.encoding!r}, max_frame_bytes={self.max_frame_bytes})"
        )


def device_server_codec(
    encoding: Encoding, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> WireCodec[DeviceMessage, ServerMessage]:
    """The server's end of ``/ws/device``: decodes what a device sends, encodes commands."""
    return WireCodec("device", encoding, ServerMessage, max_frame_bytes)


def device_client_codec(
    encoding: Encoding, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> WireCodec[ServerMessage, DeviceMessage]:
    """A device's end (simulators, tests, the bench): decodes server frames, encodes ours."""
    return WireCodec("server", encoding, DeviceMessage, max_frame_bytes)


def client_server_codec(
    encoding: Encoding, max_frame_bytes: int = 65_536
) -> WireCodec[ClientMessage, ServerClientMessage]:
    """The server's end of ``/ws/client``; clients only subscribe, so their frames are small."""
    return WireCodec("client", encoding, ServerClientMessage, max_frame_bytes)


def client_client_codec(
    encoding: Encoding, max_frame_bytes: int = 16 * DEFAULT_MAX_FRAME_BYTES
) -> WireCodec[ServerClientMessage, ClientMessage]:
    """A client's end of ``/ws/client`` (tests, the bench); snapshots can be large."""
    return WireCodec("to_client", encoding, ClientMessage, max_frame_bytes)


def feed_codec(
    encoding: Encoding, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> WireCodec[QuoteBatch, QuoteBatch]:
    """Both ends of ``/ws/feed`` and of the Redis tick bus: quote batches."""
    return WireCodec("feed", encoding, QuoteBatch, max_frame_bytes)


# -- documents inside messages and bodies -----------------------------------------------------


def encode_hello_body(body: HelloBody) -> str:
    """The JSON text of a hello body, as it goes into ``Hello.body`` and is signed."""
    return _JSON_ENCODER.encode(body).decode()


def decode_hello_body(text: str) -> HelloBody:
    """The :class:`HelloBody` in a hello's ``body`` text.

    Raises:
        FrameTooLarge: over :data:`MAX_HELLO_BODY_CHARS` characters.
        DecodeError: not a valid hello body.
    """
    if len(text) > MAX_HELLO_BODY_CHARS:
        raise FrameTooLarge("hello body is too large", size=len(text), limit=MAX_HELLO_BODY_CHARS)
    try:
        return _HELLO_BODY_DECODER.decode(text)
    except _DECODE_FAILURES as exc:
        raise _decode_error(exc) from None


def encode_signal(signal: Signal) -> bytes:
    """The JSON body of ``POST /api/v1/signals`` (for strategy clients, tests and the bench)."""
    return _JSON_ENCODER.encode(signal)


def decode_signal(
    body: bytes, *, strategy_id: str | None = None, max_bytes: int = MAX_SIGNAL_BYTES
) -> Signal:
    """The signal in a request body whose signature has already been verified.

    ``strategy_id`` is the one the request was authenticated as (``X-Strategy-Id``); a body
    that speaks for another strategy is refused, so one strategy's secret cannot post
    another's signals.

    Raises:
        FrameTooLarge: over ``max_bytes``.
        DecodeError: not a valid signal.
        Forbidden: ``signal.strategy_id`` differs from ``strategy_id``.
    """
    if len(body) > max_bytes:
        raise FrameTooLarge("signal body is too large", size=len(body), limit=max_bytes)
    try:
        signal = _SIGNAL_DECODER.decode(body)
    except _DECODE_FAILURES as exc:
        raise _decode_error(exc) from None
    if strategy_id is not None and signal.strategy_id != strategy_id:
        raise Forbidden(
            "the body's strategy_id is not the authenticated strategy", strategy_id=strategy_id
        )
    return signal
