"""One builder of test positions: an OPEN 0.1-lot XAUUSD position ``p<i>`` on device ``d``,
with whatever a test varies given as fields."""

from __future__ import annotations

from typing import Any

from engine.lifecycle import PositionState
from engine.positions import Position
from protocol.common import Side


def make_position(i: int, **fields: Any) -> Position:
    base: dict[str, Any] = {
        "id": f"p{i}",
        "user_id": f"u{i % 3}",
        "device_id": "d",
        "account": "1",
        "symbol": "XAUUSD",
        "side": Side.BUY,
        "volume": 0.1,
        "state": PositionState.OPEN,
    }
    return Position(**(base | fields))
