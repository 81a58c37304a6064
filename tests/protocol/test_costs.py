"""Commission and swap on the device wire: optional, so an EA that predates them is still
understood (its frames decode with null costs), and one that sends them is read exactly."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from protocol.client import PositionView
from protocol.codec import client_client_codec, device_client_codec, device_server_codec
from protocol.device import Ack, PositionEvent, PositionsSnapshot
from protocol.errors import DecodeError

OLD_POSITIONS = {
    "type": "positions",
    "time_ms": 1767225601500,
    "positions": [
        {
            "ticket": 250123456,
            "symbol": "XAUUSDm",
            "side": "buy",
            "volume": 0.1,
            "open_price": 2648.35,
            "open_time_ms": 1767222000000,
            "sl": 2638.35,
            "tp": 2668.35,
            "comment": "tw:P7Kx2",
            "magic": 20260101,
            "profit": 12.4,
        }
    ],
}
OLD_ACK = {
    "type": "ack",
    "command_id": "P7Kx2.open.1",
    "retcode": 10009,
    "ticket": 250123456,
    "fill_price": 2648.35,
    "fill_volume": 0.1,
    "fill_time_ms": 1767222000000,
}
OLD_EVENT = {
    "type": "event",
    "kind": "closed_sl",
    "ticket": 250123456,
    "symbol": "XAUUSDm",
    "side": "buy",
    "volume": 0.1,
    "price": 2638.3,
    "time_ms": 1767225607000,
    "profit": -100.5,
}


def _frame(encoding: str, message: dict[str, Any]) -> bytes | str:
    if encoding == "json":
        return msgspec.json.encode(message).decode()
    return msgspec.msgpack.encode(message)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_frames_of_an_old_ea_decode_with_null_costs(encoding: str) -> None:
    codec = device_server_codec(encoding)  # type: ignore[arg-type]
    snapshot = codec.decode(_frame(encoding, OLD_POSITIONS))
    assert isinstance(snapshot, PositionsSnapshot)
    [held] = snapshot.positions
    assert (held.profit, held.commission, held.swap) == (12.4, None, None)
    ack = codec.decode(_frame(encoding, OLD_ACK))
    assert isinstance(ack, Ack) and (ack.commission, ack.swap) == (None, None)
    event = codec.decode(_frame(encoding, OLD_EVENT))
    assert isinstance(event, PositionEvent) and (event.commission, event.swap) == (None, None)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_costs_sent_are_read_exactly(encoding: str) -> None:
    ea, server = device_client_codec(encoding), device_server_codec(encoding)  # type: ignore[arg-type]
    positions = dict(OLD_POSITIONS)
    positions["positions"] = [dict(OLD_POSITIONS["positions"][0], commission=-0.35, swap=-1.12)]
    for raw in (positions, dict(OLD_ACK, commission=-0.35, swap=0.0), dict(OLD_EVENT, swap=2.5)):
        message = server.decode(_frame(encoding, raw))
        assert server.decode(ea.encode(message)) == message  # an EA of ours sends them back
    snapshot = server.decode(_frame(encoding, positions))
    assert isinstance(snapshot, PositionsSnapshot)
    assert (snapshot.positions[0].commission, snapshot.positions[0].swap) == (-0.35, -1.12)
    event = server.decode(_frame(encoding, dict(OLD_EVENT, swap=2.5)))
    assert isinstance(event, PositionEvent) and (event.commission, event.swap) == (None, 2.5)


def test_costs_must_be_numbers() -> None:
    codec = device_server_codec("json")
    bad = dict(OLD_ACK, commission="seven")
    with pytest.raises(DecodeError, match="commission") as caught:
        codec.decode(_frame("json", bad))
    assert caught.value.code == "malformed"


def test_a_client_view_from_an_older_server_decodes_with_null_costs() -> None:
    codec = client_client_codec("json")
    frame = {
        "type": "position",
        "position": {
            "id": "P7Kx2",
            "symbol": "XAUUSD",
            "side": "buy",
            "volume": 0.1,
            "state": "open",
        },
    }
    delta = codec.decode(msgspec.json.encode(frame).decode())
    view = delta.position  # type: ignore[union-attr]
    assert isinstance(view, PositionView)
    assert (view.commission, view.swap, view.net_pl) == (None, None, None)
