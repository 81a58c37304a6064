"""AES-GCM frames: round trip, tampering, replay, reordering, reflection, other sessions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.crypto import FRAME_OVERHEAD, FrameCipher, derive_frame_key
from protocol.errors import BadSignature, DecodeError, ReplayDetected, UsageError

KEY = bytes(range(32))


def pair(session_id: str = "s-1") -> tuple[FrameCipher, FrameCipher]:
    return (
        FrameCipher(KEY, "server", session_id=session_id),
        FrameCipher(KEY, "device", session_id=session_id),
    )


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_round_trip_both_directions(messages: list[bytes]) -> None:
    server, device = pair()
    for i, message in enumerate(messages, start=1):
        frame = server.seal(message)
        assert len(frame) == len(message) + FRAME_OVERHEAD
        assert frame[:12] == b"\x00\x00\x00\x01" + i.to_bytes(8, "big")
        assert device.open(frame) == message
        assert server.open(device.seal(message)) == message
    assert server.sent == device.received == len(messages)


def test_text_is_sealed_as_utf8() -> None:
    server, device = pair()
    assert device.open(server.seal('{"type":"ping","seq":1,"time_ms":2} €')) == (
        '{"type":"ping","seq":1,"time_ms":2} €'.encode()
    )


@given(st.binary(min_size=1, max_size=64), st.data())
def test_any_flipped_bit_is_refused(message: bytes, data: st.DataObject) -> None:
    server, device = pair()
    frame = bytearray(server.seal(message))
    index = data.draw(st.integers(0, len(frame) - 1))
    frame[index] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises((BadSignature, ReplayDetected)):
        device.open(bytes(frame))
    # A refused frame changes nothing: the genuine one still opens.
    assert device.open(server.seal(message)) == message


def test_replay_and_reorder_are_refused_but_gaps_are_not() -> None:
    server, device = pair()
    first, second, third, fourth = (server.seal(b"%d" % i) for i in range(4))
    assert device.open(first) == b"0"
    with pytest.raises(ReplayDetected):
        device.open(first)
    assert device.open(third) == b"2"  # the second was lost: a gap is fine
    with pytest.raises(ReplayDetected):
        device.open(second)  # but it may not arrive late
    assert device.open(fourth) == b"3"


def test_reflection_other_sessions_and_truncation() -> None:
    server, device = pair()
    with pytest.raises(BadSignature):
        server.open(server.seal(b"x"))  # our own frame sent back to us
    other_server, _ = pair("s-2")
    with pytest.raises(BadSignature):
        device.open(other_server.seal(b"x"))  # same session key, another session id
    with pytest.raises(DecodeError):
        device.open(b"\x00" * (FRAME_OVERHEAD - 1))
    with pytest.raises(BadSignature):
        device.open(b"\x00\x00\x00\x01" + b"\x00" * 7 + b"\x01" + b"\x00" * 16)


def test_bad_arguments_and_repr() -> None:
    with pytest.raises(UsageError):
        FrameCipher(b"short", "server", session_id="s")
    with pytest.raises(UsageError):
        FrameCipher(KEY, "server", session_id="")
    with pytest.raises(UsageError):
        FrameCipher(KEY, "client", session_id="s")  # type: ignore[arg-type]
    assert derive_frame_key(KEY, "a") != derive_frame_key(KEY, "b")
    server, _ = pair()
    assert KEY.hex() not in repr(server) and "server" in repr(server)


@given(st.binary(max_size=80))
def test_opening_random_bytes_raises_only_our_errors(frame: bytes) -> None:
    _, device = pair()
    with pytest.raises((DecodeError, BadSignature, ReplayDetected)):
        device.open(frame)
