"""docs/protocol.md runs: every JSON example decodes, every vector recomputes, every table is
the code's.

Fenced blocks are marked after the language: ```json device (decoded as a device sends it),
```json server, ```json client, ```json to-client, ```json feed, ```json hello-body,
```json signal, ```json notification (a webhook body); ```text vector:NAME holds
``key = value`` lines; ```text canonical:NAME an exact canonical string.
``<!-- fields: Struct -->`` precedes a field table.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol import (
    client,
    closecodes,
    codec,
    common,
    crypto,
    device,
    feed,
    notifications,
    results,
    session,
    signals,
    signing,
)
from protocol.device import Command, Hello
from tests.protocol.doctables import field_rows

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)\n```$", re.MULTILINE | re.DOTALL)
BLOCKS = [(lang, info.split(), body) for lang, info, body in BLOCK.findall(DOC)]

DECODERS: dict[str, Any] = {
    "device": codec.device_server_codec("json").decode,
    "server": codec.device_client_codec("json").decode,
    "client": codec.client_server_codec("json").decode,
    "to-client": codec.client_client_codec("json").decode,
    "feed": codec.feed_codec("json").decode,
    "to-feed": msgspec.json.Decoder(feed.FeedError).decode,
    "hello-body": codec.decode_hello_body,
    "signal": lambda text: codec.decode_signal(text.encode()),
    "notification": notifications.decode_notification,
}


def _json_blocks() -> list[tuple[list[str], str]]:
    return [(info, body) for lang, info, body in BLOCKS if lang == "json"]


def _text_block(marker: str) -> str:
    (body,) = [body for lang, info, body in BLOCKS if lang == "text" and info == [marker]]
    return body


def _vector(name: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in _text_block(f"vector:{name}").splitlines())
    return {key.strip(): value.strip() for key, value in pairs}


def _decoded(marker: str) -> Any:
    (body,) = [body for info, body in _json_blocks() if marker in info]
    return DECODERS[next(m for m in info_of(marker) if m in DECODERS)](body)


def info_of(marker: str) -> list[str]:
    (info,) = [info for info, _ in _json_blocks() if marker in info]
    return info


def test_every_json_example_is_marked_and_decodes() -> None:
    blocks = _json_blocks()
    assert len(blocks) == DOC.count("```json") > 20  # none escaped the pattern
    for info, body in blocks:
        assert info and info[0] in DECODERS, f"unmarked json block: {body[:60]}"
        DECODERS[info[0]](body)


def test_every_message_type_has_an_example() -> None:
    tags: dict[str, set[str]] = {}
    for info, body in _json_blocks():
        message = DECODERS[info[0]](body)
        tag = getattr(type(message), "__struct_config__").tag  # noqa: B009
        tags.setdefault(info[0], set()).add(tag)
    for marker, union in [
        ("device", device.DeviceMessage),
        ("server", device.ServerMessage),
        ("client", client.ClientMessage),
        ("to-client", client.ServerClientMessage),
    ]:
        expected = {cls.__struct_config__.tag for cls in union.__args__}
        assert tags[marker] == expected, marker


def test_the_handshake_vector() -> None:
    v = _vector("hello")
    body = _decoded("hello-body")
    body_text = next(b for info, b in _json_blocks() if info == ["hello-body"])
    assert codec.decode_hello_body(body_text) == body
    secret, ts, nonce = v["secret"].encode(), int(v["ts_ms"]), v["nonce"]
    canonical = signing.canonical_request(
        ts_ms=ts, nonce=nonce, principal_id=v["device_id"], v=int(v["v"]), body=body_text.encode()
    )
    assert canonical == _text_block("canonical:hello")
    assert hashlib.sha256(body_text.encode()).hexdigest() == v["body_sha256"]
    assert hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest() == v["signature"]
    # The hello frame in the doc is that hello, and it verifies.
    frame = _decoded("hello-vector")
    assert isinstance(frame, Hello) and frame.body == body_text and frame.sig == v["signature"]
    verified = signing.verify_hello(frame, [secret], ts + 1_000)
    assert verified.session_key.hex() == v["session_key"]
    # The two HKDF steps as the doc spells them out for MQL5.
    prk = hmac.new(nonce.encode(), secret, hashlib.sha256).digest()
    assert prk.hex() == v["hkdf_prk"]
    okm = hmac.new(prk, v["hkdf_info"].encode() + b"\x01", hashlib.sha256).hexdigest()
    assert okm == v["session_key"]


def test_every_command_example_is_signed_with_the_example_session_key() -> None:
    key = bytes.fromhex(_vector("hello")["session_key"])
    commands = [
        DECODERS["server"](body)
        for info, body in _json_blocks()
        if info[0] == "server" and '"sig"' in body
    ]
    assert {type(c) for c in commands} == set(Command.__args__)  # type: ignore[attr-defined]
    for command in commands:
        session.verify_command(command, key)
    # The open command's canonical string, quoted in the text as an escaped suffix.
    (opened,) = [c for c in commands if c.__struct_config__.tag == "open"]
    quoted = DOC.split("The open example gives `...", 1)[1].split("`", 1)[0]
    assert session.canonical_command(opened).replace("\n", "\\n").endswith(quoted)


def test_the_command_vector() -> None:
    v = _vector("command")
    close = _decoded("command-vector")
    assert session.canonical_command(close) == _text_block("canonical:command")
    assert session.sign_command(close, bytes.fromhex(v["session_key"])).sig == v["signature"]
    assert close.sig == v["signature"]


def test_the_frame_vector() -> None:
    v = _vector("frame")
    key = bytes.fromhex(_vector("hello")["session_key"])
    assert crypto.derive_frame_key(key, v["session_id"]).hex() == v["frame_key"]
    server = crypto.FrameCipher(key, "server", session_id=v["session_id"])
    assert server.seal(v["plaintext"]).hex() == v["frame"]
    ea = crypto.FrameCipher(key, "device", session_id=v["session_id"])
    plaintext = ea.open(bytes.fromhex(v["frame"]))
    assert codec.device_client_codec("json").decode(plaintext) == DECODERS["server"](v["plaintext"])


def test_the_signal_vector() -> None:
    v = _vector("signal")
    body = next(b for info, b in _json_blocks() if info == ["signal"]).encode()
    canonical = signing.canonical_request(
        ts_ms=int(v["t"]), nonce="", principal_id=v["strategy_id"], v=1, body=body
    )
    assert canonical == _text_block("canonical:signal")
    header = signing.sign_signal_header(body, v["strategy_id"], v["secret"].encode(), int(v["t"]))
    assert header == v["header"]
    signing.verify_signal_header(
        header, body, v["strategy_id"], [v["secret"].encode()], int(v["t"])
    )
    assert codec.decode_signal(body, strategy_id=v["strategy_id"]).signal_id


def test_the_notification_vector() -> None:
    v = _vector("notification")
    body = next(b for info, b in _json_blocks() if info == ["notification"]).encode()
    canonical = signing.canonical_request(
        ts_ms=int(v["t"]), nonce="", principal_id=v["user_id"], v=1, body=body
    )
    assert canonical == _text_block("canonical:notification")
    secret = v["secret"].encode()
    header = notifications.sign_notification(body, v["user_id"], secret, int(v["t"]))
    assert header == v["header"]
    notifications.verify_notification(header, body, v["user_id"], [secret], int(v["t"]) + 1_000)
    decoded = notifications.decode_notification(body)
    assert notifications.encode_notification(decoded) == body  # the example is what we send
    assert notifications.USER_HEADER in DOC


STRUCTS = {
    name: obj
    for module in (device, client, feed, signals, common, notifications)
    for name in module.__all__
    if isinstance(obj := getattr(module, name), type) and hasattr(obj, "__struct_fields__")
}


def test_field_tables_match_the_structs() -> None:
    documented = re.findall(r"<!-- fields: (\w+) -->\n(.*?)(?:\n\n|\Z)", DOC, re.DOTALL)
    assert {name for name, _ in documented} == set(STRUCTS)
    for name, table in documented:
        rows = table.splitlines()[2:]
        expected = field_rows(STRUCTS[name])
        assert len(rows) == len(expected), name
        for row, prefix in zip(rows, expected, strict=True):
            assert row.startswith(prefix[:-1]), f"{name}: {row!r} should start {prefix!r}"


@pytest.mark.parametrize("platform", ["mt5", "mt4"])
def test_result_tables_are_the_code(platform: results.Platform) -> None:
    section = DOC.split(f"<!-- results:{platform} -->\n", 1)[1].split("\n<!-- /results -->", 1)[0]
    assert section == results.render_markdown_table(platform)


def test_close_code_table_is_the_code() -> None:
    section = DOC.split("<!-- closecodes -->\n", 1)[1].split("\n<!-- /closecodes -->", 1)[0]
    assert section == closecodes.render_markdown_table()


def test_the_doc_states_the_constants() -> None:
    for text in (
        codec.SUBPROTOCOL_JSON,
        codec.SUBPROTOCOL_MSGPACK,
        signing.SCHEME,
        session.COMMAND_SCHEME,
        session.SESSION_INFO_PREFIX.decode(),
        crypto.FRAME_AAD.decode(),
        crypto.FRAME_KEY_INFO.decode(),
        f"{codec.MAX_HELLO_BODY_CHARS:,}",
        "`00 00 00 01` server → device",
    ):
        assert text in DOC, text
    assert msgspec.json.decode(b"1") == 1
