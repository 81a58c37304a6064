"""Codecs: round trips of every message in both encodings, negotiation, versions, limits."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec
from protocol.client import ClientMessage, PositionDelta, PositionView, ServerClientMessage
from protocol.common import Side
from protocol.device import (
    CloseCommand,
    DeviceMessage,
    Heartbeat,
    HelloBody,
    Ping,
    ServerMessage,
    SymbolSpec,
)
from protocol.errors import DecodeError, Forbidden, FrameTooLarge, UnsupportedVersion, UsageError
from protocol.feed import Quote, QuoteBatch
from protocol.signals import Signal
from tests.protocol.strategies import valid

ENCODINGS: list[codec.Encoding] = ["json", "msgpack"]

# (what is sent, the sender's codec factory, the receiver's codec factory)
WIRES: list[tuple[Any, Any, Any]] = [
    (DeviceMessage, codec.device_client_codec, codec.device_server_codec),
    (ServerMessage, codec.device_server_codec, codec.device_client_codec),
    (ClientMessage, codec.client_client_codec, codec.client_server_codec),
    (ServerClientMessage, codec.client_server_codec, codec.client_client_codec),
    (QuoteBatch, codec.feed_codec, codec.feed_codec),
]


@pytest.mark.parametrize(("union", "sender", "receiver"), WIRES, ids=[w[1].__name__ for w in WIRES])
def test_every_message_round_trips_in_both_encodings(
    union: Any, sender: Any, receiver: Any
) -> None:
    codecs = [(sender(encoding), receiver(encoding), encoding) for encoding in ENCODINGS]

    @given(valid(union))
    def check(message: Any) -> None:
        for send, receive, encoding in codecs:
            frame = send.encode(message)
            assert isinstance(frame, str if encoding == "json" else bytes)
            assert receive.decode(frame) == message

    check()


@given(valid(HelloBody))
def test_hello_body_round_trips(body: HelloBody) -> None:
    assert codec.decode_hello_body(codec.encode_hello_body(body)) == body


@given(valid(Signal))
def test_signal_round_trips(signal: Signal) -> None:
    assert (
        codec.decode_signal(codec.encode_signal(signal), strategy_id=signal.strategy_id) == signal
    )


def test_signal_for_another_strategy_is_forbidden() -> None:
    signal = Signal(
        strategy_id="s1", signal_id="x1", audience=["u1"], symbol="XAUUSD", side=Side.BUY,
        entry=2000.0, created_at_ms=1,
    )  # fmt: skip
    with pytest.raises(Forbidden):
        codec.decode_signal(codec.encode_signal(signal), strategy_id="s2")
    with pytest.raises(FrameTooLarge):
        codec.decode_signal(b" " * (codec.MAX_SIGNAL_BYTES + 1))
    with pytest.raises(DecodeError):
        codec.decode_signal(b"{}")


def test_json_frames_are_text_and_msgpack_frames_are_binary() -> None:
    ping = Ping(seq=1, time_ms=2)
    assert codec.device_server_codec("json").encode(ping) == '{"type":"ping","seq":1,"time_ms":2}'
    assert codec.device_server_codec("msgpack").encode(ping) == msgspec.msgpack.encode(ping)


def test_json_decoder_accepts_binary_frames_but_msgpack_refuses_text() -> None:
    frame = b'{"type":"heartbeat","seq":1,"time_ms":2}'
    assert codec.device_server_codec("json").decode(frame) == Heartbeat(seq=1, time_ms=2)
    assert codec.device_server_codec("json").decode(bytearray(frame)) == Heartbeat(seq=1, time_ms=2)
    with pytest.raises(DecodeError) as info:
        codec.device_server_codec("msgpack").decode(frame.decode())
    assert info.value.details == {"reason": "frame_type"}


def test_encode_refuses_a_message_for_another_wire() -> None:
    with pytest.raises(UsageError):
        codec.device_server_codec("json").encode(Heartbeat(seq=1, time_ms=1))  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        codec.WireCodec("device", "xml", ServerMessage, 10)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        codec.WireCodec("device", "json", ServerMessage, 0)


def test_errors_name_the_field() -> None:
    with pytest.raises(DecodeError) as info:
        codec.feed_codec("json").decode(
            '{"quotes":[{"symbol":"XAUUSD","bid":-1,"ask":2,"time_ms":1}]}'
        )
    assert info.value.details["path"] == "$.quotes[0].bid"
    assert "$.quotes[0].bid" in info.value.message


def test_error_messages_do_not_echo_a_huge_tag() -> None:
    with pytest.raises(DecodeError) as info:
        codec.device_server_codec("json").decode('{"type":"' + "x" * 50_000 + '"}')
    assert len(info.value.message) <= 200
    assert len(str(info.value.details)) < 300


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_frame_limit_is_checked_before_parsing(encoding: codec.Encoding) -> None:
    wire = codec.device_server_codec(encoding, max_frame_bytes=64)
    big = wire.max_frame_bytes + 1
    frame: bytes | str = "{" * big if encoding == "json" else b"\xff" * big
    with pytest.raises(FrameTooLarge) as info:
        wire.decode(frame)
    assert info.value.details == {"size": big, "limit": 64}


def test_frame_limit_counts_utf8_bytes_of_text_frames() -> None:
    wire = codec.device_server_codec("json", max_frame_bytes=100)
    # 40 characters, 120 bytes: under the limit in characters, over it in bytes.
    with pytest.raises(FrameTooLarge) as info:
        wire.decode("€" * 40)
    assert info.value.details["size"] == 120
    with pytest.raises(FrameTooLarge):
        wire.decode(memoryview(b"x" * 101))
    with pytest.raises(FrameTooLarge):
        codec.decode_hello_body("x" * (codec.MAX_HELLO_BODY_CHARS + 1))


def test_negotiate_follows_the_clients_preference() -> None:
    assert codec.negotiate(["tripwire.v1.msgpack", "tripwire.v1.json"]) == "tripwire.v1.msgpack"
    assert codec.negotiate(["tripwire.v1.json", "tripwire.v1.msgpack"]) == "tripwire.v1.json"
    assert codec.negotiate(["graphql-ws", " tripwire.v1.json"]) == "tripwire.v1.json"
    assert codec.negotiate(["tripwire.v2.json", "TRIPWIRE.V1.JSON"]) is None
    assert codec.negotiate([]) is None
    assert codec.encoding_of("tripwire.v1.msgpack") == "msgpack"
    assert codec.encoding_of("tripwire.v1.json") == "json"
    with pytest.raises(UsageError):
        codec.encoding_of("tripwire.v2.json")


def test_first_frame_sniffing() -> None:
    assert codec.sniff_encoding('{"type":"hello"}') == "json"
    assert codec.sniff_encoding(b' \r\n\t{"type":"hello"}') == "json"
    assert codec.sniff_encoding(msgspec.msgpack.encode(Heartbeat(seq=1, time_ms=1))) == "msgpack"
    assert codec.sniff_encoding(b"\xde\x00\x10") == "msgpack"
    for bad in [b"", b"[1]", b"\x91\x01", b"   "]:
        with pytest.raises(DecodeError):
            codec.sniff_encoding(bad)


@given(st.binary(max_size=64))
def test_sniffing_raises_only_decode_error(frame: bytes) -> None:
    with contextlib.suppress(DecodeError):
        assert codec.sniff_encoding(frame) in ("json", "msgpack")


def test_version_negotiation() -> None:
    assert codec.negotiate_version(1) == 1
    # A newer peer is served at our newest revision: it must then speak that one.
    assert codec.negotiate_version(7) == codec.PROTOCOL_VERSION
    with pytest.raises(UnsupportedVersion) as info:
        codec.negotiate_version(0)
    assert info.value.details["max_supported"] == codec.PROTOCOL_VERSION


def test_unknown_fields_are_ignored_and_new_fields_have_defaults() -> None:
    """The compatibility rule, as an older and a newer peer would exercise it."""
    newer = '{"type":"close","command_id":"P1.close.1","ticket":7,"symbol":"XAUUSD","volume":0.1,'
    newer += '"deadline_ms":5,"sig":"","trailing":{"future":[1,2,3]}}'
    cmd = codec.device_client_codec("json").decode(newer)
    assert isinstance(cmd, CloseCommand) and cmd.ticket == 7
    older = '{"type":"hello_body_is_not_a_message"}'
    with pytest.raises(DecodeError):
        codec.device_server_codec("json").decode(older)
    body = codec.decode_hello_body('{"ea_build":"1","account_login":"1","terminal_time_ms":1}')
    assert body.symbols == [] and body.platform == "mt5" and body.encryption is False


def test_codecs_share_their_decoders() -> None:
    a, b = codec.device_server_codec("json"), codec.device_server_codec("json", 10)
    assert a._decoder is b._decoder
    assert "device" in repr(a)


def test_a_realistic_session_decodes() -> None:
    spec = SymbolSpec(name="XAUUSDm", digits=2, contract_size=100.0, filling_modes=["ioc"])
    body = HelloBody(ea_build="4620", account_login="123", terminal_time_ms=1, symbols=[spec])
    assert codec.decode_hello_body(codec.encode_hello_body(body)).symbols[0].name == "XAUUSDm"
    view = PositionView(id="P1", symbol="XAUUSD", side=Side.SELL, volume=0.1, state="open")
    frame = codec.client_server_codec("msgpack").encode(PositionDelta(position=view))
    assert codec.client_client_codec("msgpack").decode(frame) == PositionDelta(position=view)
    batch = QuoteBatch(quotes=[Quote(symbol="XAUUSD", bid=2000.1, ask=2000.3, time_ms=5)])
    assert codec.feed_codec("json").decode(codec.feed_codec("json").encode(batch)) == batch
