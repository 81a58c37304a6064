"""Redaction: what may be logged and what peers may see; close codes."""

from __future__ import annotations

from typing import Any

import msgspec.inspect as mi
import pytest

from protocol import errors
from protocol.closecodes import (
    ADVICE,
    CloseCode,
    close_code_for,
    close_reason,
    truncate_reason,
)
from protocol.common import Side
from protocol.device import CloseCommand, PositionsSnapshot, ServerMessage, TerminalPosition
from protocol.redaction import (
    NEVER_TO_DEVICES,
    REDACTED,
    client_error,
    device_error,
    for_log,
    peer_error,
)
from protocol.signing import VerifiedHello, sign_hello, verify_hello

SECRET = b"s" * 32


def _hello() -> Any:
    body = '{"ea_build":"1","account_login":"42","terminal_time_ms":1}'
    return sign_hello("ea-1", SECRET, body, 1_000, "n" * 16)


def test_for_log_masks_signatures_and_summarises_bodies() -> None:
    hello = _hello()
    logged = for_log(hello)
    assert logged["sig"] == REDACTED and hello.sig not in str(logged)
    assert logged["body"].startswith(f"<{len(hello.body)} bytes sha256:")
    assert logged["device_id"] == "ea-1" and logged["type"] == "hello"
    unsigned = for_log(CloseCommand(command_id="c", ticket=1, symbol="X", volume=1, deadline_ms=1))
    assert unsigned["sig"] == ""  # "unsigned" is worth seeing


def test_for_log_never_shows_session_keys_or_raw_bytes() -> None:
    verified = verify_hello(_hello(), [SECRET], 1_000)
    assert isinstance(verified, VerifiedHello)
    logged = for_log(verified)
    assert logged["session_key"] == REDACTED
    assert verified.session_key.hex() not in str(logged)
    assert for_log({"frame": b"\x00" * 40}) == {"frame": "<40 bytes>"}


def test_for_log_on_headers_is_case_insensitive() -> None:
    headers = {"X-Signature": "t=1,v1=abc", "Authorization": "Bearer x.y.z", "X-Strategy-Id": "s1"}
    assert for_log(headers) == {
        "X-Signature": REDACTED, "Authorization": REDACTED, "X-Strategy-Id": "s1",
    }  # fmt: skip


def test_for_log_cuts_long_lists_and_strings() -> None:
    position = TerminalPosition(
        ticket=1, symbol="X", side=Side.BUY, volume=1, open_price=1, open_time_ms=1
    )
    logged = for_log(PositionsSnapshot(time_ms=1, positions=[position] * 100))
    assert len(logged["positions"]) == 21 and logged["positions"][-1] == "<80 more>"
    assert len(for_log({"m": "x" * 10_000})["m"]) < 300
    assert for_log([1, 2]) == {"value": [1, 2]}
    assert for_log(object())["value"].startswith("<object")


@pytest.mark.parametrize(
    ("exc", "code", "has_details"),
    [
        (errors.BadSignature("hello signature does not verify"), "bad_signature", False),
        (errors.UnknownPrincipal("no device ea-9"), "bad_signature", False),
        (errors.SignatureExpired("late", ts_ms=1, server_time_ms=9, window_ms=5), "expired", True),
        (errors.FrameTooLarge("big", size=9, limit=5), "too_large", True),
        (errors.DecodeError("bad", path="$.x"), "malformed", True),
        (errors.ReplayDetected("nonce already used", device_id="ea-1"), "replayed", False),
        (errors.StorageError("pg: connection refused to 10.0.0.5"), "storage_unavailable", False),
        (errors.UsageError("bug in gateway/x.py"), "internal", False),
        (KeyError("secret"), "internal", False),
    ],
)
def test_peer_errors(exc: BaseException, code: str, has_details: bool) -> None:
    got_code, message, details = peer_error(exc)
    assert got_code == code and (details is not None) is has_details
    assert "10.0.0.5" not in message and "gateway" not in message and "ea-9" not in message
    frame = device_error(exc, fatal=True, command_id="c1")
    assert frame.code == code and frame.fatal and frame.command_id == "c1"
    assert client_error(exc).code == code


def test_peer_error_details_are_whitelisted_and_bounded() -> None:
    exc = errors.DecodeError("bad", path="$." + "x" * 1000, secret="s", nested={"a": 1})
    _, _, details = peer_error(exc)
    assert details is not None and set(details) == {"path"} and len(details["path"]) == 256


def _field_names(t: mi.Type, seen: set[type]) -> set[str]:
    names: set[str] = set()
    if isinstance(t, mi.StructType) and t.cls not in seen:
        seen.add(t.cls)
        for f in t.fields:
            names.add(f.name)
            names |= _field_names(f.type, seen)
    for attr in ("types", "item_type", "key_type", "value_type"):
        inner = getattr(t, attr, None)
        for member in inner if isinstance(inner, tuple) else [inner] if inner else []:
            names |= _field_names(member, seen)
    return names


def test_nothing_sent_to_devices_names_a_user_or_a_secret() -> None:
    names = _field_names(mi.type_info(ServerMessage), set())
    assert "command_id" in names  # the walk reaches every command
    assert not names & NEVER_TO_DEVICES


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.FrameTooLarge(), CloseCode.MESSAGE_TOO_BIG),
        (errors.DecodeError("x", reason="frame_type"), CloseCode.UNSUPPORTED_DATA),
        (errors.DecodeError(), CloseCode.PROTOCOL_ERROR),
        (errors.UnexpectedMessage(), CloseCode.PROTOCOL_ERROR),
        (errors.UnsupportedVersion(), CloseCode.UNSUPPORTED_VERSION),
        (errors.SignatureExpired(), CloseCode.CLOCK_SKEW),
        (errors.BadSignature(), CloseCode.POLICY_VIOLATION),
        (errors.ReplayDetected(), CloseCode.POLICY_VIOLATION),
        (errors.Forbidden(), CloseCode.POLICY_VIOLATION),
        (errors.StorageError(), CloseCode.TRY_AGAIN_LATER),
        (errors.UsageError(), CloseCode.INTERNAL_ERROR),
        (RuntimeError(), CloseCode.INTERNAL_ERROR),
    ],
)
def test_close_codes(exc: BaseException, code: CloseCode) -> None:
    assert close_code_for(exc) is code
    assert close_reason(exc) == (exc.code if isinstance(exc, errors.TripwireError) else "internal")


def test_close_codes_are_valid_and_documented() -> None:
    assert set(ADVICE) == set(CloseCode)
    for code in CloseCode:
        assert code in (1000, 1002, 1003, 1008, 1009, 1011, 1012, 1013) or 4000 <= code <= 4999


def test_reasons_fit_a_close_frame() -> None:
    assert truncate_reason("ok") == "ok"
    cut = truncate_reason("€" * 100)
    assert len(cut.encode()) <= 123 and cut == "€" * 41
