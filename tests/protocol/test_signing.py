"""The device handshake, session keys, command signatures and strategy signal headers."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import session, signing
from protocol.common import Side
from protocol.device import (
    CloseCommand,
    Command,
    Hello,
    HelloBody,
    ModifyCommand,
    OpenCommand,
    PartialCloseCommand,
)
from protocol.errors import (
    BadSignature,
    DecodeError,
    ReplayDetected,
    SignatureExpired,
    UnsupportedVersion,
    UsageError,
)
from protocol.nonces import MemoryNonceCache, check_nonce
from tests.protocol.strategies import valid

SECRET = b"k" * 32
OLD_SECRET = b"o" * 32
NOW = 1_767_225_600_000
NONCE = "n0nce-0123456789abcdef"
BODY = HelloBody(ea_build="4620", account_login="5012345", terminal_time_ms=NOW)


def hello(**overrides: Any) -> Hello:
    args: dict[str, Any] = {
        "device_id": "ea-1", "secret": SECRET, "body": BODY, "ts_ms": NOW, "nonce": NONCE,
    }  # fmt: skip
    args.update(overrides)
    return signing.sign_hello(**args)


# -- handshake -------------------------------------------------------------------------------


def test_a_signed_hello_verifies() -> None:
    verified = signing.verify_hello(hello(), [SECRET], NOW)
    assert verified.body == BODY and verified.v == 1 and verified.secret_index == 0
    assert verified.device_id == "ea-1" and verified.nonce == NONCE and verified.ts_ms == NOW
    assert verified.session_key == session.derive_session_key(
        SECRET, device_id="ea-1", nonce=NONCE, ts_ms=NOW
    )
    assert len(verified.session_key) == 32
    assert verified.session_key.hex() not in repr(verified)


def test_the_signature_is_hmac_of_the_canonical_string() -> None:
    h = hello()
    body_hash = hashlib.sha256(h.body.encode()).hexdigest()
    canonical = f"TW1-HMAC-SHA256\n{NOW}\n{NONCE}\nea-1\n1\n{body_hash}"
    assert h.sig == hmac.new(SECRET, canonical.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("skew", [-5_000, 0, 5_000])
def test_inside_the_window(skew: int) -> None:
    signing.verify_hello(hello(ts_ms=NOW + skew), [SECRET], NOW)


@pytest.mark.parametrize("skew", [-5_001, 5_001, -(10**9), 10**9])
def test_outside_the_window_on_either_side(skew: int) -> None:
    with pytest.raises(SignatureExpired) as info:
        signing.verify_hello(hello(ts_ms=NOW + skew), [SECRET], NOW)
    assert info.value.details["server_time_ms"] == NOW


def test_the_window_is_configurable_up_to_a_minute() -> None:
    signing.verify_hello(hello(ts_ms=NOW - 60_000), [SECRET], NOW, window_ms=60_000)
    for window in (60_001, 0, -1):
        with pytest.raises(UsageError):
            signing.verify_hello(hello(), [SECRET], NOW, window_ms=window)


def test_wrong_secret_and_no_secret() -> None:
    with pytest.raises(BadSignature):
        signing.verify_hello(hello(), [OLD_SECRET], NOW)
    with pytest.raises(BadSignature):
        signing.verify_hello(hello(), [], NOW)


def test_rotation_any_valid_secret_verifies() -> None:
    assert signing.verify_hello(hello(), [OLD_SECRET, SECRET], NOW).secret_index == 1
    assert (
        signing.verify_hello(hello(secret=OLD_SECRET), [OLD_SECRET, SECRET], NOW).secret_index == 0
    )


@pytest.mark.parametrize(
    "tamper",
    [
        {"body": '{"ea_build":"4620","account_login":"9999999","terminal_time_ms":1}'},
        {"ts_ms": NOW + 1},
        {"nonce": "n0nce-0123456789abcdeF"},
        {"device_id": "ea-2"},
        {"v": 2},
        {"sig": "0" * 64},
        {"sig": "A" * 64},
        {"sig": ""},
        {"sig": "é" * 64},
    ],
)
def test_tampering_with_any_signed_field_fails(tamper: dict[str, Any]) -> None:
    with pytest.raises(BadSignature):
        signing.verify_hello(msgspec.structs.replace(hello(), **tamper), [SECRET], NOW)


def test_upper_case_signature_is_refused() -> None:
    h = hello()
    with pytest.raises(BadSignature):
        signing.verify_hello(msgspec.structs.replace(h, sig=h.sig.upper()), [SECRET], NOW)


def test_malformed_signed_body_is_a_decode_error() -> None:
    for body in ("{", '{"ea_build":1}', "[]", "\ud800"):
        h = hello(body="{}")
        canonical = signing.canonical_request(
            ts_ms=NOW, nonce=NONCE, principal_id="ea-1", v=1,
            body=body.encode("utf-8", "surrogatepass"),
        )  # fmt: skip
        forged = msgspec.structs.replace(h, body=body, sig=signing.hmac_hex(SECRET, canonical))
        with pytest.raises(DecodeError):
            signing.verify_hello(forged, [SECRET], NOW)


def test_unsupported_version() -> None:
    with pytest.raises(UnsupportedVersion):
        signing.verify_hello(hello(v=0), [SECRET], NOW)
    # A newer EA is served at our revision, and its signature covers the v it sent.
    assert signing.verify_hello(hello(v=3), [SECRET], NOW).v == 1


def test_a_replayed_hello_is_rejected_by_the_nonce_cache() -> None:
    cache = MemoryNonceCache()
    first = signing.verify_hello(hello(), [SECRET], NOW)
    check_nonce(cache, first.device_id, first.nonce, NOW, signing.DEFAULT_WINDOW_MS)
    # The very same frame, replayed at the last moment its timestamp is still valid.
    late = NOW + signing.DEFAULT_WINDOW_MS
    again = signing.verify_hello(hello(), [SECRET], late)
    with pytest.raises(ReplayDetected):
        check_nonce(cache, again.device_id, again.nonce, late, signing.DEFAULT_WINDOW_MS)


def test_bad_inputs_to_sign_hello_and_short_secrets() -> None:
    with pytest.raises(UsageError):
        hello(secret=b"short")
    with pytest.raises(UsageError):
        hello(device_id="ea 1")
    with pytest.raises(UsageError):
        hello(nonce="short")
    with pytest.raises(UsageError):
        signing.verify_hello(hello(), [b"short"], NOW)
    assert hello(body='{"x":1}').body == '{"x":1}'


# -- commands ----------------------------------------------------------------------------------

KEY = session.derive_session_key(SECRET, device_id="ea-1", nonce=NONCE, ts_ms=NOW)
COMMANDS: list[Any] = [OpenCommand, CloseCommand, PartialCloseCommand, ModifyCommand]


def test_every_command_field_is_signed_or_deliberately_not() -> None:
    for cls in COMMANDS:
        signed = session._SIGNED_FIELDS[cls]
        assert set(signed) | session.UNSIGNED_FIELDS == set(cls.__struct_fields__), cls
        assert not set(signed) & session.UNSIGNED_FIELDS


def _changed(value: Any) -> Any:
    """Another value of the same type, or None when there is no obvious one."""
    if isinstance(value, Side):
        return Side.SELL if value is Side.BUY else Side.BUY
    if isinstance(value, str) and not hasattr(value, "value"):
        return value[:-1] + ("0" if value[-1:] != "0" else "1")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value + 1 if value < 10**6 else value - 1
    if isinstance(value, float):
        return value * 1.5 if value < 1e6 else value / 2
    return None


@given(st.one_of([valid(cls) for cls in COMMANDS]), st.integers(0, 2**53), st.data())
def test_commands_sign_and_verify_and_the_deadline_is_not_covered(
    cmd: Command, deadline: int, data: st.DataObject
) -> None:
    signed = session.sign_command(cmd, KEY)
    session.verify_command(signed, KEY)
    session.verify_command(msgspec.structs.replace(signed, deadline_ms=deadline), KEY)
    with pytest.raises(BadSignature):
        session.verify_command(signed, bytes(32))
    name = data.draw(st.sampled_from(session._SIGNED_FIELDS[type(cmd)]))
    other = _changed(getattr(cmd, name))
    if other is None:
        return
    tampered = msgspec.structs.replace(signed, **{name: other})
    if session.canonical_command(tampered) == session.canonical_command(signed):
        # Values equal to 8 decimals are the same command (prices have at most 8 digits).
        session.verify_command(tampered, KEY)
    else:
        with pytest.raises(BadSignature):
            session.verify_command(tampered, KEY)


def test_canonical_command_formats_by_declared_type() -> None:
    cmd = CloseCommand(
        command_id="P1.close.1",
        ticket=42,
        symbol="XAUUSDm",
        volume=1,
        deadline_ms=1,  # type: ignore[arg-type]
    )
    assert session.canonical_command(cmd) == (
        "TW1-CMD-HMAC-SHA256\nclose\nP1.close.1\n42\nXAUUSDm\n1.00000000\n0\n"
    )
    modify = ModifyCommand(command_id="P1.modify.2", ticket=42, symbol="X", sl=1.1, deadline_ms=1)
    assert session.canonical_command(modify).endswith("\nX\n1.10000000\n")


def test_commands_refuse_a_wrong_key_size_and_a_malformed_sig() -> None:
    cmd = CloseCommand(command_id="P1.close.1", ticket=1, symbol="X", volume=0.1, deadline_ms=1)
    with pytest.raises(UsageError):
        session.sign_command(cmd, b"short")
    with pytest.raises(BadSignature):
        session.verify_command(msgspec.structs.replace(cmd, sig="é" * 64), KEY)
    assert signing.sign_command is session.sign_command


# -- strategy signals --------------------------------------------------------------------------

SIGNAL_BODY = b'{"strategy_id":"s1","signal_id":"x"}'


def test_signal_header_round_trip_and_rotation() -> None:
    header = signing.sign_signal_header(SIGNAL_BODY, "s1", SECRET, NOW)
    assert header.startswith(f"t={NOW},v1=")
    signing.verify_signal_header(header, SIGNAL_BODY, "s1", [SECRET], NOW)
    signing.verify_signal_header(header, SIGNAL_BODY, "s1", [OLD_SECRET, SECRET], NOW + 5_000)
    both = signing.sign_signal_header(SIGNAL_BODY, "s1", [OLD_SECRET, SECRET], NOW)
    assert both.count("v1=") == 2
    signing.verify_signal_header(both, SIGNAL_BODY, "s1", [SECRET], NOW)
    spaced_upper = " , ".join(
        f"{k}={v.upper()}" for k, v in (e.split("=") for e in both.split(","))
    )
    signing.verify_signal_header(spaced_upper, SIGNAL_BODY, "s1", [SECRET], NOW)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"body": SIGNAL_BODY + b" "}, BadSignature),
        ({"strategy_id": "s2"}, BadSignature),
        ({"secrets": [OLD_SECRET]}, BadSignature),
        ({"now_ms": NOW + 5_001}, SignatureExpired),
        ({"now_ms": NOW - 5_001}, SignatureExpired),
        ({"strategy_id": "s1\n"}, DecodeError),
    ],
)
def test_signal_header_failures(change: dict[str, Any], error: type[Exception]) -> None:
    args: dict[str, Any] = {
        "header": signing.sign_signal_header(SIGNAL_BODY, "s1", SECRET, NOW),
        "body": SIGNAL_BODY, "strategy_id": "s1", "secrets": [SECRET], "now_ms": NOW,
    }  # fmt: skip
    args.update(change)
    with pytest.raises(error):
        signing.verify_signal_header(**args)


A64 = "a" * 64


@pytest.mark.parametrize(
    "header",
    [
        "", "t=1", f"v1={A64}", f"t=1,t=2,v1={A64}", f"t=x,v1={A64}", "t=1,v1=abc",
        f"t=-1,v1={A64}", f"t=1,v1={'g' * 64}", f"t=1;v1={A64}", f"t=1,v1={A64},=x",
        f"t=1,v1={A64},v1", ",".join(["t=1", *[f"v1={A64}"] * 9]), f"t=1,v1={A64}," + "x" * 2000,
        f"t={'1' * 17},v1={A64}", f"t=1,v1={A64},Ü=1", f"t=\u0661,v1={A64}",
    ],
)  # fmt: skip
def test_malformed_headers(header: str) -> None:
    with pytest.raises(DecodeError):
        signing.parse_signal_header(header)


def test_unknown_schemes_are_ignored() -> None:
    assert signing.parse_signal_header(f"t=7, v0=zz, v1={'A' * 64}, v2=whatever") == (
        7,
        ("a" * 64,),
    )


@given(st.text(max_size=200))
def test_header_parsing_raises_only_decode_error(header: str) -> None:
    try:
        ts, sigs = signing.parse_signal_header(header)
    except DecodeError:
        return
    assert ts >= 0 and 1 <= len(sigs) <= 8


@given(
    st.lists(
        st.one_of(
            st.just("t=5"), st.just("v1=" + "b" * 64), st.text(max_size=12),
            st.builds("{}={}".format, st.text(max_size=4), st.text(max_size=70)),
        ),
        max_size=10,
    )
)  # fmt: skip
def test_assembled_headers_raise_only_decode_error(parts: list[str]) -> None:
    with contextlib.suppress(DecodeError, BadSignature):
        signing.verify_signal_header(",".join(parts), b"{}", "s1", [SECRET], 5)
