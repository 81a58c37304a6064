"""``moved`` and the rule clients follow it by: hop limits, waits, and hostile frames that must
not crash a client."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec
from protocol.errors import DecodeError, FrameTooLarge
from protocol.redirects import MAX_HOPS, MAX_WAIT_MS, Moved, Redirects
from tripwire_ea.dispatch import Dispatcher

HOME = "wss://tripwire.example.com/ws/device"
NODE_2 = "wss://node-2.example.com/ws/device"


def test_a_moved_with_a_url_is_followed_at_once() -> None:
    redirects = Redirects(HOME)
    assert redirects.moved(Moved(url=NODE_2, partition=1, epoch=2)) == 0
    assert redirects.target == NODE_2 and redirects.hops == 1
    redirects.welcomed()
    assert redirects.hops == 0 and redirects.target == NODE_2
    redirects.ended()  # the session ends: the next connection goes home
    assert redirects.target == HOME


def test_an_unowned_partition_is_waited_for_then_home_is_tried() -> None:
    redirects = Redirects(HOME)
    redirects.moved(Moved(url=NODE_2, partition=1))
    assert redirects.moved(Moved(url=None, partition=1, retry_after_ms=1_500)) == 1_500
    assert redirects.target == HOME
    redirects.welcomed()
    assert redirects.moved(Moved(url=None, partition=1, retry_after_ms=2**31 - 1)) == MAX_WAIT_MS


def test_more_than_three_in_a_row_are_not_followed() -> None:
    redirects = Redirects(HOME)
    for hop in range(MAX_HOPS):
        url = NODE_2 if hop % 2 == 0 else HOME
        assert redirects.moved(Moved(url=url, partition=1)) == 0
    assert redirects.moved(Moved(url=NODE_2, partition=1)) is None
    assert redirects.target == HOME and redirects.gave_up == 1 and redirects.hops == 0
    # After the usual backoff the count starts again.
    assert redirects.moved(Moved(url=NODE_2, partition=1)) == 0


def test_a_failed_connection_to_the_target_sends_the_next_one_home() -> None:
    redirects = Redirects(HOME)
    redirects.moved(Moved(url=NODE_2, partition=1))
    redirects.ended()
    assert redirects.target == HOME and redirects.hops == 1  # still counts toward the limit


# -- hostile frames ---------------------------------------------------------------------------

_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_URLS = st.one_of(
    st.none(),
    st.text(max_size=60),
    st.sampled_from(["ws://", "wss://h", "http://h/ws", "ws://h/ws/device", "wss://a b", ""]),
    st.builds(lambda s: "wss://" + s, st.text(max_size=3000)),
)
_FIELDS = st.fixed_dictionaries(
    {"type": st.just("moved")},
    optional={
        "url": _URLS | _ANY,
        "partition": st.integers(min_value=-(2**40), max_value=2**40) | _ANY,
        "epoch": st.integers(min_value=-(2**63), max_value=2**64 - 1) | _ANY,
        "retry_after_ms": st.integers(min_value=-(2**63), max_value=2**64 - 1) | _ANY,
        "extra": _ANY,
    },
)
_CLIENTS = [
    factory(encoding)
    for factory in (codec.device_client_codec, codec.client_client_codec)
    for encoding in ("json", "msgpack")
]


def _encoded(fields: dict[str, Any], encoding: str) -> bytes | str:
    if encoding == "json":
        return msgspec.json.encode(fields).decode()
    return msgspec.msgpack.encode(fields)


@pytest.mark.parametrize("client", _CLIENTS, ids=lambda c: f"{c.name}-{c.encoding}")
@given(fields=_FIELDS)
def test_a_malformed_moved_frame_is_a_decode_error_and_a_valid_one_is_safe(
    client: Any, fields: dict[str, Any]
) -> None:
    try:
        message = client.decode(_encoded(fields, client.encoding))
    except (DecodeError, FrameTooLarge):
        return
    assert isinstance(message, Moved)
    redirects = Redirects(HOME)
    wait = redirects.moved(message)
    assert wait is not None and 0 <= wait <= MAX_WAIT_MS
    if message.url is None:
        assert redirects.target == HOME
    else:
        assert redirects.target == message.url
        assert message.url.startswith(("ws://", "wss://")) and " " not in message.url


@given(fields=_FIELDS)
def test_the_bridge_drops_a_malformed_moved_frame_and_keeps_running(fields: dict[str, Any]) -> None:
    json = codec.device_client_codec("json")
    dispatcher = Dispatcher(terminal=None, window=None, codec=json)  # type: ignore[arg-type]
    decoded = dispatcher.decode(_encoded(fields, "json"))
    assert decoded is None or isinstance(decoded, Moved)
