"""Decoders against hostile input: they raise DecodeError or FrameTooLarge, nothing else.

Every test feeds frames to every decoding codec (both ends of every wire, both encodings) and
lets any other exception fail the test. Whatever does decode must be a valid message: it
re-encodes and decodes to itself.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec
from protocol.client import ClientMessage, ServerClientMessage
from protocol.device import DeviceMessage, ServerMessage
from protocol.errors import DecodeError, FrameTooLarge, ProtocolError
from protocol.feed import QuoteBatch
from tests.protocol.strategies import mutated, valid

LIMIT = 65_536

# What each codec decodes, and a codec that encodes it back (for the "decodes to itself" check).
DECODING: dict[str, tuple[Any, Any, Any]] = {
    "device_server": (DeviceMessage, codec.device_server_codec, codec.device_client_codec),
    "device_client": (ServerMessage, codec.device_client_codec, codec.device_server_codec),
    "client_server": (ClientMessage, codec.client_server_codec, codec.client_client_codec),
    "client_client": (ServerClientMessage, codec.client_client_codec, codec.client_server_codec),
    "feed": (QuoteBatch, codec.feed_codec, codec.feed_codec),
}
ALL_DECODERS = [
    (name, factory(encoding, LIMIT), back(encoding))
    for name, (_, factory, back) in DECODING.items()
    for encoding in ("json", "msgpack")
]


def feed(wire: codec.WireCodec[Any, Any], back: codec.WireCodec[Any, Any], frame: Any) -> bool:
    """Decode ``frame``; True if it decoded. Only our documented errors may come out."""
    try:
        message = wire.decode(frame)
    except (DecodeError, FrameTooLarge) as exc:
        assert isinstance(exc, ProtocolError)
        assert exc.code in ("malformed", "too_large")
        assert len(exc.message) <= 200
        return False
    assert wire.decode(back.encode(message)) == message
    return True


def feed_all(frame: codec.Frame) -> None:
    for _, wire, back in ALL_DECODERS:
        feed(wire, back, frame)


# Whatever a WebSocket handler can be handed: text, binary in the three buffer types, and None
# (Quart's form of an empty binary frame). Empty frames are drawn often, not left to chance.
FRAMES = st.one_of(
    st.just(b""),
    st.just(""),
    st.none(),
    st.binary(max_size=512),
    st.binary(max_size=64).map(bytearray),
    st.binary(max_size=64).map(memoryview),
    st.text(max_size=256),
)


@given(FRAMES)
def test_any_frame_a_handler_can_receive(frame: codec.Frame) -> None:
    feed_all(frame)


@given(FRAMES)
def test_sniffing_any_frame_raises_only_decode_error(frame: codec.Frame) -> None:
    try:
        encoding = codec.sniff_encoding(frame)
    except DecodeError as exc:
        assert exc.code == "malformed"
        # An empty frame is malformed (1002); only a non-empty one can be of the wrong type.
        assert bool(frame) == (exc.details.get("reason") == "frame_type")
    else:
        assert frame and encoding in ("json", "msgpack")


@pytest.mark.parametrize("frame", [b"", "", None, bytearray(), memoryview(b"")])
def test_empty_frames_are_malformed_everywhere(frame: codec.Frame) -> None:
    for _, wire, _ in ALL_DECODERS:
        with pytest.raises(DecodeError) as info:
            wire.decode(frame)
        assert info.value.message == "empty frame" and "reason" not in info.value.details
    with pytest.raises(DecodeError) as info:
        codec.sniff_encoding(frame)
    assert "reason" not in info.value.details


@given(st.binary(max_size=512))
def test_random_bytes(frame: bytes) -> None:
    feed_all(frame)


@given(st.text(max_size=256))
def test_random_text(frame: str) -> None:
    feed_all(frame)


@given(st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=4))
def test_lone_surrogates_in_text_frames(junk: str) -> None:
    feed_all('{"type":"heartbeat","seq":1,"time_ms":1,"x":"' + junk + '"}')


@pytest.mark.parametrize("name", list(DECODING))
def test_truncated_frames(name: str) -> None:
    union, factory, back = DECODING[name]

    @given(valid(union), st.data())
    def check(message: Any, data: st.DataObject) -> None:
        for encoding in ("json", "msgpack"):
            frame = back(encoding).encode(message)
            cut = data.draw(st.integers(min_value=0, max_value=max(len(frame) - 1, 0)))
            feed(factory(encoding, LIMIT * 16), back(encoding), frame[:cut])

    check()


@pytest.mark.parametrize("name", list(DECODING))
def test_valid_messages_mutated_field_by_field(name: str) -> None:
    union, factory, back = DECODING[name]
    json_wire, msgpack_wire = factory("json", LIMIT * 16), factory("msgpack", LIMIT * 16)

    @given(mutated(union, special_floats=True))
    def check(value: Any) -> None:
        try:
            packed = msgspec.msgpack.encode(value)
        except OverflowError:  # an int beyond msgpack's 64 bits: the peer could not send it
            packed = None
        if packed is not None:
            feed(msgpack_wire, back("msgpack"), packed)
        # JSON has no NaN or infinity; msgspec writes them as null, which is another mutation.
        feed(json_wire, back("json"), msgspec.json.encode(value))

    check()


@given(st.integers(min_value=1, max_value=4096), st.integers(min_value=0, max_value=8192))
def test_oversized_frames(limit: int, size: int) -> None:
    for encoding, frame in (("json", "{" * size), ("msgpack", b"\x80" * size)):
        wire = codec.device_server_codec(encoding, limit)  # type: ignore[arg-type]
        try:
            wire.decode(frame)
        except FrameTooLarge as exc:
            assert size > limit and exc.details == {"size": size, "limit": limit}
        except DecodeError:
            assert size <= limit


@pytest.mark.parametrize("depth", [10, 1_000, 30_000, 200_000])
def test_deep_nesting(depth: int) -> None:
    big = 2 * depth + 200
    head = '{"type":"heartbeat","seq":1,"time_ms":1,"x":'
    for text in (
        head + "[" * depth + "]" * depth + "}",
        head + '{"a":' * depth + "1" + "}" * depth + "}",
        '{"type":"positions","time_ms":1,"positions":' + "[" * depth + "]" * depth + "}",
        "[" * depth,
    ):
        feed(codec.device_server_codec("json", big), codec.device_client_codec("json"), text)
    prefix = b"\x84\xa4type\xa9heartbeat\xa3seq\x01\xa7time_ms\x01\xa1x"
    for frame in (prefix + b"\x91" * depth + b"\xc0", prefix + b"\x81\xa1a" * depth + b"\x01"):
        feed(codec.device_server_codec("msgpack", big), codec.device_client_codec("msgpack"), frame)


@given(st.integers(min_value=20, max_value=5000), st.sampled_from(["seq", "time_ms", "x"]))
def test_huge_numbers_in_json(digits: int, field: str) -> None:
    number = "9" * digits
    fields = {"seq": "1", "time_ms": "1", field: number}
    text = '{"type":"heartbeat",' + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
    feed(codec.device_server_codec("json"), codec.device_client_codec("json"), text)
    assert not feed(
        codec.device_server_codec("json"),
        codec.device_client_codec("json"),
        '{"type":"ack","command_id":"a","fill_price":1e' + number + "}",
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300, -0.0])
@pytest.mark.parametrize("field", ["bid", "ask"])
def test_special_floats_in_msgpack_quotes(value: float, field: str) -> None:
    quote = {"symbol": "XAUUSD", "bid": 2000.0, "ask": 2000.5, "time_ms": 1, field: value}
    frame = msgspec.msgpack.encode({"type": "quotes", "quotes": [quote]})
    with pytest.raises(DecodeError) as info:
        codec.feed_codec("msgpack").decode(frame)
    assert info.value.details["path"] == f"$.quotes[0].{field}"


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"ack","command_id":"a","result_text":"\xff\xfe"}',  # invalid UTF-8
        b'{"type":"ack","command_id":"a","result_text":"\\ud800"}',  # lone surrogate escape
        b"\xdd\xff\xff\xff\xff",  # msgpack array header claiming 4 billion items
        b"\xdf\xff\xff\xff\xff",  # the same for a map
        b"\xdb\xff\xff\xff\xff",  # and for a string
        b"\x81\xa4type\xd4\x01\x00",  # an extension type where the tag should be
        b'{"type":"heartbeat","seq":true,"time_ms":1}',  # a bool is no int
        b'{"type":"heartbeat","seq":1.0,"time_ms":1}',  # a float is no int
        b'{"type":"nope"}',
        b'{"seq":1,"time_ms":1}',  # no tag at all
        b'{"type":"heartbeat","seq":1,"time_ms":1} trailing',
        b"",
    ],
)
def test_known_nasty_frames(frame: bytes) -> None:
    for _, wire, back in ALL_DECODERS:
        assert not feed(wire, back, frame)
